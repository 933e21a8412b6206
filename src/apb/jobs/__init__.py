"""What an ``apb`` command runs, one module per job, each callable from Python too:

- :mod:`~apb.jobs.ptq`: post-training compression of a full-precision checkpoint;
- :mod:`~apb.jobs.prune_quantized`: filter pruning of a binary / DoReFa checkpoint;
- :mod:`~apb.jobs.evaluate`: test accuracy, bytes and a predictions fingerprint of a
  checkpoint or a packed file;
- :mod:`~apb.jobs.demo`: fp, bnn and apb LeNet-5 on the real MNIST-5k digits;
- :mod:`~apb.jobs.plot_weights`: an APB layer's latent weights and its band;
- :mod:`~apb.jobs.repack`: a packed or XOR-encoded file of an older format version (no
  checksum) that the user trusts, written again in the current one;
- :mod:`~apb.jobs.transformer`: post-training compression and fidelity of a local Hugging
  Face encoder.

A job is a dataclass of options (the command's flags) and a ``run_*`` function that checks
every option and output path before it reads or writes a file.
"""

from . import demo, evaluate, plot_weights, prune_quantized, ptq, repack, transformer

__all__ = ["demo", "evaluate", "plot_weights", "prune_quantized", "ptq", "repack",
           "transformer"]
