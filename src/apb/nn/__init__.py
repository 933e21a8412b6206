"""Quantizers and compressed layers used in training."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from .act_quantizers import SignActivation, UniformActivation, make_act_quantizer
from .apb_quantizer import APBQuantize, APBWeightQuantizer
from .attention import SplitMultiheadAttention, split_attention_
from .baseline_quantizers import (
    BinaryWeightQuantizer,
    DoReFaWeightQuantizer,
    MagnitudePruner,
    PruneQuantizer,
    gradual_sparsity,
)
from .layers import COMPRESSED_TYPES, APBConv2d, APBLinear, QuantConv2d, QuantLinear
from .obc_quantizer import OBCWeightQuantizer
from .weight_quantizer import WeightQuantizer

SCALE_PARAMETER_NAMES = ("alpha", "delta", "act_scale")

__all__ = [
    "APBConv2d", "APBLinear", "APBQuantize", "APBWeightQuantizer", "BinaryWeightQuantizer",
    "DoReFaWeightQuantizer", "MagnitudePruner", "OBCWeightQuantizer", "PruneQuantizer",
    "QuantConv2d", "QuantLinear", "SignActivation", "SplitMultiheadAttention",
    "UniformActivation", "WeightQuantizer", "compressed_layers", "freeze_masks",
    "freeze_scales", "gradual_sparsity", "make_act_quantizer", "scale_parameters",
    "split_attention_",
]


def compressed_layers(model: nn.Module) -> Iterator[tuple[str, QuantConv2d | QuantLinear]]:
    """``(name, layer)`` for every compressed layer, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, COMPRESSED_TYPES):
            yield name, module


def scale_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The learned quantizer scales (``α``, ``δ``, activation clips): they get their own
    optimizer, learning rate and weight decay (docs/design.md §1)."""
    return [
        (name, p) for name, p in model.named_parameters()
        if name.rsplit(".", 1)[-1] in SCALE_PARAMETER_NAMES
    ]


def freeze_scales(model: nn.Module) -> None:
    """Stop learning ``α`` and ``δ`` in every compressed layer (idempotent)."""
    for _, layer in compressed_layers(model):
        layer.weight_quantizer.freeze_scales()


def freeze_masks(model: nn.Module) -> None:
    """Fix which weights are binary (APB) or pruned from now on (idempotent)."""
    for _, layer in compressed_layers(model):
        layer.weight_quantizer.freeze_mask(layer.weight)
