"""Full precision: the reference every method is measured against (no rewrite)."""

from __future__ import annotations

from .base import CompressionConfig, Method


class FPMethod(Method):
    name = "fp"
    config_class = CompressionConfig

    def make_weight_quantizer(self, weight):
        return None
