"""APB: Automatic Prune Binarization (docs/design.md §1); the quantizer is apb.nn.APBWeightQuantizer."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..memory import FP16_BITS, FP32_BITS
from ..nn import APBWeightQuantizer, compressed_layers
from .base import CompressionConfig, FilterFn, Method


@dataclass
class APBConfig(CompressionConfig):
    """APB options.

    Attributes:
        per_channel: one ``α, δ`` per output channel instead of per layer.
        grad: ``"ours"`` or ``"paper"`` surrogate gradients for ``α, δ``.
        fp_fraction: budget mode: the fraction of weights kept at full precision.
        bits_per_weight: budget mode: bits per weight of the compressed layers.
        budget_scope: ``"layer"`` (every layer meets the budget) or ``"model"`` (one
            threshold over all compressed layers meets it in total).
        value_bits: storage of full-precision values: 32 or 16.
        delta_init: ``δ`` starts at ``delta_init · std(W)`` when it is learned.
        fp_penalty: when δ is learned, the price λ of a memory term λ·(full-precision
            fraction) added to the loss; the knob between memory and accuracy.
    """

    per_channel: bool = False
    grad: str = "ours"
    fp_fraction: float | None = None
    bits_per_weight: float | None = None
    budget_scope: str = "layer"
    value_bits: int = FP32_BITS
    delta_init: float = 3.0
    fp_penalty: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.grad not in ("ours", "paper"):
            raise ValueError(f"grad must be 'ours' or 'paper', got {self.grad!r}")
        if self.fp_fraction is not None and self.bits_per_weight is not None:
            raise ValueError("give either fp_fraction or bits_per_weight, not both")
        if self.fp_fraction is not None and not 0.0 <= self.fp_fraction <= 1.0:
            raise ValueError(f"fp_fraction must lie in [0, 1], got {self.fp_fraction}")
        if self.bits_per_weight is not None and self.bits_per_weight <= 1.0:
            raise ValueError(
                f"bits_per_weight must exceed 1 (every weight keeps its sign bit), "
                f"got {self.bits_per_weight}"
            )
        if self.budget_scope not in ("layer", "model"):
            raise ValueError(f"budget_scope must be 'layer' or 'model', got {self.budget_scope!r}")
        if self.value_bits not in (FP32_BITS, FP16_BITS):
            raise ValueError(f"value_bits must be 32 or 16, got {self.value_bits}")
        if self.fp_penalty < 0:
            raise ValueError(f"fp_penalty must be >= 0, got {self.fp_penalty}")
        if self.fp_penalty and (self.fp_fraction is not None or self.bits_per_weight is not None):
            raise ValueError("fp_penalty applies to a learned delta; a budget fixes the "
                             "full-precision count already")
        if self.delta_init <= 0:
            raise ValueError(f"delta_init must be positive, got {self.delta_init}")


class APBMethod(Method):
    name = "apb"
    config_class = APBConfig

    @property
    def _model_budget(self) -> bool:
        c = self.config
        return c.budget_scope == "model" and (
            c.fp_fraction is not None or c.bits_per_weight is not None
        )

    def make_weight_quantizer(self, weight):
        c = self.config
        budget = (
            {"shared_budget": True} if self._model_budget
            else {"fp_fraction": c.fp_fraction, "bits_per_weight": c.bits_per_weight}
        )
        return APBWeightQuantizer(
            weight, per_channel=c.per_channel, grad=c.grad, value_bits=c.value_bits,
            delta_init=c.delta_init, fp_penalty=c.fp_penalty, **budget,
        )

    def prepare(self, model: nn.Module, filter_fn: FilterFn | None = None) -> nn.Module:
        super().prepare(model, filter_fn)
        if self._model_budget:
            apply_model_budget(model, self.config)
        return model

    def on_step(self, model: nn.Module, progress: float) -> None:
        if self._model_budget:
            apply_model_budget(model, self.config)

    def finalize(self, model: nn.Module) -> None:
        if self._model_budget:
            apply_model_budget(model, self.config)
        super().finalize(model)


@torch.no_grad()
def apply_model_budget(model: nn.Module, config: APBConfig) -> list[int]:
    """Rank the weights of all APB layers together by normalised distance from the band
    centre and give each layer its share of the full-precision weights, so that the model
    as a whole keeps ``fp_fraction`` of its compressed weights at full precision, or meets
    ``bits_per_weight``. Returns the per-layer full-precision counts."""
    pairs = [
        (layer.weight_quantizer, layer.weight) for _, layer in compressed_layers(model)
        if isinstance(layer.weight_quantizer, APBWeightQuantizer)
        and not bool(layer.weight_quantizer.mask_frozen)
    ]
    if not pairs:
        return []
    layers = [q for q, _ in pairs]
    u = torch.cat([q.normalized_distance(w).reshape(-1).float().cpu() for q, w in pairs])
    total = u.numel()
    ends = torch.tensor([q.n_weights for q in layers]).cumsum(0)

    def total_bits_for(per_layer: list[int]) -> int:
        return sum(q._storage_for(n).total_bits for q, n in zip(layers, per_layer))

    if config.fp_fraction is not None:
        k_max = round(config.fp_fraction * total)
    else:
        budget = config.bits_per_weight * total
        spare = budget - total_bits_for([0] * len(layers))
        if spare < 0:
            raise ValueError(
                f"bits_per_weight={config.bits_per_weight} is below what the binary part "
                f"alone needs ({(budget - spare) / total:.4f} bits/weight for this model)"
            )
        # Each full-precision weight costs at least its value's bits: no more than this many
        # fit, so only the k_max most distant weights need ranking (this runs every step).
        k_max = min(total, int(spare // min(q.value_bits for q in layers)))
    # owner of the k-th most distant weight, k < k_max
    owner = torch.bucketize(u.topk(k_max).indices, ends, right=True)

    def counts(k: int) -> list[int]:
        return torch.bincount(owner[:k], minlength=len(layers)).tolist()

    def total_bits(k: int) -> int:
        return total_bits_for(counts(k))

    if config.fp_fraction is not None:
        k = k_max
    else:
        lo, hi = 0, k_max
        while lo < hi:  # the largest k whose total bits fit the budget
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if total_bits(mid) <= budget else (lo, mid - 1)
        k = lo
    per_layer = counts(k)
    for q, n in zip(layers, per_layer):
        q.budget_nnz.fill_(n)
    return per_layer
