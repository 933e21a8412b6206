"""The ``"kernels"`` backend: the compiled popcount kernels, on torch tensors.

Same arguments and results as :mod:`apb.pack.reference`. Calls go to
:mod:`apb.kernels.direct`, the kernels without the public wrappers' Python checks (tens of
microseconds per call, about as much as a layer over the sixty kernel calls of a packed
ResNet-18 image): a packed layer checks its input (dtype, device, shape) on every
forward and its own buffers when built, and the extension checks every dtype, shape,
layout and CSR structure again before it touches memory, raising ``TypeError`` /
``ValueError``, so nothing here can read or write out of bounds whatever it is handed.
Tensors pass as numpy views (no copies) and the results come back as tensors sharing the
kernels' output memory.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..kernels import direct


def _view(t: Tensor | None) -> np.ndarray | None:
    if t is None:
        return None
    return t.detach().numpy() if t.requires_grad else t.numpy()


def pack_signs(x: Tensor) -> Tensor:
    return torch.from_numpy(direct.pack_signs(_view(x)))


def pack_planes(codes: Tensor, bits: int) -> Tensor:
    return torch.from_numpy(direct.pack_planes(_view(codes), bits))


def quantize_pack_codes(x: Tensor, scale: Tensor, bits: int) -> Tensor:
    return torch.from_numpy(direct.quantize_pack_codes(_view(x), float(scale), bits))


def im2col_pack_signs(x: Tensor, kernel_size, stride, padding, dilation,
                      column_order: str = "chw") -> Tensor:
    return torch.from_numpy(direct.im2col_pack_signs(_view(x), kernel_size, stride, padding,
                                                     dilation, column_order))


def im2col_pack_codes(x: Tensor, scale: Tensor, bits: int, kernel_size, stride, padding,
                      dilation, column_order: str = "chw") -> Tensor:
    return torch.from_numpy(direct.im2col_pack_codes(_view(x), float(scale), bits, kernel_size,
                                                     stride, padding, dilation, column_order))


def bgemm_1x1(w: Tensor, x: Tensor, k: int) -> Tensor:
    return torch.from_numpy(direct.bgemm_1x1(_view(w), _view(x), k))


def bgemm_1x2(w: Tensor, x: Tensor) -> Tensor:
    return torch.from_numpy(direct.bgemm_1x2(_view(w), _view(x)))


def bgemm_2x2(w: Tensor, x: Tensor) -> Tensor:
    return torch.from_numpy(direct.bgemm_2x2(_view(w), _view(x)))


def bgemm_1xf(w: Tensor, x: Tensor) -> Tensor:
    return torch.from_numpy(direct.bgemm_1xf(_view(w), _view(x)))


def linear_1xf_pack(sign_bits: Tensor, k: int) -> Tensor:
    return torch.from_numpy(direct.linear_1xf_pack(_view(sign_bits), k))


def linear_1xf(x: Tensor, panel: Tensor, alpha: Tensor, out_features: int,
               indptr: Tensor | None, indices: Tensor | None, values: Tensor | None,
               bias: Tensor | None) -> Tensor:
    return torch.from_numpy(direct.linear_1xf(
        _view(x), _view(panel), _view(alpha), out_features, _view(indptr), _view(indices),
        _view(values), _view(bias),
    ))


def spmm_csr(indptr: Tensor, indices: Tensor, values: Tensor, x: Tensor, out: Tensor) -> None:
    direct.spmm_csr(_view(indptr), _view(indices), _view(values), _view(x), _view(out))


def sparse_conv2d(x, indptr, indices, values, kernel_size, stride, padding, dilation,
                  act_bits, scale, dot, dot_scale, sparse_scale, shift) -> Tensor:
    return torch.from_numpy(direct.sparse_conv2d(
        _view(x), _view(indptr), _view(indices), _view(values), kernel_size, stride, padding,
        dilation, act_bits, 1.0 if scale is None else float(scale), _view(dot),
        _view(dot_scale), _view(sparse_scale), _view(shift),
    ))


def apb_conv2d(x, sign_rows, indptr, indices, values, kernel_size, stride, padding, dilation,
               act_bits, scale, padding_correction, dot_scale, sparse_scale, shift) -> Tensor:
    return torch.from_numpy(direct.apb_conv2d(
        _view(x), _view(sign_rows), _view(indptr), _view(indices), _view(values), kernel_size,
        stride, padding, dilation, act_bits, 1.0 if scale is None else float(scale),
        _view(padding_correction), _view(dot_scale), _view(sparse_scale), _view(shift),
    ))


def apb_linear(x, sign_rows, indptr, indices, values, act_bits, scale, dot_scale, sparse_scale,
               shift) -> Tensor:
    return torch.from_numpy(direct.apb_linear(
        _view(x), _view(sign_rows), _view(indptr), _view(indices), _view(values), act_bits,
        1.0 if scale is None else float(scale), _view(dot_scale), _view(sparse_scale),
        _view(shift),
    ))
