"""Oracle of sparse_conv2d (:mod:`apb.kernels.sparse_conv`): the quantized input is
unfolded with :func:`oracles.activation_packing.im2col_ref` and multiplied by the dense
form of the CSR matrix in float64."""

from __future__ import annotations

import numpy as np

from .activation_packing import im2col_ref, quantize_codes_ref
from .spmm import csr_to_dense_ref


def quantized_input_ref(x: np.ndarray, act_bits: int, scale: float | None) -> np.ndarray:
    """float32 ``x̂``: ``x`` (32 bits), ``x < 0 ? −1 : +1`` (1 bit, NaN gives +1), or
    ``code · (s/L)`` with ``s/L`` rounded to float32 (2..8 bits, NaN gives code 0)."""
    x = np.asarray(x, dtype=np.float32)
    if act_bits == 32:
        return x
    if act_bits == 1:
        with np.errstate(invalid="ignore"):
            return np.where(x < 0, np.float32(-1.0), np.float32(1.0))
    step = np.float32(scale) / np.float32(2**act_bits - 1)
    return quantize_codes_ref(x, scale, act_bits).astype(np.float32) * step


def sparse_conv2d_ref(
    x: np.ndarray, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
    kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
    dilation: tuple[int, int], *, act_bits: int = 32, scale: float | None = None,
    dot: np.ndarray | None = None, dot_scale: np.ndarray | None = None,
    sparse_scale: np.ndarray | None = None, shift: np.ndarray | None = None,
) -> np.ndarray:
    """float64 ``[M, B·OH·OW]``: ``dot_scale[m]·dot[m, n] + sparse_scale[m]·(S ⊗ x̂)[m, n]
    + shift[m]``, with ``S ⊗ x̂ = S @ im2col(x̂)ᵀ`` (absent terms: 0, scales: 1)."""
    xq = quantized_input_ref(x, act_bits, scale)
    columns = im2col_ref(xq, kernel_size, stride, padding, dilation).astype(np.float64)
    s = csr_to_dense_ref(indptr, indices, values, columns.shape[1])
    out = s @ columns.T
    rows = s.shape[0]
    if sparse_scale is not None:
        out = out * np.asarray(sparse_scale, np.float64).reshape(rows, 1)
    if dot is not None:
        out = out + np.asarray(dot_scale, np.float64).reshape(rows, 1) * np.asarray(dot, np.float64)
    if shift is not None:
        out = out + np.asarray(shift, np.float64).reshape(rows, 1)
    return out
