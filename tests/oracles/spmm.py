"""Oracle of spmm_csr, CSR sparse x dense (:mod:`apb.kernels.spmm`)."""

from __future__ import annotations

import numpy as np


def csr_to_dense_ref(
    indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, k: int
) -> np.ndarray:
    """float64 ``[M, k]`` with ``a[m, indices[e]] += values[e]`` for ``e`` in row ``m``'s
    range ``indptr[m] .. indptr[m+1]`` (repeated indices add up)."""
    indptr = np.asarray(indptr).astype(np.int64)
    rows = len(indptr) - 1
    dense = np.zeros((rows, k), dtype=np.float64)
    row_of = np.repeat(np.arange(rows), np.diff(indptr))
    np.add.at(dense, (row_of, np.asarray(indices).astype(np.int64)), np.asarray(values, np.float64))
    return dense


def spmm_csr_ref(
    indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, x: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """float64 ``out + A @ x`` for the CSR matrix ``A`` (``out`` itself is not changed).

    float16 values are widened by numpy, which converts every half exactly.
    """
    x = np.asarray(x, dtype=np.float64)
    return np.asarray(out, np.float64) + csr_to_dense_ref(indptr, indices, values, x.shape[0]) @ x
