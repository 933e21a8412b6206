"""Activation packing for the bitwise layers: quantize and bit-pack a layer's input in
one pass, for a Linear layer (rows of ``x``) and for a convolution (im2col fused in, so
the unfolded matrix never exists in float).

Quantizers, decided per element in float32:

- signs (1-bit activations, :class:`apb.nn.SignActivation`): bit = ``x < 0`` (NaN and
  -0.0 give 0), the rule of :func:`~apb.kernels.pack_signs`;
- codes (:class:`apb.nn.UniformActivation`, ``P`` bits, ``L = 2^P - 1``)::

      code = round(min(max(x, 0), s) / s * L)

  evaluated in exactly that order (a true division, then the product) and rounded half
  to even, so the codes are bit-identical to the training quantizer's forward. NaN
  gives code 0. Codes are stored as bit-planes ``[P, rows, ceil(K/64)]``.

Convolution layout: ``x`` is ``[B, C, H, W]``; output position ``n = (b*OH + oy)*OW + ox``
and column ``j = (c*kh + dy)*kw + dx`` (``column_order="chw"``, as ``weight.reshape(M,
-1)`` of a Conv2d weight) or ``j = (dy*kw + dx)*C + c`` (``"hwc"``, as
``weight.permute(0, 2, 3, 1).reshape(M, -1)``), so row ``n`` of the result pairs with
the weights packed in the same order. ``"hwc"`` is the fast one: each input is
quantized once into per-pixel words of ``C`` bits, and the unfolding only moves those
words, where ``"chw"`` quantizes every input ``kh*kw`` times. Zero padding is the value
0: sign bit 0 (which means +1: the layer subtracts a correction for it) and code 0
(exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from apb.kernels._arrays import as_int, check_array, check_matrix, is_torch_tensor, like_input
from apb.kernels._ext import extension

_LIMIT = 2**31


def _pair(value: Any, *, fn: str, arg: str, lowest: int) -> tuple[int, int]:
    """An int or a pair of ints (rows, columns), each in ``[lowest, 2^31)``."""
    meaning = "or a pair of ints (rows, columns)"
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"{fn}: {arg} must be an int {meaning}, got {value!r}")
        pair = tuple(as_int(v, fn=fn, arg=arg, meaning=meaning) for v in value)
    else:
        single = as_int(value, fn=fn, arg=arg, meaning=meaning)
        pair = (single, single)
    for v in pair:
        if not lowest <= v < _LIMIT:
            raise ValueError(f"{fn}: {arg} must be >= {lowest} (and < 2^31), got {value!r}")
    return pair  # type: ignore[return-value]


def _scale(scale: Any, *, fn: str) -> float:
    """The clipping scale as the float32 the quantizer uses (returned as a Python float
    holding that float32 exactly)."""
    if isinstance(scale, (bool, str, bytes)):
        raise TypeError(
            f"{fn}: scale must be a number (the clipping value s), got {type(scale).__name__}"
        )
    if is_torch_tensor(scale):
        scale = scale.detach()  # a learned act_scale is a Parameter
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise TypeError(
            f"{fn}: scale must be a number (the clipping value s), got {type(scale).__name__}"
        ) from None
    with np.errstate(over="ignore"):
        s = np.float32(value)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(
            f"{fn}: scale must be finite and > 0 in float32, got {value!r}; pass the "
            "quantizer's act_scale (clamped to >= 1e-8 as UniformActivation does)"
        )
    return float(s)


def _bits(bits: Any, *, fn: str) -> int:
    bits = as_int(bits, fn=fn, arg="bits", meaning="bits per code")
    if not 1 <= bits <= 8:
        raise ValueError(f"{fn}: bits must be in [1, 8], got {bits}")
    return bits


COLUMN_ORDERS = ("chw", "hwc")


def _column_order(order: Any, *, fn: str) -> str:
    if order not in COLUMN_ORDERS:
        raise ValueError(
            f"{fn}: column_order must be 'chw' (columns (c, dy, dx)) or 'hwc' "
            f"((dy, dx, c)), got {order!r}"
        )
    return order


def _packed(result: Any, x: Any) -> Any:
    # The extension's array has numpy's `ulonglong` type, which torch does not take;
    # `uint64` is the same 64 bits.
    return like_input(result.view(np.uint64), x)


def _conv_geometry(
    x: Any, fn: str, kernel_size: Any, stride: Any, padding: Any, dilation: Any
) -> tuple[Any, list[int]]:
    """Checked ``x`` and the extension's geometry arguments
    ``[kh, kw, sh, sw, ph, pw, dh, dw]``."""
    x = check_array(x, fn=fn, arg="x", dtypes="float32", shape="[B, C, H, W]")
    kernel = _pair(kernel_size, fn=fn, arg="kernel_size", lowest=1)
    strides = _pair(stride, fn=fn, arg="stride", lowest=1)
    pads = _pair(padding, fn=fn, arg="padding", lowest=0)
    dilations = _pair(dilation, fn=fn, arg="dilation", lowest=1)
    for axis, size, k, p, d in zip(("H", "W"), x.shape[2:], kernel, pads, dilations):
        span = d * (k - 1) + 1
        if span > size + 2 * p:
            raise ValueError(
                f"{fn}: the kernel spans {span} input pixels along {axis} (kernel {k}, "
                f"dilation {d}), more than the padded input's {size} + 2*{p} = {size + 2 * p}; "
                "use a smaller kernel or dilation, or more padding"
            )
    return x, [*kernel, *strides, *pads, *dilations]


def im2col_pack_signs(
    x: Any, kernel_size: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
    column_order: str = "chw",
) -> Any:
    """Unfold ``x`` as ``Conv2d(kernel_size, stride, padding, dilation)`` reads it and
    pack the signs: uint64 ``[B*OH*OW, ceil(C*kh*kw/64)]``, bit = ``x < 0``.

    Args:
        x: float32 ``[B, C, H, W]``, C-contiguous (numpy or CPU torch).
        kernel_size, stride, padding, dilation: an int or a pair (rows, columns), as for
            ``torch.nn.Conv2d``; kernel, stride and dilation >= 1, padding >= 0.
        column_order: ``"chw"`` (columns ``(c, dy, dx)``) or ``"hwc"`` (``(dy, dx, c)``,
            faster); see the module docstring.

    Returns:
        The packed rows, of the same kind as ``x``. A padded pixel gives bit 0 (+1).

    Raises:
        TypeError: wrong type or dtype. ValueError: wrong rank, not contiguous, not on
        CPU, a parameter out of range, or a (dilated) kernel larger than the padded input.
    """
    fn = "im2col_pack_signs"
    x, geometry = _conv_geometry(x, fn, kernel_size, stride, padding, dilation)
    order = _column_order(column_order, fn=fn)
    return _packed(extension().im2col_pack_signs(x, *geometry, order), x)


def im2col_pack_codes(
    x: Any,
    scale: Any,
    bits: int,
    kernel_size: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    column_order: str = "chw",
) -> Any:
    """Unfold ``x`` as Conv2d reads it, quantize to ``bits``-bit codes and pack the
    bit-planes: uint64 ``[bits, B*OH*OW, ceil(C*kh*kw/64)]``.

    Args:
        x: float32 ``[B, C, H, W]``, C-contiguous (numpy or CPU torch).
        scale: the clipping value ``s`` (a number or a one-element tensor such as
            ``UniformActivation.act_scale``), finite and > 0 in float32.
        bits: ``P`` in ``[1, 8]``; codes are ``0 .. 2^P - 1``.
        kernel_size, stride, padding, dilation, column_order: as in
            :func:`im2col_pack_signs`.

    Returns:
        The code planes, of the same kind as ``x``. A padded pixel gives code 0.
    """
    fn = "im2col_pack_codes"
    s = _scale(scale, fn=fn)
    bits = _bits(bits, fn=fn)
    x, geometry = _conv_geometry(x, fn, kernel_size, stride, padding, dilation)
    order = _column_order(column_order, fn=fn)
    return _packed(extension().im2col_pack_codes(x, s, bits, *geometry, order), x)


def quantize_pack_codes(x: Any, scale: Any, bits: int) -> Any:
    """Quantize the rows of float32 ``x [N, K]`` to ``bits``-bit codes and pack the
    bit-planes: uint64 ``[bits, N, ceil(K/64)]`` (a Linear layer's input; for 1-bit
    inputs use :func:`~apb.kernels.pack_signs`). ``scale`` and ``bits`` as in
    :func:`im2col_pack_codes`; the result has the kind of ``x``."""
    fn = "quantize_pack_codes"
    s = _scale(scale, fn=fn)
    bits = _bits(bits, fn=fn)
    x = check_matrix(x, fn=fn, arg="x", dtype="float32")
    return _packed(extension().quantize_pack_codes(x, s, bits), x)
