"""Oracles of the activation packers (:mod:`apb.kernels.activation_packing`:
im2col_pack_signs, im2col_pack_codes, quantize_pack_codes); the unfolding slices a
zero-padded array, one kernel tap at a time."""

from __future__ import annotations

import numpy as np

from .bgemm import pack_planes_ref
from .sign_packing import pack_signs_ref


def quantize_codes_ref(x: np.ndarray, scale: float, bits: int) -> np.ndarray:
    """int64 codes ``round(min(max(x, 0), s) / s * L)``, ``L = 2^bits - 1``, in float32 in
    that order with round-half-to-even (``np.rint``); NaN gives code 0."""
    x = np.asarray(x, dtype=np.float32)
    s = np.float32(scale)
    levels = np.float32(2**bits - 1)
    with np.errstate(invalid="ignore"):
        v = np.where(x > 0, x, np.float32(0.0))
        v = np.where(v < s, v, s)
        return np.rint(v / s * levels).astype(np.int64)


def conv2d_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length along one axis, as torch.nn.Conv2d computes it."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def im2col_ref(
    x: np.ndarray,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    column_order: str = "chw",
) -> np.ndarray:
    """float32 ``[B*OH*OW, C*kh*kw]``: row ``(b, oy, ox)``, column ``(c, dy, dx)`` (or
    ``(dy, dx, c)`` for ``column_order="hwc"``) holds
    ``x[b, c, oy*sh - ph + dy*dh, ox*sw - pw + dx*dw]``, 0 outside the image."""
    x = np.asarray(x, dtype=np.float32)
    batch, channels, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    oh = conv2d_output_size(height, kh, sh, ph, dh)
    ow = conv2d_output_size(width, kw, sw, pw, dw)
    padded = np.zeros((batch, channels, height + 2 * ph, width + 2 * pw), dtype=np.float32)
    padded[:, :, ph : ph + height, pw : pw + width] = x
    taps = np.empty((batch, channels, kh, kw, oh, ow), dtype=np.float32)
    for dy in range(kh):
        for dx in range(kw):
            y0, x0 = dy * dh, dx * dw
            taps[:, :, dy, dx] = padded[:, :, y0 : y0 + sh * (oh - 1) + 1 : sh,
                                        x0 : x0 + sw * (ow - 1) + 1 : sw]  # fmt: skip
    order = (0, 4, 5, 1, 2, 3) if column_order == "chw" else (0, 4, 5, 2, 3, 1)
    return taps.transpose(order).reshape(batch * oh * ow, channels * kh * kw)


def im2col_pack_signs_ref(
    x: np.ndarray, kernel_size, stride, padding, dilation, column_order: str = "chw"
) -> np.ndarray:
    """uint64 ``[N, ceil(K/64)]``: the signs (bit = value < 0) of :func:`im2col_ref`;
    padding is the value 0, so bit 0."""
    return pack_signs_ref(im2col_ref(x, kernel_size, stride, padding, dilation, column_order))


def im2col_pack_codes_ref(
    x: np.ndarray, scale: float, bits: int, kernel_size, stride, padding, dilation,
    column_order: str = "chw",
) -> np.ndarray:
    """uint64 ``[bits, N, ceil(K/64)]``: the code planes of :func:`im2col_ref`; padding
    is the value 0, so code 0."""
    columns = im2col_ref(x, kernel_size, stride, padding, dilation, column_order)
    return pack_planes_ref(quantize_codes_ref(columns, scale, bits), bits)


def quantize_pack_codes_ref(x: np.ndarray, scale: float, bits: int) -> np.ndarray:
    """uint64 ``[bits, N, ceil(K/64)]``: the code planes of the rows of ``x``."""
    return pack_planes_ref(quantize_codes_ref(x, scale, bits), bits)
