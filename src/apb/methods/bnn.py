"""Binary weights with a mean-magnitude scale (XNOR-Net style baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from ..nn import BinaryWeightQuantizer
from .base import CompressionConfig, Method


@dataclass
class BNNConfig(CompressionConfig):
    """Attributes:
    per_channel: one scale ``α_c = mean|W_c|`` per output channel (else one per layer).
    """

    per_channel: bool = True


class BNNMethod(Method):
    name = "bnn"
    config_class = BNNConfig

    def make_weight_quantizer(self, weight):
        return BinaryWeightQuantizer(weight, per_channel=self.config.per_channel)
