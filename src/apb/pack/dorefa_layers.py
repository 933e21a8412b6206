r"""Packed DoReFa layers: ``Q``-bit weights as bit-planes, computed with popcount kernels.

:class:`PackedDoReFaConv2d` / :class:`PackedDoReFaLinear` hold DoReFa ``Q``-bit weights
:math:`\hat W = (2c - L_w)/L_w`, :math:`L_w = 2^Q - 1`, as ``Q`` bit-planes of the codes
``c``. The affine map is applied exactly on the integer results:

* ``k``-bit activations ``x̂ = (s/L)·a``:
  :math:`y = \frac{s}{L L_w}\big(2\,\mathrm{dot}_{2\times2}(c, a) - L_w \textstyle\sum_j a_{nj}\big)`;
* ±1 activations and full-precision ones use
  :math:`2c - L_w = -\sum_q 2^q s_q` (``s_q`` the ±1 reading of plane ``q``), i.e. ``Q``
  binary products: :math:`y = -\frac1{L_w}\sum_q 2^q\,\mathrm{dot}(s_q, x̂)`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..memory import LayerStorage, quantized_storage
from .bits import pack_bits, words_for
from .geometry import ConvGeometry, LinearGeometry
from .layer import PackedLayer, check_tensor
from .ops import apb_ops


class _PackedDoReFa(PackedLayer):
    r"""``Ŵ = (2c − L_w)/L_w`` with the codes ``c`` as bit-planes; see the module docstring."""

    def _init_weights(self, weight_planes: Tensor) -> None:
        if weight_planes.dim() != 3 or not 2 <= weight_planes.shape[0] <= 8:
            raise ValueError(
                f"weight_planes must be [bits (2..8), {self.rows}, {words_for(self.cols)}], "
                f"got shape {tuple(weight_planes.shape)}"
            )
        shape = (weight_planes.shape[0], self.rows, words_for(self.cols))
        self.register_buffer(
            "weight_planes", check_tensor(weight_planes, "weight_planes", shape, (torch.uint64,))
        )
        self._init_input_order("weight_planes")
        ones = pack_bits(torch.ones(1, 1, self.cols, dtype=torch.uint8))
        self.register_buffer("_ones_plane", ones, persistent=False)

    @property
    def weight_bits(self) -> int:
        return self.weight_planes.shape[0]

    @property
    def weight_levels(self) -> int:
        return (1 << self.weight_bits) - 1

    def storage(self) -> LayerStorage:
        return quantized_storage(self.rows, self.cols, self.weight_bits, n_scalars=0)

    def describe(self) -> dict:
        return {}

    def _product(self, x: Tensor) -> Tensor:
        lw = self.weight_levels
        if 2 <= self.act_bits <= 8:
            s = self._clip_scale()
            planes = self._code_planes(x, s)
            dot = apb_ops.bgemm_2x2(self._input_order_bits("weight_planes"), planes, self.backend)
            code_sums = apb_ops.bgemm_2x2(self._ones_plane, planes, self.backend)
            exact = 2 * dot - lw * code_sums  # Σ_j (2c − L_w)·a, an exact integer
            return (s / self.act_levels / lw) * exact.float()
        # 2c − L_w = −Σ_q 2^q s_q: one binary product per plane
        if self.act_bits == 1:
            x_bits = self._sign_bits(x)
            w_planes = self._input_order_bits("weight_planes")
            dots = [self._signed_dot(w_planes[q], x_bits, x, key=q)
                    for q in range(self.weight_bits)]
        else:
            cols = self._columns(x)
            dots = [apb_ops.bgemm_1xf(self.weight_planes[q], cols, self.backend)
                    for q in range(self.weight_bits)]
        total = dots[0]
        for q in range(1, self.weight_bits):
            total = total + (1 << q) * dots[q]  # exact: integers, or one float rounding each
        return -total.float() / lw

    def _weight_repr(self) -> str:
        return f"method={self.method}, weight_bits={self.weight_bits}"


class PackedDoReFaConv2d(_PackedDoReFa, ConvGeometry):
    """A packed DoReFa ``Conv2d``: ``Q`` bit-planes of weight codes ``[Q, M, ceil(K/64)]``."""

    kind = "dorefa_conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1,
                 padding=0, dilation=1, weight_planes: Tensor, bias: Tensor | None = None,
                 act_bits: int = 32, act_scale: Tensor | None = None,
                 backend: str | None = None):
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self._init_common(method="dorefa", act_bits=act_bits, act_scale=act_scale, bias=bias,
                          backend=backend)
        self._init_weights(weight_planes)


class PackedDoReFaLinear(_PackedDoReFa, LinearGeometry):
    """A packed DoReFa ``Linear``: ``Q`` bit-planes of weight codes ``[Q, M, ceil(K/64)]``."""

    kind = "dorefa_linear"

    def __init__(self, in_features: int, out_features: int, *, weight_planes: Tensor,
                 bias: Tensor | None = None, act_bits: int = 32,
                 act_scale: Tensor | None = None, backend: str | None = None):
        super().__init__()
        self._init_geometry(in_features, out_features)
        self._init_common(method="dorefa", act_bits=act_bits, act_scale=act_scale, bias=bias,
                          backend=backend)
        self._init_weights(weight_planes)
