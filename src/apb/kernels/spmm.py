"""Sparse (CSR) x dense product, accumulated in place: the ``S ⊗ x̂`` part of
``Ŵ = α·B + S`` (docs/design.md §2), where ``S`` holds the full-precision weights::

    out[m, :] += sum_{e = indptr[m]}^{indptr[m+1] - 1} values[e] * x[indices[e], :]

``x`` is ``[K, N]`` (the unfolded activations, one row per input column), so every
nonzero is one AXPY over a contiguous row of ``x``. The CSR arrays may keep the narrow
types a packed file stores; float16 values are converted exactly to float32, and the
products are accumulated with one fused multiply-add per element and nonzero, in
nonzero order, so every instruction set gives bit-identical results.
"""

from __future__ import annotations

from typing import Any

from apb.kernels._arrays import check_array, check_matrix, is_torch_tensor
from apb.kernels._ext import extension

INDPTR_DTYPES = ("uint8", "uint16", "int32", "int64")
INDEX_DTYPES = ("uint8", "uint16", "int32")
VALUE_DTYPES = ("float32", "float16")


def spmm_csr(indptr: Any, indices: Any, values: Any, x: Any, out: Any) -> None:
    """Add the CSR matrix ``A`` (``[M, K]``) times ``x`` to ``out``, in place.

    Args:
        indptr: ``[M + 1]`` row starts, uint8/uint16/int32/int64: ``indptr[0] == 0``,
            non-decreasing, ``indptr[M] == nnz``.
        indices: ``[nnz]`` column of each nonzero, uint8/uint16/int32, each ``< K``.
            Repeated columns in a row add up.
        values: ``[nnz]`` float32 or float16.
        x: float32 ``[K, N]``.
        out: float32 ``[M, N]``, written in place (a writable numpy array or CPU tensor).

    All arguments are numpy arrays or CPU torch tensors (they may be mixed), 1-D or 2-D
    as stated, C-contiguous. ``out`` may not share memory with any input (the kernel reads
    ``x`` while it writes ``out``). The whole CSR structure is checked before ``out`` is
    touched; on any error ``out`` is unchanged.

    Raises:
        TypeError: wrong type or dtype. ValueError: wrong rank or shape, not contiguous,
        not on CPU, read-only ``out``, ``out`` overlapping an input, or an invalid CSR
        structure (the message names the first offending entry).
    """
    fn = "spmm_csr"
    indptr = check_array(indptr, fn=fn, arg="indptr", dtypes=INDPTR_DTYPES, shape="[M + 1]")
    indices = check_array(indices, fn=fn, arg="indices", dtypes=INDEX_DTYPES, shape="[nnz]")
    values = check_array(values, fn=fn, arg="values", dtypes=VALUE_DTYPES, shape="[nnz]")
    x = check_matrix(x, fn=fn, arg="x", dtype="float32")
    out = check_array(out, fn=fn, arg="out", dtypes="float32", shape="[M, N]", writable=True)
    reject_overlap(fn, out, indptr=indptr, indices=indices, values=values, x=x)
    rows, columns = out.shape
    if indptr.shape[0] != rows + 1:
        raise ValueError(
            f"{fn}: indptr has {indptr.shape[0]} entries, but out has M={rows} rows, which "
            f"need M+1={rows + 1}"
        )
    nnz = indices.shape[0]
    if values.shape[0] != nnz:
        raise ValueError(
            f"{fn}: indices and values must have the same length (one per nonzero), got "
            f"{nnz} and {values.shape[0]}"
        )
    if x.shape[1] != columns:
        raise ValueError(
            f"{fn}: x has shape {tuple(x.shape)}, but out has shape {tuple(out.shape)}; x "
            f"must be [K, N] with out's N={columns} columns"
        )
    if int(indptr[0]) != 0:
        raise ValueError(f"{fn}: indptr[0] must be 0, got {int(indptr[0])}")
    if int(indptr[-1]) != nnz:
        raise ValueError(
            f"{fn}: indptr[-1]={int(indptr[-1])} must equal the number of nonzeros, "
            f"len(indices)={nnz}"
        )
    # Monotonicity and the index range are O(nnz) checks: the extension makes them in
    # one pass before it writes anything, raising ValueError.
    extension().spmm_csr(indptr, indices, values, x, out)


def _memory(a: Any) -> tuple[int, int]:
    """``[start, end)`` addresses of a C-contiguous numpy array or CPU tensor's elements."""
    if is_torch_tensor(a):
        return a.data_ptr(), a.data_ptr() + a.numel() * a.element_size()
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


def reject_overlap(fn: str, out: Any, **inputs: Any) -> None:
    """ValueError when the memory of ``out`` overlaps that of an input (an aliased output
    would be read after it is written: a silently wrong result)."""
    lo, hi = _memory(out)
    if lo == hi:
        return
    for name, a in inputs.items():
        start, end = _memory(a)
        if start < hi and lo < end:
            raise ValueError(f"{fn}: out shares memory with {name}; the kernel reads {name} "
                             f"while it writes out: pass a separate output array "
                             f"(e.g. {name}.copy() as the input)")
