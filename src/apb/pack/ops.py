"""The packed-inference kernels as ``torch.library`` custom ops (namespace ``apb``).

Packed layers call ``torch.ops.apb.<kernel>``, never a Python function directly, so
``torch.compile`` and ``torch.export`` see each kernel as one opaque node whose output
shape comes from its ``register_fake`` implementation. Each op takes the backend name
(``"reference"`` or ``"kernels"``, :mod:`apb.pack.backend`) as its last argument, so an
exported graph records which implementation it runs.

Ops that the kernels define in place (``spmm_csr``) are functional here: they return a new
tensor, which custom ops must do to stay traceable without aliasing rules.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import kernel


def _conv_out(size, k: int, s: int, p: int, d: int):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _words(k):
    return (k + 63) // 64


def _im2col_shape(x: Tensor, kernel_size, stride, padding, dilation) -> tuple:
    b, c, h, w = x.shape
    oh = _conv_out(h, kernel_size[0], stride[0], padding[0], dilation[0])
    ow = _conv_out(w, kernel_size[1], stride[1], padding[1], dilation[1])
    return b * oh * ow, _words(c * kernel_size[0] * kernel_size[1])


# -- packing -------------------------------------------------------------------------------
@torch.library.custom_op("apb::pack_signs", mutates_args=())
def pack_signs(x: Tensor, backend: str) -> Tensor:
    """float32 ``[N, K]`` → uint64 ``[N, ceil(K/64)]`` sign bits (bit 1 = negative)."""
    return kernel("pack_signs", backend)(x)


@pack_signs.register_fake
def _(x, backend):
    return x.new_empty((x.shape[0], _words(x.shape[1])), dtype=torch.uint64)


@torch.library.custom_op("apb::pack_planes", mutates_args=())
def pack_planes(codes: Tensor, bits: int, backend: str) -> Tensor:
    """uint8 codes ``[N, K]`` → bit-planes uint64 ``[bits, N, ceil(K/64)]``."""
    return kernel("pack_planes", backend)(codes, bits)


@pack_planes.register_fake
def _(codes, bits, backend):
    return codes.new_empty((bits, codes.shape[0], _words(codes.shape[1])), dtype=torch.uint64)


@torch.library.custom_op("apb::quantize_pack_codes", mutates_args=())
def quantize_pack_codes(x: Tensor, scale: Tensor, bits: int, backend: str) -> Tensor:
    """float32 ``[N, K]`` → bit-planes of its ``bits``-bit activation codes (clip scale ``scale``)."""
    return kernel("quantize_pack_codes", backend)(x, scale, bits)


@quantize_pack_codes.register_fake
def _(x, scale, bits, backend):
    return x.new_empty((bits, x.shape[0], _words(x.shape[1])), dtype=torch.uint64)


@torch.library.custom_op("apb::im2col_pack_signs", mutates_args=())
def im2col_pack_signs(
    x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
    dilation: list[int], backend: str,
) -> Tensor:
    """``[B, C, H, W]`` → sign bits of the im2col rows ``[B·OH·OW, ceil(C·kh·kw/64)]``."""
    return kernel("im2col_pack_signs", backend)(x, kernel_size, stride, padding, dilation)


@im2col_pack_signs.register_fake
def _(x, kernel_size, stride, padding, dilation, backend):
    return x.new_empty(_im2col_shape(x, kernel_size, stride, padding, dilation),
                       dtype=torch.uint64)


@torch.library.custom_op("apb::im2col_pack_codes", mutates_args=())
def im2col_pack_codes(
    x: Tensor, scale: Tensor, bits: int, kernel_size: list[int], stride: list[int],
    padding: list[int], dilation: list[int], backend: str,
) -> Tensor:
    """``[B, C, H, W]`` → bit-planes of the activation codes of the im2col rows."""
    return kernel("im2col_pack_codes", backend)(
        x, scale, bits, kernel_size, stride, padding, dilation
    )


@im2col_pack_codes.register_fake
def _(x, scale, bits, kernel_size, stride, padding, dilation, backend):
    return x.new_empty((bits, *_im2col_shape(x, kernel_size, stride, padding, dilation)),
                       dtype=torch.uint64)


# -- products ------------------------------------------------------------------------------
@torch.library.custom_op("apb::bgemm_1x1", mutates_args=())
def bgemm_1x1(w: Tensor, x: Tensor, k: int, backend: str) -> Tensor:
    """int32 ``[M, N]``: ``k − 2·popcount(w[m] XOR x[n])``."""
    return kernel("bgemm_1x1", backend)(w, x, k)


@bgemm_1x1.register_fake
def _(w, x, k, backend):
    return w.new_empty((w.shape[0], x.shape[0]), dtype=torch.int32)


@torch.library.custom_op("apb::bgemm_1x2", mutates_args=())
def bgemm_1x2(w: Tensor, x: Tensor, backend: str) -> Tensor:
    """int32 ``[M, N]``: ``Σ_j s_w(m, j)·code_x(n, j)`` for ``x`` bit-planes ``[P, N, W]``."""
    return kernel("bgemm_1x2", backend)(w, x)


@bgemm_1x2.register_fake
def _(w, x, backend):
    return w.new_empty((w.shape[0], x.shape[1]), dtype=torch.int32)


@torch.library.custom_op("apb::bgemm_2x2", mutates_args=())
def bgemm_2x2(w: Tensor, x: Tensor, backend: str) -> Tensor:
    """int32 ``[M, N]``: ``Σ_j code_w(m, j)·code_x(n, j)`` for bit-planes ``w``, ``x``."""
    return kernel("bgemm_2x2", backend)(w, x)


@bgemm_2x2.register_fake
def _(w, x, backend):
    return w.new_empty((w.shape[1], x.shape[1]), dtype=torch.int32)


@torch.library.custom_op("apb::bgemm_1xf", mutates_args=())
def bgemm_1xf(w: Tensor, x: Tensor, backend: str) -> Tensor:
    """float32 ``[M, N]``: ``Σ_j s_w(m, j)·x[n, j]`` for float32 ``x [N, K]``."""
    return kernel("bgemm_1xf", backend)(w, x)


@bgemm_1xf.register_fake
def _(w, x, backend):
    return x.new_empty((w.shape[0], x.shape[0]), dtype=torch.float32)


@torch.library.custom_op("apb::spmm_csr", mutates_args=())
def spmm_csr(
    indptr: Tensor, indices: Tensor, values: Tensor, x: Tensor, rows: int, backend: str
) -> Tensor:
    """float32 ``[rows, N]``: the CSR matrix ``(indptr, indices, values)`` times ``x [K, N]``."""
    out = torch.zeros((rows, x.shape[1]), dtype=torch.float32)
    kernel("spmm_csr", backend)(indptr, indices, values, x, out)
    return out


@spmm_csr.register_fake
def _(indptr, indices, values, x, rows, backend):
    return x.new_empty((rows, x.shape[1]), dtype=torch.float32)
