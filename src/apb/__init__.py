"""apb: Automatic Prune Binarization for PyTorch, with bitwise CPU kernels."""

from ._version import __version__

from . import memory, methods, nn, pack  # noqa: E402
from .kernels.runtime import get_num_threads, set_num_threads  # noqa: E402
from .methods import compress_  # noqa: E402
from .pack import pack_  # noqa: E402
from .summary import summary  # noqa: E402

__all__ = [
    "compress_",
    "get_num_threads",
    "memory",
    "methods",
    "nn",
    "pack",
    "pack_",
    "set_num_threads",
    "summary",
]
