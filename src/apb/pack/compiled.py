"""The ``"kernels"`` backend: the compiled extension ``apb._C``, called directly.

Same arguments and results as :mod:`apb.pack.reference`. The public wrappers of
:mod:`apb.kernels` check every argument in Python first, which costs tens of
microseconds per call: a packed ResNet-18 makes about sixty kernel calls per image, so
those checks alone cost about as much as a layer (``docs/performance.md``, model
benchmark). Here they are not needed twice: a packed layer checks its input (dtype,
device, shape) and its own buffers when built, and the extension checks every dtype,
shape, layout and CSR structure again before it touches memory, raising ``TypeError``
/ ``ValueError``, so nothing here can read or write out of bounds whatever it is handed.
Tensors pass as numpy views (no copies), which the extension takes faster than DLPack.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..kernels._ext import extension


def _bits(result: np.ndarray) -> Tensor:
    # The extension's arrays have numpy's `ulonglong` type, which torch does not take;
    # `uint64` is the same 64 bits.
    return torch.from_numpy(result.view(np.uint64))


def _view(t: Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    return t.detach().numpy() if t.requires_grad else t.numpy()


def pack_signs(x: Tensor) -> Tensor:
    return _bits(extension().pack_signs(_view(x)))


def pack_planes(codes: Tensor, bits: int) -> Tensor:
    return _bits(extension().pack_planes(_view(codes), bits))


def quantize_pack_codes(x: Tensor, scale: Tensor, bits: int) -> Tensor:
    return _bits(extension().quantize_pack_codes(_view(x), float(scale), bits))


def im2col_pack_signs(x: Tensor, kernel_size, stride, padding, dilation,
                      column_order: str = "chw") -> Tensor:
    return _bits(extension().im2col_pack_signs(_view(x), *kernel_size, *stride, *padding,
                                               *dilation, column_order))


def im2col_pack_codes(x: Tensor, scale: Tensor, bits: int, kernel_size, stride, padding,
                      dilation, column_order: str = "chw") -> Tensor:
    return _bits(extension().im2col_pack_codes(_view(x), float(scale), bits, *kernel_size,
                                               *stride, *padding, *dilation, column_order))


def bgemm_1x1(w: Tensor, x: Tensor, k: int) -> Tensor:
    return torch.from_numpy(extension().bgemm_1x1(_view(w), _view(x), k))


def bgemm_1x2(w: Tensor, x: Tensor) -> Tensor:
    return torch.from_numpy(extension().bgemm_1x2(_view(w), _view(x)))


def bgemm_2x2(w: Tensor, x: Tensor) -> Tensor:
    return torch.from_numpy(extension().bgemm_2x2(_view(w), _view(x)))


def bgemm_1xf(w: Tensor, x: Tensor) -> Tensor:
    return torch.from_numpy(extension().bgemm_1xf(_view(w), _view(x)))


def spmm_csr(indptr: Tensor, indices: Tensor, values: Tensor, x: Tensor, out: Tensor) -> None:
    extension().spmm_csr(_view(indptr), _view(indices), _view(values), _view(x), _view(out))


def sparse_conv2d(x, indptr, indices, values, kernel_size, stride, padding, dilation,
                  act_bits, scale, dot, dot_scale, sparse_scale, shift) -> Tensor:
    return torch.from_numpy(extension().sparse_conv2d(
        _view(x), _view(indptr), _view(indices), _view(values), *kernel_size, *stride,
        *padding, *dilation, act_bits, 1.0 if scale is None else float(scale), _view(dot),
        _view(dot_scale), _view(sparse_scale), _view(shift),
    ))
