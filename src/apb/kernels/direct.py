"""The kernels without their wrappers' Python checks, for the calls made on every forward.

The public wrappers of :mod:`apb.kernels` check every argument in Python and say exactly
what is wrong, which costs tens of microseconds per call: a packed ResNet-18 makes about
sixty kernel calls per image, so those checks alone would cost about as much as a layer
(``docs/performance.md``, model benchmark). The packed layers check their input (dtype,
device, shape) on every forward and their own buffers once, when built, so their
compiled backend (:mod:`apb.pack.compiled`) calls these functions instead.

Still bounds-safe: the extension checks every dtype, shape, layout, stream length and
CSR structure again before it touches memory, raising ``TypeError`` / ``ValueError``, so
nothing here can read or write out of bounds whatever it is handed; only the messages are
terser than the wrappers'. Arguments are numpy arrays, passed as they are (C-contiguous
views of tensors, no copies: the extension takes them faster than DLPack); results are
numpy arrays. Same semantics as the wrapper of the same name, except where noted:
convolution geometry is four pairs ``(rows, columns)``, ``scale`` a float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from apb.kernels._ext import extension


def _words(result: np.ndarray) -> np.ndarray:
    # The extension's packed arrays have numpy's `ulonglong` type, which torch does not
    # take; `uint64` is the same 64 bits.
    return result.view(np.uint64)


def pack_signs(x: np.ndarray) -> np.ndarray:
    """:func:`apb.kernels.pack_signs`: float32 ``[N, K]`` → uint64 ``[N, ceil(K/64)]``."""
    return _words(extension().pack_signs(x))


def pack_planes(codes: np.ndarray, bits: int) -> np.ndarray:
    """:func:`apb.kernels.pack_planes`: uint8 ``[N, K]`` → uint64 ``[bits, N, ceil(K/64)]``."""
    return _words(extension().pack_planes(codes, bits))


def quantize_pack_codes(x: np.ndarray, scale: float, bits: int) -> np.ndarray:
    """:func:`apb.kernels.quantize_pack_codes` with ``scale`` a float."""
    return _words(extension().quantize_pack_codes(x, scale, bits))


def im2col_pack_signs(x: np.ndarray, kernel_size: Sequence[int], stride: Sequence[int],
                      padding: Sequence[int], dilation: Sequence[int],
                      column_order: str = "chw") -> np.ndarray:
    """:func:`apb.kernels.im2col_pack_signs`, every geometry argument a pair."""
    return _words(extension().im2col_pack_signs(x, *kernel_size, *stride, *padding, *dilation,
                                                column_order))


def im2col_pack_codes(x: np.ndarray, scale: float, bits: int, kernel_size: Sequence[int],
                      stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                      column_order: str = "chw") -> np.ndarray:
    """:func:`apb.kernels.im2col_pack_codes`, ``scale`` a float, the geometry pairs."""
    return _words(extension().im2col_pack_codes(x, scale, bits, *kernel_size, *stride,
                                                *padding, *dilation, column_order))


def bgemm_1x1(w: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    """:func:`apb.kernels.bgemm_1x1`: int32 ``[M, N]``."""
    return extension().bgemm_1x1(w, x, k)


def bgemm_1x2(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """:func:`apb.kernels.bgemm_1x2` over all ``64·W`` columns (the padding of ``x`` is 0)."""
    return extension().bgemm_1x2(w, x)


def bgemm_2x2(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """:func:`apb.kernels.bgemm_2x2` over all ``64·W`` columns (the padding of ``x`` is 0)."""
    return extension().bgemm_2x2(w, x)


def bgemm_1xf(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """:func:`apb.kernels.bgemm_1xf`: float32 ``[M, N]``."""
    return extension().bgemm_1xf(w, x)


def linear_1xf_pack(sign_bits: np.ndarray, in_features: int) -> np.ndarray:
    """:func:`apb.kernels.linear_1xf_pack`: uint8 ``[ceil(M/64), ceil(K/4), 32]``."""
    return extension().linear_1xf_pack(sign_bits, in_features)


def linear_1xf(x: np.ndarray, panel: np.ndarray, alpha: np.ndarray, out_features: int,
               indptr: np.ndarray | None, indices: np.ndarray | None,
               values: np.ndarray | None, bias: np.ndarray | None,
               table_bits: int = 16) -> np.ndarray:
    """:func:`apb.kernels.linear_1xf`, every argument positional: float32 ``[N, M]``."""
    return extension().linear_1xf(x, panel, out_features, alpha, indptr, indices, values, bias,
                                  table_bits)


def spmm_csr(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, x: np.ndarray,
             out: np.ndarray) -> None:
    """:func:`apb.kernels.spmm_csr`: adds into ``out`` in place."""
    extension().spmm_csr(indptr, indices, values, x, out)


def sparse_conv2d(x: np.ndarray, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                  kernel_size: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                  dilation: Sequence[int], act_bits: int, scale: float,
                  dot: np.ndarray | None, dot_scale: np.ndarray | None,
                  sparse_scale: np.ndarray | None, shift: np.ndarray | None) -> np.ndarray:
    """:func:`apb.kernels.sparse_conv2d`, every argument positional; ``scale`` is a float,
    ignored unless ``act_bits`` is 2..8."""
    return extension().sparse_conv2d(x, indptr, indices, values, *kernel_size, *stride,
                                     *padding, *dilation, act_bits, scale, dot, dot_scale,
                                     sparse_scale, shift)


def apb_conv2d(x: np.ndarray, sign_rows: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
               values: np.ndarray, kernel_size: Sequence[int], stride: Sequence[int],
               padding: Sequence[int], dilation: Sequence[int], act_bits: int, scale: float,
               padding_correction: np.ndarray | None, dot_scale: np.ndarray,
               sparse_scale: np.ndarray | None, shift: np.ndarray | None,
               residual: np.ndarray | None = None, lower: float = -math.inf,
               upper: float = math.inf) -> np.ndarray:
    """A packed convolution with 1..8-bit inputs in one call: the im2col packing (hwc), the
    binary product with ``sign_rows`` and :func:`sparse_conv2d`'s epilogue; float32
    ``[B, M, OH, OW]`` (the layer's output). ``padding_correction``: int32 ``[M, OH·OW]`` for
    padded ±1 inputs. Then, in the same pass, ``min(max(out + residual, lower), upper)``
    (the end of a residual block, ``act(conv(x) + shortcut)``; a NaN stays NaN), with
    ``residual`` float32 of the output's shape or None."""
    return extension().apb_conv2d(x, sign_rows, indptr, indices, values, *kernel_size, *stride,
                                  *padding, *dilation, act_bits, scale, padding_correction,
                                  dot_scale, sparse_scale, shift, residual, lower, upper)


def apb_conv2d_layer(sign_rows: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                     values: np.ndarray, kernel_size: Sequence[int], stride: Sequence[int],
                     padding: Sequence[int], dilation: Sequence[int], act_bits: int,
                     scale: float, dot_scale: np.ndarray, sparse_scale: np.ndarray | None,
                     shift: np.ndarray | None):
    """:func:`apb_conv2d` with every argument but the input, ``padding_correction``,
    ``residual`` and the bounds checked and held once: call it as
    ``layer(x, padding_correction=None, residual=None, lower=-inf, upper=inf)``. The packed
    runtime's steps hold one per layer (the arrays stay alive with it, not copied)."""
    return extension().ApbConv2dLayer(sign_rows, indptr, indices, values, *kernel_size,
                                      *stride, *padding, *dilation, act_bits, scale,
                                      dot_scale, sparse_scale, shift)


def apb_linear_layer(sign_rows: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
                     values: np.ndarray, act_bits: int, scale: float, dot_scale: np.ndarray,
                     sparse_scale: np.ndarray | None, shift: np.ndarray | None):
    """:func:`apb_linear` held as :func:`apb_conv2d_layer`: call it as
    ``layer(x, residual=None, lower=-inf, upper=inf)``."""
    return extension().ApbLinearLayer(sign_rows, indptr, indices, values, act_bits, scale,
                                      dot_scale, sparse_scale, shift)


def apb_linear(x: np.ndarray, sign_rows: np.ndarray, indptr: np.ndarray, indices: np.ndarray,
               values: np.ndarray, act_bits: int, scale: float, dot_scale: np.ndarray,
               sparse_scale: np.ndarray | None, shift: np.ndarray | None,
               residual: np.ndarray | None = None, lower: float = -math.inf,
               upper: float = math.inf) -> np.ndarray:
    """A packed Linear layer with 1..8-bit inputs in one call: the rows' packing, the binary
    product with ``sign_rows``, ``S ⊗ x̂`` and the epilogue; float32 ``[N, M]``; then
    ``min(max(out + residual, lower), upper)`` as :func:`apb_conv2d`."""
    return extension().apb_linear(x, sign_rows, indptr, indices, values, act_bits, scale,
                                  dot_scale, sparse_scale, shift, residual, lower, upper)


def xor_gate_decode(table: np.ndarray, n_out: int, n_in: int, inputs: np.ndarray, n_bits: int,
                    patch_counts: np.ndarray, patch_offsets: np.ndarray, n_patches: int,
                    out: np.ndarray) -> np.ndarray:
    """:func:`apb.kernels.xor_gate_decode` into ``out``, which is required (its checks cost
    as much as decoding a 100k-weight plane); returns ``out``."""
    extension().xor_gate_decode(table, n_out, n_in, inputs, n_bits, patch_counts,
                                patch_offsets, n_patches, out)
    return out


def max_pool2d(x: np.ndarray, kernel_size: Sequence[int], stride: Sequence[int],
               padding: Sequence[int], lower: float = -math.inf,
               upper: float = math.inf) -> np.ndarray:
    """``torch.nn.functional.max_pool2d`` of float32 NCHW ``x`` (floor mode, no dilation,
    padding at most half the kernel): float32 ``[B, C, OH, OW]``, NaN propagated; then
    ``min(max(., lower), upper)`` (a ReLU or Hardtanh on either side of the pool), NaN
    kept."""
    return extension().max_pool2d(x, *kernel_size, *stride, *padding, lower, upper)


def max_pool2d_channels_last(x: np.ndarray, kernel_size: Sequence[int], stride: Sequence[int],
                             padding: Sequence[int], lower: float = -math.inf,
                             upper: float = math.inf) -> np.ndarray:
    """:func:`max_pool2d` of a channels-last map: ``x`` float32 ``[B, H, W, C]``
    C-contiguous (``tensor.permute(0, 2, 3, 1).numpy()`` of a channels-last tensor), the
    result NCHW ``[B, C, OH, OW]`` C-contiguous, in one pass, bounded as there."""
    return extension().max_pool2d_channels_last(x, *kernel_size, *stride, *padding, lower,
                                                upper)


def dense_conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None,
                 padding: Sequence[int], lower: float = -math.inf,
                 upper: float = math.inf) -> np.ndarray:
    """The stride-1 float32 convolution of NCHW ``x`` with ``weight`` ``[Cout, Cin, KH,
    KW]`` (zero padding, no dilation or groups) plus ``bias``, then ``min(max(., lower),
    upper)``, NaN kept: float32 ``[B, Cout, OH, OW]`` (:mod:`apb.pack.dense`)."""
    return extension().dense_conv2d(x, weight, bias, padding[0], padding[1], lower, upper)


def dense_linear_pack(weight: np.ndarray) -> np.ndarray:
    """A float32 ``[N, K]`` weight in the panels :func:`dense_linear` reads (1-D)."""
    return extension().dense_linear_pack(weight)


def dense_linear(x: np.ndarray, packed: np.ndarray, out_features: int,
                 bias: np.ndarray | None, lower: float = -math.inf,
                 upper: float = math.inf) -> np.ndarray:
    """``x @ weight.T + bias`` for float32 ``x`` ``[M, K]`` and ``weight`` packed by
    :func:`dense_linear_pack`, then ``min(max(., lower), upper)``: float32 ``[M, N]``."""
    return extension().dense_linear(x, packed, out_features, bias, lower, upper)
