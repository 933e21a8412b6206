"""Which implementation runs each packed-inference kernel: ``"reference"`` or ``"kernels"``.

Both backends take the same arguments and return the same results (the kernel semantics
of docs/design.md §2); :mod:`apb.pack.ops` calls :func:`kernel` with the backend a packed
layer holds. ``"reference"`` is :mod:`apb.pack.reference` (pure torch, always available,
the cross-check of the tests); ``"kernels"`` are the compiled popcount kernels
(:mod:`apb.pack.compiled`, through :mod:`apb.kernels`; the extension itself is loaded on
the first call, so the tables cost nothing without it). Switching an op between them is
its one line in the tables below.
"""

from __future__ import annotations

from collections.abc import Callable

from . import compiled, reference

BACKENDS = ("reference", "kernels")

REFERENCE: dict[str, Callable] = {
    "pack_signs": reference.pack_signs,
    "pack_planes": reference.pack_planes,
    "quantize_pack_codes": reference.quantize_pack_codes,
    "im2col_pack_signs": reference.im2col_pack_signs,
    "im2col_pack_codes": reference.im2col_pack_codes,
    "bgemm_1x1": reference.bgemm_1x1,
    "bgemm_1x2": reference.bgemm_1x2,
    "bgemm_2x2": reference.bgemm_2x2,
    "bgemm_1xf": reference.bgemm_1xf,
    "linear_1xf_pack": reference.linear_1xf_pack,
    "linear_1xf": reference.linear_1xf,
    "spmm_csr": reference.spmm_csr,
    "sparse_conv2d": reference.sparse_conv2d,
    "apb_conv2d": reference.apb_conv2d,
    "apb_linear": reference.apb_linear,
}

KERNELS: dict[str, Callable] = {name: getattr(compiled, name) for name in REFERENCE}
"""The compiled kernels, by the same names."""

DEFAULT_BACKEND = "kernels"
"""The backend of packed layers unless one is asked for."""

_TABLES: dict[str, dict[str, Callable]] = {"reference": REFERENCE, "kernels": KERNELS}


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown packed backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def kernel(op: str, backend: str) -> Callable:
    """The implementation of ``op`` under ``backend``."""
    return _TABLES[check_backend(backend)][op]
