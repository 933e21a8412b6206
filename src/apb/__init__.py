"""apb: Automatic Prune Binarization for PyTorch, with bitwise CPU kernels."""

__version__ = "0.1.0"
