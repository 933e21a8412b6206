"""A restricted unpickler for CIFAR's own batch files: the one place apb reads a pickle.

CIFAR-10's "python version" stores each batch as a pickled dict (written by Python 2). An
unrestricted unpickler would run whatever callable the file names; this one resolves only the
globals a dict of numpy arrays, lists, bytes, str and int needs, and raises
:class:`~apb.data.DataError` for anything else, before it is called.
"""

from __future__ import annotations

import builtins
import codecs
import importlib
import io
import pickle
from pathlib import Path

import numpy as np

from apb.data.datasplit import DataError


def _numpy_function(name: str, *modules: str):
    """``name`` from the first of ``modules`` that imports (numpy 2 renamed ``numpy.core`` to
    ``numpy._core``; pickles written under either name must resolve)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise DataError(f"this numpy has no {name} in {' or '.join(modules)}")


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """How a Python 3 pickle of protocol < 3 stores ``bytes``: ``_codecs.encode(str, "latin1")``.
    Only that codec is accepted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise DataError(f"pickle calls _codecs.encode with {encoding!r}; only 'latin1' is allowed")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    reconstruct = _numpy_function("_reconstruct", "numpy._core.multiarray", "numpy.core.multiarray")
    frombuffer = _numpy_function("_frombuffer", "numpy._core.numeric", "numpy.core.numeric")
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = frombuffer
    for module in ("builtins", "__builtin__"):
        for name in ("dict", "list", "bytes", "str", "int"):
            allowed[(module, name)] = getattr(builtins, name)
    return allowed


class CifarUnpickler(pickle.Unpickler):
    """Unpickler resolving only numpy-array reconstruction and plain builtin containers."""

    def __init__(self, file: io.BufferedIOBase, source: str):
        super().__init__(file, encoding="bytes")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refusing to load {module}.{name}; a CIFAR batch file may "
                "only contain a dict of numpy arrays, lists, bytes, str and int"
            ) from None

    def persistent_load(self, pid: object) -> object:
        raise DataError(f"{self._source}: persistent ids are not allowed in a CIFAR batch file")


def load_cifar_pickle(path: Path) -> object:
    """The object pickled in ``path``, read with :class:`CifarUnpickler`.

    Any failure (unreadable file, truncated or corrupt pickle, forbidden global) becomes a
    :class:`~apb.data.DataError` naming the file.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read CIFAR batch file {path}: {err}") from err
    try:
        return CifarUnpickler(io.BytesIO(data), str(path)).load()
    except DataError:
        raise
    except Exception as err:  # any parse failure of untrusted bytes is a data problem
        raise DataError(
            f"{path} is not a readable CIFAR python batch (pickled dict): "
            f"{type(err).__name__}: {err}"
        ) from err
