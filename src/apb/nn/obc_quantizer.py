r"""The weight quantizer of an OBC-compressed layer: a fixed pruning mask and, optionally, a
k-bit grid per output channel or per group of columns.

Frantar, Singh, Alistarh, *Optimal Brain Compression*, NeurIPS 2022 (arXiv:2208.11580).
OBC decides the mask and the grid after training (``apb.methods.ptq_``) and writes weights
that already lie on the grid; this module keeps both fixed:

.. math::

    \hat W = P \odot s_c\,\big(\mathrm{clamp}(\mathrm{round}(W/s_c) + z_c,\ 0,\ 2^k-1) - z_c\big)

(:math:`\hat W = P \odot W` without a grid), straight-through for :math:`W` on kept weights,
so a fine-tuning step could follow. Symmetric grids fix :math:`z_c = 2^{k-1}`; 0 is a level
of every grid. With ``group_size = g`` (GPTQ's grouping, Frantar et al., ICLR 2023) each
row has one scale (and zero point) per ``g`` consecutive weights of the flattened row,
``scale`` and ``zero`` are (rows, groups), and :math:`s_c, z_c` are those of each weight's
group.

Storage (docs/design.md §3, :mod:`apb.memory`): the smaller of the dense code (k-bit, or fp32 without a
grid) and the sparse one (CSR or bitmap over the kept weights), plus the scales (and zero
points when asymmetric) as 32-bit scalars: one per row, or one per group of each row.
Packing: OBC layers have no packed form (``apb.pack_`` raises ``PackError`` naming the
layer), group-wise or not.
"""

from __future__ import annotations

import torch

from ..memory import (
    FP32_BITS,
    LayerStorage,
    dense_storage,
    group_count,
    quantized_storage,
    sparse_storage,
)
from .weight_quantizer import WeightQuantizer


class OBCWeightQuantizer(WeightQuantizer):
    """Fixed mask ``keep`` and grid (``bits``, ``scale``, ``zero``; ``bits = 0``: none),
    per row or, with ``group_size``, per group of that many columns of a row.

    All state is in buffers, so a layer rebuilt empty (with the same ``group_size``) and
    loaded from a checkpoint's state dict is the compressed layer again.
    """

    method = "obc"

    def __init__(self, weight: torch.Tensor, group_size: int | None = None):
        super().__init__(weight)
        self.group_size = group_size
        self.groups = group_count(self.cols, group_size)
        shape = (self.rows,) if group_size is None else (self.rows, self.groups)
        self.register_buffer("keep", torch.ones(weight.shape, dtype=torch.bool))
        self.register_buffer("bits", torch.zeros((), dtype=torch.long))
        self.register_buffer("symmetric", torch.ones((), dtype=torch.bool))
        self.register_buffer("scale", torch.ones(shape))
        self.register_buffer("zero", torch.zeros(shape))

    @torch.no_grad()
    def set(self, keep: torch.Tensor, bits: int | None = None, symmetric: bool = True,
            scale: torch.Tensor | None = None, zero: torch.Tensor | None = None) -> None:
        """Fix the mask and (with ``bits``) the grid."""
        self.keep.copy_(keep.reshape(self.shape))
        self.bits.fill_(bits or 0)
        self.symmetric.fill_(symmetric)
        if bits:
            self.scale.copy_(scale)
            self.zero.copy_(zero)

    def _channel(self, t: torch.Tensor) -> torch.Tensor:
        """Per-row (or per-group) ``t`` broadcastable against the weight."""
        if self.group_size is None:
            return t.view(-1, *([1] * (len(self.shape) - 1)))
        cols = torch.arange(self.cols, device=t.device) // self.group_size
        return t[:, cols].reshape(self.shape)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        bits = int(self.bits)
        if not bits:
            return weight * self.keep
        s = self._channel(self.scale.to(weight.dtype))
        z = self._channel(self.zero.to(weight.dtype))
        q = s * ((torch.round(weight / s) + z).clamp(0, (1 << bits) - 1) - z)
        return (weight + (q - weight).detach()) * self.keep

    def storage(self, weight: torch.Tensor) -> LayerStorage:
        return obc_storage(self.rows, self.cols, int(self.keep.sum()), int(self.bits),
                           bool(self.symmetric), self.group_size)

    def describe(self, weight: torch.Tensor) -> dict:
        out = {"sparsity": 1.0 - float(self.keep.float().mean()), "bits": int(self.bits)}
        if self.group_size is not None:
            out["group_size"] = self.group_size
        return out

    def extra_repr(self) -> str:
        bits = int(self.bits)
        grid = f"{bits}-bit {'symmetric' if bool(self.symmetric) else 'asymmetric'}" if bits \
            else "full precision"
        if bits and self.group_size is not None:
            grid += f", groups of {self.group_size}"
        return f"sparsity={1.0 - float(self.keep.float().mean()):.4f}, {grid}"


def obc_storage(rows: int, cols: int, nnz: int, bits: int, symmetric: bool = True,
                group_size: int | None = None) -> LayerStorage:
    """What an OBC layer stores: the smaller of its dense code (``bits`` per weight, or fp32
    when ``bits`` is 0) and the sparse one over its ``nnz`` kept weights, plus the scales
    (and zero points when asymmetric): one per row, or one per ``group_size`` columns of each
    row (:func:`apb.memory.group_count`)."""
    n = rows * cols
    if not bits:
        dense = dense_storage(n)
        if nnz == n:
            return dense
        sparse = sparse_storage(rows, cols, nnz, value_bits=FP32_BITS)
        return sparse if sparse.total_bits < dense.total_bits else dense
    n_scalars = rows * group_count(cols, group_size) * (1 if symmetric else 2)
    dense = quantized_storage(rows, cols, bits, n_scalars=n_scalars)
    if nnz == n:
        return dense
    sparse = sparse_storage(rows, cols, nnz, value_bits=bits, n_scalars=n_scalars)
    return sparse if sparse.total_bits < dense.total_bits else dense
