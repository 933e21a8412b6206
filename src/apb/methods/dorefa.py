"""DoReFa k-bit weights baseline."""

from __future__ import annotations

from dataclasses import dataclass

from ..nn import DoReFaWeightQuantizer
from .base import CompressionConfig, Method


@dataclass
class DoReFaConfig(CompressionConfig):
    """Attributes:
    bits: weight precision, 1 to 8 (2 is the usual DoReFa baseline).
    """

    bits: int = 2

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits must lie in 1..8, got {self.bits}")


class DoReFaMethod(Method):
    name = "dorefa"
    config_class = DoReFaConfig

    def make_weight_quantizer(self, weight):
        return DoReFaWeightQuantizer(weight, bits=self.config.bits)
