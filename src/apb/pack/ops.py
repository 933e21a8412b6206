"""The packed-inference kernels as torch operators (namespace ``apb``).

Packed layers call ``torch.ops.apb.<kernel>``, never a Python function directly, so
``torch.compile`` and ``torch.export`` see each kernel as one opaque node whose output
shape comes from its fake (meta) implementation. Each op takes the backend name
(``"reference"`` or ``"kernels"``, :mod:`apb.pack.backend`) as an argument, so an
exported graph records which implementation it runs.

The ops are defined with ``torch.library.Library`` (a schema, a CPU implementation and
a fake one) rather than ``torch.library.custom_op``: the latter wraps every call in
Python-level autograd and aliasing checks, 23 µs per call on the 2-core development
machine against 5 µs for a Library op (``benchmarks/model_micro.py``), and a packed
ResNet-18 makes about 60 such calls per image. These ops have
no autograd formula (packed layers are for inference), and none returns a view of its
inputs.

Ops that the kernels define in place (``spmm_csr``) are functional here: they return a new
tensor, which traceable ops must do to need no aliasing rules.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..kernels.linear_fp import panel_shape
from .backend import kernel
from .bits import words_for
from .reference import conv_out_size

_LIBRARY = torch.library.Library("apb", "DEF")


def _define(schema: str, impl: Callable, fake: Callable) -> None:
    """Define ``apb::<schema>`` with its CPU implementation and its fake one."""
    name = schema.split("(", 1)[0]
    _LIBRARY.define(schema)
    _LIBRARY.impl(name, impl, "CPU")
    torch.library.register_fake(f"apb::{name}", fake, lib=_LIBRARY)


def _positions(x: Tensor, kernel_size, stride, padding, dilation):
    b, _, h, w = x.shape
    oh = conv_out_size(h, kernel_size[0], stride[0], padding[0], dilation[0])
    ow = conv_out_size(w, kernel_size[1], stride[1], padding[1], dilation[1])
    return b * oh * ow


def _im2col_shape(x: Tensor, kernel_size, stride, padding, dilation) -> tuple:
    return (_positions(x, kernel_size, stride, padding, dilation),
            words_for(x.shape[1] * kernel_size[0] * kernel_size[1]))


# -- packing -------------------------------------------------------------------------------
def pack_signs(x: Tensor, backend: str) -> Tensor:
    """float32 ``[N, K]`` → uint64 ``[N, ceil(K/64)]`` sign bits (bit 1 = negative)."""
    return kernel("pack_signs", backend)(x)


_define(
    "pack_signs(Tensor x, str backend) -> Tensor", pack_signs,
    lambda x, backend: x.new_empty((x.shape[0], words_for(x.shape[1])), dtype=torch.uint64),
)


def pack_planes(codes: Tensor, bits: int, backend: str) -> Tensor:
    """uint8 codes ``[N, K]`` → bit-planes uint64 ``[bits, N, ceil(K/64)]``."""
    return kernel("pack_planes", backend)(codes, bits)


_define(
    "pack_planes(Tensor codes, int bits, str backend) -> Tensor", pack_planes,
    lambda codes, bits, backend: codes.new_empty(
        (bits, codes.shape[0], words_for(codes.shape[1])), dtype=torch.uint64),
)


def quantize_pack_codes(x: Tensor, scale: Tensor, bits: int, backend: str) -> Tensor:
    """float32 ``[N, K]`` → bit-planes of its ``bits``-bit activation codes (clip scale ``scale``)."""
    return kernel("quantize_pack_codes", backend)(x, scale, bits)


_define(
    "quantize_pack_codes(Tensor x, Tensor scale, int bits, str backend) -> Tensor",
    quantize_pack_codes,
    lambda x, scale, bits, backend: x.new_empty(
        (bits, x.shape[0], words_for(x.shape[1])), dtype=torch.uint64),
)


def im2col_pack_signs(
    x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
    dilation: list[int], backend: str, column_order: str = "chw",
) -> Tensor:
    """``[B, C, H, W]`` → sign bits of the im2col rows ``[B·OH·OW, ceil(C·kh·kw/64)]``,
    columns ``(c, dy, dx)`` (``column_order="chw"``) or ``(dy, dx, c)`` (``"hwc"``)."""
    return kernel("im2col_pack_signs", backend)(x, kernel_size, stride, padding, dilation,
                                                column_order)


_define(
    "im2col_pack_signs(Tensor x, int[] kernel_size, int[] stride, int[] padding, "
    "int[] dilation, str backend, str column_order='chw') -> Tensor",
    im2col_pack_signs,
    lambda x, kernel_size, stride, padding, dilation, backend, column_order="chw": x.new_empty(
        _im2col_shape(x, kernel_size, stride, padding, dilation), dtype=torch.uint64),
)


def im2col_pack_codes(
    x: Tensor, scale: Tensor, bits: int, kernel_size: list[int], stride: list[int],
    padding: list[int], dilation: list[int], backend: str, column_order: str = "chw",
) -> Tensor:
    """``[B, C, H, W]`` → bit-planes of the activation codes of the im2col rows (column
    order as in :func:`im2col_pack_signs`)."""
    return kernel("im2col_pack_codes", backend)(
        x, scale, bits, kernel_size, stride, padding, dilation, column_order
    )


_define(
    "im2col_pack_codes(Tensor x, Tensor scale, int bits, int[] kernel_size, int[] stride, "
    "int[] padding, int[] dilation, str backend, str column_order='chw') -> Tensor",
    im2col_pack_codes,
    lambda x, scale, bits, kernel_size, stride, padding, dilation, backend,
    column_order="chw": x.new_empty(
        (bits, *_im2col_shape(x, kernel_size, stride, padding, dilation)), dtype=torch.uint64),
)


# -- products ------------------------------------------------------------------------------
def bgemm_1x1(w: Tensor, x: Tensor, k: int, backend: str) -> Tensor:
    """int32 ``[M, N]``: ``k − 2·popcount(w[m] XOR x[n])``."""
    return kernel("bgemm_1x1", backend)(w, x, k)


_define(
    "bgemm_1x1(Tensor w, Tensor x, int k, str backend) -> Tensor", bgemm_1x1,
    lambda w, x, k, backend: w.new_empty((w.shape[0], x.shape[0]), dtype=torch.int32),
)


def bgemm_1x2(w: Tensor, x: Tensor, backend: str) -> Tensor:
    """int32 ``[M, N]``: ``Σ_j s_w(m, j)·code_x(n, j)`` for ``x`` bit-planes ``[P, N, W]``."""
    return kernel("bgemm_1x2", backend)(w, x)


_define(
    "bgemm_1x2(Tensor w, Tensor x, str backend) -> Tensor", bgemm_1x2,
    lambda w, x, backend: w.new_empty((w.shape[0], x.shape[1]), dtype=torch.int32),
)


def bgemm_2x2(w: Tensor, x: Tensor, backend: str) -> Tensor:
    """int32 ``[M, N]``: ``Σ_j code_w(m, j)·code_x(n, j)`` for bit-planes ``w``, ``x``."""
    return kernel("bgemm_2x2", backend)(w, x)


_define(
    "bgemm_2x2(Tensor w, Tensor x, str backend) -> Tensor", bgemm_2x2,
    lambda w, x, backend: w.new_empty((w.shape[1], x.shape[1]), dtype=torch.int32),
)


def bgemm_1xf(w: Tensor, x: Tensor, backend: str) -> Tensor:
    """float32 ``[M, N]``: ``Σ_j s_w(m, j)·x[n, j]`` for float32 ``x [N, K]``."""
    return kernel("bgemm_1xf", backend)(w, x)


_define(
    "bgemm_1xf(Tensor w, Tensor x, str backend) -> Tensor", bgemm_1xf,
    lambda w, x, backend: x.new_empty((w.shape[0], x.shape[0]), dtype=torch.float32),
)


def linear_1xf_pack(sign_bits: Tensor, k: int, backend: str) -> Tensor:
    """uint8 ``[ceil(M/64), ceil(k/4), 32]``: the weight panel of :func:`linear_1xf` from sign
    rows ``[M, ceil(k/64)]`` (derived data, rebuilt from the sign bits, never stored)."""
    return kernel("linear_1xf_pack", backend)(sign_bits, k)


_define(
    "linear_1xf_pack(Tensor sign_bits, int k, str backend) -> Tensor", linear_1xf_pack,
    lambda sign_bits, k, backend: sign_bits.new_empty(panel_shape(sign_bits.shape[0], k),
                                                      dtype=torch.uint8),
)


def linear_1xf(
    x: Tensor, panel: Tensor, alpha: Tensor, out_features: int, indptr: Tensor | None,
    indices: Tensor | None, values: Tensor | None, bias: Tensor | None, backend: str,
) -> Tensor:
    """float32 ``[N, M]``: ``α_m·s_n·(B ⊗ a_n) + (S ⊗ x_n) + bias_m`` for float32 ``x [N, K]``,
    ``a_n`` the int8 codes of row ``n`` (scale ``s_n``), ``B`` the signs of ``panel``, ``S``
    the optional CSR part; see :mod:`apb.kernels.linear_fp`."""
    return kernel("linear_1xf", backend)(x, panel, alpha, out_features, indptr, indices,
                                         values, bias)


_define(
    "linear_1xf(Tensor x, Tensor panel, Tensor alpha, int out_features, Tensor? indptr, "
    "Tensor? indices, Tensor? values, Tensor? bias, str backend) -> Tensor",
    linear_1xf,
    lambda x, panel, alpha, out_features, indptr, indices, values, bias, backend: x.new_empty(
        (x.shape[0], out_features), dtype=torch.float32),
)


def spmm_csr(
    indptr: Tensor, indices: Tensor, values: Tensor, x: Tensor, rows: int, backend: str
) -> Tensor:
    """float32 ``[rows, N]``: the CSR matrix ``(indptr, indices, values)`` times ``x [K, N]``."""
    out = torch.zeros((rows, x.shape[1]), dtype=torch.float32)
    kernel("spmm_csr", backend)(indptr, indices, values, x, out)
    return out


_define(
    "spmm_csr(Tensor indptr, Tensor indices, Tensor values, Tensor x, int rows, str backend) "
    "-> Tensor",
    spmm_csr,
    lambda indptr, indices, values, x, rows, backend: x.new_empty(
        (rows, x.shape[1]), dtype=torch.float32),
)


def sparse_conv2d(
    x: Tensor, indptr: Tensor, indices: Tensor, values: Tensor, kernel_size: list[int],
    stride: list[int], padding: list[int], dilation: list[int], act_bits: int,
    scale: Tensor | None, dot: Tensor | None, dot_scale: Tensor | None,
    sparse_scale: Tensor | None, shift: Tensor | None, backend: str,
) -> Tensor:
    """float32 ``[M, B·OH·OW]``: ``dot_scale·dot + sparse_scale·(S ⊛ x̂) + shift`` per output
    channel, ``S`` the CSR matrix, ``x̂`` the ``act_bits`` quantized ``x`` (clip scale
    ``scale`` for 2..8 bits); see :mod:`apb.kernels.sparse_conv`."""
    return kernel("sparse_conv2d", backend)(
        x, indptr, indices, values, kernel_size, stride, padding, dilation, act_bits, scale,
        dot, dot_scale, sparse_scale, shift,
    )


_define(
    "sparse_conv2d(Tensor x, Tensor indptr, Tensor indices, Tensor values, int[] kernel_size, "
    "int[] stride, int[] padding, int[] dilation, int act_bits, Tensor? scale, Tensor? dot, "
    "Tensor? dot_scale, Tensor? sparse_scale, Tensor? shift, str backend) -> Tensor",
    sparse_conv2d,
    lambda x, indptr, indices, values, kernel_size, stride, padding, dilation, act_bits, scale,
    dot, dot_scale, sparse_scale, shift, backend: x.new_empty(
        (indptr.shape[0] - 1, _positions(x, kernel_size, stride, padding, dilation)),
        dtype=torch.float32),
)


def apb_conv2d(
    x: Tensor, sign_rows: Tensor, indptr: Tensor, indices: Tensor, values: Tensor,
    kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int],
    act_bits: int, scale: Tensor | None, padding_correction: Tensor | None, dot_scale: Tensor,
    sparse_scale: Tensor | None, shift: Tensor | None, backend: str,
) -> Tensor:
    """float32 ``[B, M, OH, OW]``: a packed APB convolution with 1..8-bit inputs in one
    call, what ``im2col_pack_*`` (hwc), ``bgemm_1x1`` / ``bgemm_1x2`` (minus
    ``padding_correction`` for padded ±1 inputs) and :func:`sparse_conv2d` compute in three,
    written in the layer's NCHW layout (``sign_rows``: the weights' sign bits in hwc column
    order)."""
    return kernel("apb_conv2d", backend)(
        x, sign_rows, indptr, indices, values, kernel_size, stride, padding, dilation,
        act_bits, scale, padding_correction, dot_scale, sparse_scale, shift,
    )


_define(
    "apb_conv2d(Tensor x, Tensor sign_rows, Tensor indptr, Tensor indices, Tensor values, "
    "int[] kernel_size, int[] stride, int[] padding, int[] dilation, int act_bits, "
    "Tensor? scale, Tensor? padding_correction, Tensor dot_scale, Tensor? sparse_scale, "
    "Tensor? shift, str backend) -> Tensor",
    apb_conv2d,
    lambda x, sign_rows, indptr, indices, values, kernel_size, stride, padding, dilation,
    act_bits, scale, padding_correction, dot_scale, sparse_scale, shift, backend: x.new_empty(
        (x.shape[0], indptr.shape[0] - 1,
         *(conv_out_size(x.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i])
           for i in range(2))), dtype=torch.float32),
)


def apb_linear(
    x: Tensor, sign_rows: Tensor, indptr: Tensor, indices: Tensor, values: Tensor,
    act_bits: int, scale: Tensor | None, dot_scale: Tensor, sparse_scale: Tensor | None,
    shift: Tensor | None, backend: str,
) -> Tensor:
    """float32 ``[N, M]``: a packed APB Linear layer with 1..8-bit inputs ``x [N, K]`` in one
    call, ``dot_scale·(B ⊗ x̂) + sparse_scale·(S ⊗ x̂) + shift`` per output feature."""
    return kernel("apb_linear", backend)(x, sign_rows, indptr, indices, values, act_bits,
                                         scale, dot_scale, sparse_scale, shift)


_define(
    "apb_linear(Tensor x, Tensor sign_rows, Tensor indptr, Tensor indices, Tensor values, "
    "int act_bits, Tensor? scale, Tensor dot_scale, Tensor? sparse_scale, Tensor? shift, "
    "str backend) -> Tensor",
    apb_linear,
    lambda x, sign_rows, indptr, indices, values, act_bits, scale, dot_scale, sparse_scale,
    shift, backend: x.new_empty((x.shape[0], indptr.shape[0] - 1), dtype=torch.float32),
)


apb_ops = torch.ops.apb
"""The operators defined above, ``torch.ops.apb.<kernel>(..., backend)``: what packed
layers call (importing it from here makes sure they are defined)."""
