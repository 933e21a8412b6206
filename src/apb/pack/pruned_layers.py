r"""Packed pruned + quantized layers (``prune_quant``): a keep mask and ``Q``-bit codes of
the kept weights as bit-planes, computed with the binary popcount kernels (see
:class:`_PackedPruned` for how).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..memory import LayerStorage, sparse_storage
from .bits import bitcount, pack_bits, words_for
from .geometry import ConvGeometry, LinearGeometry
from .layer import PackedLayer, check_finite, check_tensor
from .ops import apb_ops


class _PackedPruned(PackedLayer):
    r"""``Ŵ = α_m P ⊙ (2c − L)/L`` (:class:`apb.nn.PruneQuantizer`): a keep mask ``P``,
    ``Q``-bit codes ``c`` (``L = 2^Q − 1``; ``Q = 1``: ``c = 1`` is ``+α``, ``c = 0`` is
    ``−α``) and a scale per output channel.

    The products run on the binary kernels: with :math:`s(b) = 1 - 2b`,
    :math:`2c - L = -\sum_q 2^q s(c_q)`, and a pruned position is the mean of a +1 and a
    −1: :math:`P \odot s(c_q) = \tfrac12\,[s(u_q) + s(v_q)]` with
    :math:`u_q = c_q \wedge P`, :math:`v_q = c_q \vee \neg P`. So

    .. math::

        \hat W = -\frac{\alpha_m}{2L} \sum_q 2^q\,[s(u_q) + s(v_q)],

    ``2Q`` binary products whose integer (or float) sum is scaled once. Codes are 0 at
    pruned positions (the canonical form every file holds).
    """

    def _init_weights(self, keep_bits: Tensor, code_planes: Tensor, alpha: Tensor) -> None:
        words = words_for(self.cols)
        keep_bits = check_tensor(keep_bits, "keep_bits", (self.rows, words), (torch.uint64,))
        if code_planes.dim() != 3 or not 1 <= code_planes.shape[0] <= 8:
            raise ValueError(
                f"code_planes must be [bits (1..8), {self.rows}, {words}], got shape "
                f"{tuple(code_planes.shape)}"
            )
        shape = (code_planes.shape[0], self.rows, words)
        code_planes = check_tensor(code_planes, "code_planes", shape, (torch.uint64,))
        alpha = check_tensor(alpha, "alpha", (self.rows,), (torch.float32,))
        check_finite(alpha, "alpha")
        # bitwise work on int64 views: torch implements few operations for uint64
        valid = pack_bits(torch.ones(1, self.cols, dtype=torch.uint8)).view(torch.int64)
        keep, codes = keep_bits.view(torch.int64), code_planes.view(torch.int64)
        if bool(((keep & ~valid) != 0).any()):
            raise ValueError("keep_bits has bits set past the last column")
        if bool(((codes & ~keep.unsqueeze(0)) != 0).any()):
            raise ValueError("code_planes must be 0 at pruned positions (where keep_bits is 0)")
        self.register_buffer("keep_bits", keep_bits)
        self.register_buffer("code_planes", code_planes)
        self.register_buffer("alpha", alpha)
        # u_q = c_q AND P, v_q = c_q OR NOT P (within the row: padding bits stay 0)
        u = codes & keep
        v = (codes | ~keep) & valid
        self.register_buffer("_u_planes", u.view(torch.uint64), persistent=False)
        self.register_buffer("_v_planes", v.view(torch.uint64), persistent=False)
        self._init_input_order("_u_planes")
        self._init_input_order("_v_planes")

    @property
    def weight_bits(self) -> int:
        return self.code_planes.shape[0]

    @property
    def weight_levels(self) -> int:
        return (1 << self.weight_bits) - 1

    @property
    def nnz(self) -> int:
        return int(bitcount(self.keep_bits))

    def storage(self) -> LayerStorage:
        return sparse_storage(self.rows, self.cols, self.nnz, value_bits=self.weight_bits,
                              n_scalars=self.rows)

    def describe(self) -> dict:
        return {"alpha": float(self.alpha.mean())}

    def _product(self, x: Tensor) -> Tensor:
        if self.act_bits == 32:
            xin = self._columns(x)
        elif self.act_bits == 1:
            xin = self._sign_bits(x)
        else:
            xin = self._code_planes(x, self._clip_scale())
        # full-precision inputs unfold in stored column order, packed ones in input order
        pairs = ((self._u_planes, self._v_planes) if self.act_bits == 32 else
                 (self._input_order_bits("_u_planes"), self._input_order_bits("_v_planes")))
        total = None
        for q in range(self.weight_bits):
            for half, planes in enumerate(pairs):
                if self.act_bits == 32:
                    d = apb_ops.bgemm_1xf(planes[q], xin, self.backend)
                elif self.act_bits == 1:
                    d = self._signed_dot(planes[q], xin, x, key=2 * q + half)
                else:
                    d = apb_ops.bgemm_1x2(planes[q], xin, self.backend)
                d = d * (1 << q) if q else d  # exact: integers, or a power-of-two scaling
                total = d if total is None else total + d
        scale = -self.alpha.view(-1, 1) / (2 * self.weight_levels)
        if 2 <= self.act_bits <= 8:
            scale = scale * (self._clip_scale() / self.act_levels)
        return scale * total.float()

    def _weight_repr(self) -> str:
        frac = 1.0 - self.nnz / self.n_weights if self.n_weights else 0.0
        return (f"method={self.method}, weight_bits={self.weight_bits}, "
                f"sparsity={frac:.2%}")


class PackedPrunedConv2d(_PackedPruned, ConvGeometry):
    """A packed pruned + quantized ``Conv2d``: keep mask ``[M, ceil(K/64)]``, code bit-planes
    ``[Q, M, ceil(K/64)]`` (0 where pruned), ``α`` per output channel."""

    kind = "pruned_conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, stride=1,
                 padding=0, dilation=1, keep_bits: Tensor, code_planes: Tensor,
                 alpha: Tensor, bias: Tensor | None = None, act_bits: int = 32,
                 act_scale: Tensor | None = None, backend: str | None = None):
        super().__init__()
        self._init_geometry(in_channels, out_channels, kernel_size, stride, padding, dilation)
        self._init_common(method="prune_quant", act_bits=act_bits, act_scale=act_scale,
                          bias=bias, backend=backend)
        self._init_weights(keep_bits, code_planes, alpha)


class PackedPrunedLinear(_PackedPruned, LinearGeometry):
    """A packed pruned + quantized ``Linear`` (see :class:`PackedPrunedConv2d`)."""

    kind = "pruned_linear"

    def __init__(self, in_features: int, out_features: int, *, keep_bits: Tensor,
                 code_planes: Tensor, alpha: Tensor, bias: Tensor | None = None,
                 act_bits: int = 32, act_scale: Tensor | None = None,
                 backend: str | None = None):
        super().__init__()
        self._init_geometry(in_features, out_features)
        self._init_common(method="prune_quant", act_bits=act_bits, act_scale=act_scale,
                          bias=bias, backend=backend)
        self._init_weights(keep_bits, code_planes, alpha)
