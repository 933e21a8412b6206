r"""The weight quantizer of an OBC-compressed layer: a fixed pruning mask and, optionally, a
per-output-channel k-bit grid.

Frantar, Singh, Alistarh, *Optimal Brain Compression*, NeurIPS 2022 (arXiv:2208.11580).
OBC decides the mask and the grid after training (``apb.methods.ptq_``) and writes weights
that already lie on the grid; this module keeps both fixed:

.. math::

    \hat W = P \odot s_c\,\big(\mathrm{clamp}(\mathrm{round}(W/s_c) + z_c,\ 0,\ 2^k-1) - z_c\big)

(:math:`\hat W = P \odot W` without a grid), straight-through for :math:`W` on kept weights,
so a fine-tuning step could follow. Symmetric grids fix :math:`z_c = 2^{k-1}`; 0 is a level
of every grid.

Storage (docs/design.md §3, :mod:`apb.memory`): the smaller of the dense code (k-bit, or fp32 without a
grid) and the sparse one (CSR or bitmap over the kept weights), plus the per-channel scales
(and zero points when asymmetric) as 32-bit scalars.
"""

from __future__ import annotations

import torch

from ..memory import FP32_BITS, LayerStorage, dense_storage, quantized_storage, sparse_storage
from .weight_quantizer import WeightQuantizer


class OBCWeightQuantizer(WeightQuantizer):
    """Fixed mask ``keep`` and grid (``bits``, ``scale``, ``zero``; ``bits = 0``: none).

    All state is in buffers, so a layer rebuilt empty and loaded from a checkpoint's state
    dict is the compressed layer again.
    """

    method = "obc"

    def __init__(self, weight: torch.Tensor):
        super().__init__(weight)
        self.register_buffer("keep", torch.ones(weight.shape, dtype=torch.bool))
        self.register_buffer("bits", torch.zeros((), dtype=torch.long))
        self.register_buffer("symmetric", torch.ones((), dtype=torch.bool))
        self.register_buffer("scale", torch.ones(self.rows))
        self.register_buffer("zero", torch.zeros(self.rows))

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
        return t.view(-1, *([1] * (len(self.shape) - 1)))

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
                           bool(self.symmetric))

    def describe(self, weight: torch.Tensor) -> dict:
        return {"sparsity": 1.0 - float(self.keep.float().mean()), "bits": int(self.bits)}

    def extra_repr(self) -> str:
        bits = int(self.bits)
        grid = f"{bits}-bit {'symmetric' if bool(self.symmetric) else 'asymmetric'}" if bits \
            else "full precision"
        return f"sparsity={1.0 - float(self.keep.float().mean()):.4f}, {grid}"


def obc_storage(rows: int, cols: int, nnz: int, bits: int, symmetric: bool = True) -> LayerStorage:
    """What an OBC layer stores: the smaller of its dense code (``bits`` per weight, or fp32
    when ``bits`` is 0) and the sparse one over its ``nnz`` kept weights, plus per-row
    scales (and zero points when asymmetric)."""
    n = rows * cols
    if not bits:
        dense = dense_storage(n)
        if nnz == n:
            return dense
        sparse = sparse_storage(rows, cols, nnz, value_bits=FP32_BITS)
        return sparse if sparse.total_bits < dense.total_bits else dense
    n_scalars = rows * (1 if symmetric else 2)
    dense = quantized_storage(rows, cols, bits, n_scalars=n_scalars)
    if nnz == n:
        return dense
    sparse = sparse_storage(rows, cols, nnz, value_bits=bits, n_scalars=n_scalars)
    return sparse if sparse.total_bits < dense.total_bits else dense
