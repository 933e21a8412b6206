"""Unstructured magnitude pruning with a gradual schedule, and pruning then quantization."""

from __future__ import annotations

from dataclasses import dataclass

from ..nn import MagnitudePruner, PruneQuantizer
from .base import CompressionConfig, Method


@dataclass
class MagnitudeConfig(CompressionConfig):
    """Attributes:
    sparsity: final fraction of pruned weights in every compressed layer.
    prune_begin, prune_end: training progress (0..1) where the cubic schedule runs.
    """

    sparsity: float = 0.9
    prune_begin: float = 0.0
    prune_end: float = 0.6

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got {self.sparsity}")
        if not 0.0 <= self.prune_begin <= self.prune_end <= 1.0:
            raise ValueError("need 0 <= prune_begin <= prune_end <= 1")


class MagnitudeMethod(Method):
    name = "magnitude"
    config_class = MagnitudeConfig

    def make_weight_quantizer(self, weight):
        c = self.config
        return MagnitudePruner(weight, sparsity=c.sparsity, begin=c.prune_begin, end=c.prune_end)


@dataclass
class PruneQuantConfig(MagnitudeConfig):
    """Attributes:
    bits: precision of the kept weights after pruning (1 = binary with per-channel scale).
    quant_start: training progress where quantization starts (default: prune_end).
    """

    bits: int = 1
    quant_start: float | None = None

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must lie in 1..8, got {self.bits}")
        if self.quant_start is not None and not 0.0 <= self.quant_start <= 1.0:
            raise ValueError(f"quant_start must lie in [0, 1], got {self.quant_start}")


class PruneQuantMethod(Method):
    name = "prune_quant"
    config_class = PruneQuantConfig

    def make_weight_quantizer(self, weight):
        c = self.config
        return PruneQuantizer(
            weight, sparsity=c.sparsity, bits=c.bits, begin=c.prune_begin, end=c.prune_end,
            quant_start=c.quant_start,
        )
