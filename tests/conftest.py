"""Test-session settings shared by every test module."""

import os

import torch

# `make test` runs two pytest workers on two cores: with two threads each, torch's and the
# kernels' thread pools oversubscribe the cores and every test runs several times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    try:
        import apb

        apb.set_num_threads(1)
    except ImportError:  # the extension is not built: kernel tests will say so
        pass
