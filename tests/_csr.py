"""Random CSR matrices shared by the sparse-kernel tests (spmm_csr, sparse_conv2d)."""

from __future__ import annotations

import numpy as np


def random_csr(
    rng: np.random.Generator,
    m: int,
    k: int,
    density: float,
    indptr_dtype: str = "int32",
    index_dtype: str = "int32",
    value_dtype: str = "float32",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A CSR matrix with empty rows, unsorted and repeated columns allowed."""
    counts = rng.binomial(k, density, size=m) if k > 0 else np.zeros(m, dtype=np.int64)
    counts[rng.random(m) < 0.2] = 0
    limit = np.iinfo(indptr_dtype).max  # uint8 row pointers count at most 255 nonzeros
    if counts.sum() > limit:
        counts = counts * limit // counts.sum()
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(indptr_dtype)
    nnz = int(counts.sum())
    indices = rng.integers(0, max(k, 1), size=nnz).astype(index_dtype)
    values = rng.standard_normal(nnz).astype(value_dtype)
    return indptr, indices, values
