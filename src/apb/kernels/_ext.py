"""Lazy access to the compiled extension ``apb._C``.

``import apb`` must work on a checkout where the extension has not been built (the
pure-Python parts are usable without it), so nothing imports ``apb._C`` until a
kernel is first called; then a missing build raises an ImportError saying how to
make one.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_BUILD_HINT = (
    "apb's compiled kernels (the extension module apb._C) are not available: {reason}. "
    "Install the package with `make install` (or `pip install .`), or, in a development "
    "checkout, run `make build-inplace` and put src/ on the path (PYTHONPATH=src)."
)

_extension: ModuleType | None = None


def extension() -> ModuleType:
    """The loaded ``apb._C`` module; imports it on first use."""
    global _extension
    if _extension is None:
        try:
            _extension = importlib.import_module("apb._C")
        except ImportError as err:
            raise ImportError(_BUILD_HINT.format(reason=err)) from err
    return _extension
