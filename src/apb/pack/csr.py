"""The CSR structure of a packed layer's sparse part: its checks and its in-memory dtypes.

``S`` of ``Ŵ = α·B + S`` (and a pruned layer's kept positions, when its file stores them
as CSR) is a matrix of ``M`` rows and ``K`` columns in compressed sparse rows: ``indptr``
``[M + 1]``, ``indices`` and ``values`` ``[nnz]``. Files hold the narrowest unsigned
types the accounting counts (docs/design.md §3, §4); in memory the kernels take the
types below.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels import spmm
from ..memory import index_bits

INDEX_DTYPES = tuple(getattr(torch, name) for name in spmm.INDEX_DTYPES)
"""Column-index dtypes the kernels take: uint8, uint16, int32."""
INDPTR_DTYPES = tuple(getattr(torch, name) for name in spmm.INDPTR_DTYPES)
"""Row-pointer dtypes the kernels take: uint8, uint16, int32, int64."""


def check_csr(indptr: Tensor, indices: Tensor, cols: int) -> None:
    """Raise ``ValueError`` unless ``(indptr, indices)`` is a canonical CSR structure of a
    matrix with ``cols`` columns: ``indptr[0] = 0``, non-decreasing, ``indptr[-1] = nnz``,
    and each row's column indices strictly increasing and ``< cols``. Checked before any
    kernel sees the arrays."""
    ptr = indptr.to(torch.int64)
    nnz = indices.shape[0]
    if int(ptr[0]) != 0:
        raise ValueError(f"CSR indptr must start at 0, got {int(ptr[0])}")
    steps = ptr.diff()
    if bool((steps < 0).any()):
        row = int((steps < 0).nonzero()[0, 0])
        raise ValueError(f"CSR indptr decreases at row {row}")
    if int(ptr[-1]) != nnz:
        raise ValueError(f"CSR indptr ends at {int(ptr[-1])}, but there are {nnz} values")
    if nnz == 0:
        return
    idx = indices.to(torch.int64)
    if int(idx.min()) < 0 or int(idx.max()) >= cols:
        raise ValueError(
            f"CSR column indices must lie in [0, {cols}), got [{int(idx.min())}, {int(idx.max())}]"
        )
    row_start = torch.zeros(nnz, dtype=torch.bool)
    row_start[ptr[:-1][steps > 0]] = True
    increasing = (idx.diff() > 0) | row_start[1:]
    if not bool(increasing.all()):
        at = int((~increasing).nonzero()[0, 0]) + 1
        raise ValueError(f"CSR column indices are not increasing within a row (entry {at})")


def csr_index_dtype(cols: int) -> torch.dtype:
    """In-memory dtype of the column indices: the accounting's unsigned width (uint8 /
    uint16 / 32 bits) as a type the kernels take (32 bits: int32)."""
    bits = index_bits(max(cols - 1, 0))
    return {8: torch.uint8, 16: torch.uint16}.get(bits, torch.int32)


def csr_indptr_dtype(nnz: int) -> torch.dtype:
    """In-memory dtype of the row pointers: the accounting's width, signed where the
    kernels want it (32 bits: int32, or int64 past 2^31 values; 64 bits: int64)."""
    bits = index_bits(nnz)
    if bits == 32 and nnz < 2**31:
        return torch.int32
    return {8: torch.uint8, 16: torch.uint16}.get(bits, torch.int64)
