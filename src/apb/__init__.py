"""apb: Automatic Prune Binarization for PyTorch, with bitwise CPU kernels.

The public face: ``apb.compress_`` / ``apb.pack_`` / ``apb.summary`` and every part of the
package (``apb.models``, ``apb.data``, ``apb.methods``, ``apb.train``, ``apb.prune``,
``apb.pack``, ...). No part of apb imports this module (docs/design.md §6).
"""

from . import data, jobs, memory, methods, models, nn, pack, prune, train
from ._version import __version__
from .kernels import get_num_threads, set_num_threads
from .methods import compress_
from .pack import pack_
from .summary import summary

__all__ = [
    "__version__",
    "compress_",
    "data",
    "get_num_threads",
    "jobs",
    "memory",
    "methods",
    "models",
    "nn",
    "pack",
    "pack_",
    "prune",
    "set_num_threads",
    "summary",
    "train",
]
