"""Weight quantizers of the baselines APB is compared with.

Each baseline gets the same care as APB: the same straight-through treatment of ``W``, the
same accounting, the same trainer.
"""

from __future__ import annotations

import torch

from ..memory import FP32_BITS, LayerStorage, quantized_storage, sparse_storage
from .weight_quantizer import WeightQuantizer


def _ste(value: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, identity to ``w`` in the backward pass."""
    return w + (value - w).detach()


def _sign(w: torch.Tensor) -> torch.Tensor:
    return torch.where(w < 0, -torch.ones_like(w), torch.ones_like(w))


def _channel_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    return t.view(-1, *([1] * (ndim - 1)))


class BinaryWeightQuantizer(WeightQuantizer):
    r"""Binary weights with a mean-magnitude scale (XNOR-Net, Rastegari et al. 2016).

    Forward: :math:`\hat W_c = \alpha_c \operatorname{sign}(W_c)`,
    :math:`\alpha_c = \operatorname{mean}|W_c|` per output channel ``c`` (or per layer).
    Backward: straight-through for the sign (:math:`\partial\operatorname{sign}(W)/\partial W
    = 1`, as for APB), and the exact derivative of :math:`\alpha_c` with respect to ``W``.
    """

    method = "bnn"
    resizable = True  # α is recomputed from W at every call

    def __init__(self, weight: torch.Tensor, *, per_channel: bool = True):
        super().__init__(weight)
        self.per_channel = per_channel

    def scale(self, weight: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            return _channel_view(weight.abs().reshape(self.rows, -1).mean(1), weight.dim())
        return weight.abs().mean()

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.scale(weight) * _ste(_sign(weight), weight)

    def storage(self, weight: torch.Tensor) -> LayerStorage:
        return quantized_storage(
            self.rows, self.cols, 1, n_scalars=self.rows if self.per_channel else 1
        )

    def describe(self, weight: torch.Tensor) -> dict:
        return {"alpha": float(self.scale(weight.detach()).mean())}

    def extra_repr(self) -> str:
        return f"per_channel={self.per_channel}"


class DoReFaWeightQuantizer(WeightQuantizer):
    r"""DoReFa k-bit weights (Zhou et al. 2016, arXiv:1606.06160).

    For :math:`k \ge 2`:
    :math:`\hat W = 2\,q_k\!\left(\frac{\tanh W}{2\max|\tanh W|} + \tfrac12\right) - 1`, with
    :math:`q_k(x) = \operatorname{round}((2^k-1)x)/(2^k-1)` and a straight-through round,
    so the levels are :math:`(2c - L)/L`, :math:`c = 0..L`, :math:`L = 2^k - 1`.
    For :math:`k = 1`: :math:`\hat W = \operatorname{mean}|W|\operatorname{sign}(W)`.
    """

    method = "dorefa"
    resizable = True  # the scale max|tanh W| is recomputed from W at every call

    def __init__(self, weight: torch.Tensor, *, bits: int = 2):
        super().__init__(weight)
        if not 1 <= bits <= 8:
            raise ValueError(f"DoReFa weights need 1 to 8 bits, got {bits}")
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bits == 1:
            return weight.abs().mean().detach() * _ste(_sign(weight), weight)
        levels = (1 << self.bits) - 1
        t = torch.tanh(weight)
        x = t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5
        q = _ste(torch.round(x * levels) / levels, x)
        return 2 * q - 1

    def storage(self, weight: torch.Tensor) -> LayerStorage:
        return quantized_storage(self.rows, self.cols, self.bits, n_scalars=int(self.bits == 1))

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


def gradual_sparsity(
    progress: float, final: float, begin: float = 0.0, end: float = 0.6, initial: float = 0.0
) -> float:
    r"""Zhu & Gupta (2017) cubic schedule, in training progress rather than steps:

    :math:`s(p) = s_f + (s_i - s_f)\left(1 - \frac{p - p_b}{p_e - p_b}\right)^3` for
    :math:`p_b \le p \le p_e`; :math:`s_i` before, :math:`s_f` after.
    """
    if progress <= begin:
        return initial
    if progress >= end or end <= begin:
        return final
    frac = (progress - begin) / (end - begin)
    return final + (initial - final) * (1.0 - frac) ** 3


class MagnitudePruner(WeightQuantizer):
    r"""Unstructured magnitude pruning with a gradual schedule (Zhu & Gupta 2017).

    Forward: :math:`\hat W = P \odot W`, :math:`P` keeping the :math:`(1-s)n` largest
    :math:`|W|` of the layer, where :math:`s` follows :func:`gradual_sparsity`. Pruned
    weights get zero gradient (:math:`\partial \hat W/\partial W = P`), so they stay pruned
    once the schedule ends. Kept values are stored at full precision.
    """

    method = "magnitude"

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        sparsity: float = 0.9,
        begin: float = 0.0,
        end: float = 0.6,
    ):
        super().__init__(weight)
        if not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
        if not 0.0 <= begin <= end <= 1.0:
            raise ValueError(f"need 0 <= begin <= end <= 1, got begin={begin}, end={end}")
        self.sparsity, self.begin, self.end = sparsity, begin, end
        self.register_buffer("keep", torch.ones(weight.shape, dtype=torch.bool))
        self.register_buffer("mask_frozen", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def set_progress(self, progress: float, weight: torch.Tensor) -> None:
        if bool(self.mask_frozen):
            return
        s = gradual_sparsity(progress, self.sparsity, self.begin, self.end)
        n_pruned = round(s * self.n_weights)
        keep = torch.ones(self.n_weights, dtype=torch.bool, device=weight.device)
        if n_pruned:
            keep[weight.detach().abs().reshape(-1).argsort()[:n_pruned]] = False
        self.keep.copy_(keep.view(self.shape))

    def freeze_mask(self, weight: torch.Tensor) -> None:
        self.mask_frozen.fill_(True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.keep

    def storage(self, weight: torch.Tensor) -> LayerStorage:
        nnz = int(self.keep.sum())
        return sparse_storage(self.rows, self.cols, nnz, value_bits=FP32_BITS)

    def describe(self, weight: torch.Tensor) -> dict:
        return {"sparsity": 1.0 - float(self.keep.float().mean())}

    def extra_repr(self) -> str:
        return f"sparsity={self.sparsity}, schedule=[{self.begin}, {self.end}]"


class PruneQuantizer(MagnitudePruner):
    r"""Magnitude pruning, then k-bit quantization of the kept weights (Han et al. 2016).

    Pruning follows :class:`MagnitudePruner`; once training progress reaches
    ``quant_start`` (by default the end of the pruning schedule) the kept weights are
    quantized per output channel: for ``bits = 1``,
    :math:`\hat W_c = P_c \odot \alpha_c \operatorname{sign}(W_c)` with
    :math:`\alpha_c = \operatorname{mean}_{P_c}|W_c|`; for ``bits ≥ 2``, symmetric uniform
    levels :math:`\alpha_c (2c - L)/L`, :math:`L = 2^k - 1`, with
    :math:`\alpha_c = \max_{P_c}|W_c|` (zero is encoded by the mask, not by a level).
    Straight-through for ``W`` on kept weights.
    """

    method = "prune_quant"

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        sparsity: float = 0.9,
        bits: int = 1,
        begin: float = 0.0,
        end: float = 0.6,
        quant_start: float | None = None,
    ):
        super().__init__(weight, sparsity=sparsity, begin=begin, end=end)
        if not 1 <= bits <= 8:
            raise ValueError(f"bits must lie in 1..8, got {bits}")
        self.bits = bits
        self.quant_start = end if quant_start is None else quant_start
        self.register_buffer("quantizing", torch.zeros((), dtype=torch.bool))

    def set_progress(self, progress: float, weight: torch.Tensor) -> None:
        super().set_progress(progress, weight)
        self.quantizing.fill_(progress >= self.quant_start)

    def scale(self, weight: torch.Tensor) -> torch.Tensor:
        kept = (weight.abs() * self.keep).reshape(self.rows, -1)
        count = self.keep.reshape(self.rows, -1).sum(1).clamp_min(1)
        if self.bits == 1:
            s = kept.sum(1) / count
        else:
            s = kept.max(1).values
        return _channel_view(s.clamp_min(1e-12), weight.dim())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not bool(self.quantizing):
            return weight * self.keep
        a = self.scale(weight)
        if self.bits == 1:
            q = a * _sign(weight)
        else:
            levels = (1 << self.bits) - 1
            x = ((weight / a).clamp(-1, 1) + 1) / 2
            q = a * (2 * torch.round(x * levels) / levels - 1)
        return _ste(q, weight) * self.keep

    def storage(self, weight: torch.Tensor) -> LayerStorage:
        nnz = int(self.keep.sum())
        if not bool(self.quantizing):
            return super().storage(weight)
        return sparse_storage(self.rows, self.cols, nnz, value_bits=self.bits, n_scalars=self.rows)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bits={self.bits}, quant_start={self.quant_start}"

