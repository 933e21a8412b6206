"""The interface every compression method implements, and the in-place rewrite it shares."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

from torch import nn

from ..nn import compressed_layers, freeze_masks, make_act_quantizer
from ..nn.attention import split_attention_
from ..nn.layers import QuantConv2d, QuantLinear
from ..nn.weight_quantizer import WeightQuantizer
from ..summary import summary

FilterFn = Callable[[nn.Module, str], bool]


@dataclass
class CompressionConfig:
    """Fields every method shares.

    Attributes:
        act_bits: precision of the inputs of compressed layers: 32 (full precision),
            2 (unsigned uniform, learned clip) or 1 (sign).
        keep_first: leave the first Conv2d/Linear (the one that sees the input) at full
            precision, as binary-network practice does.
        keep_last: leave the classifier (the last Linear) at full precision.
    """

    act_bits: int = 32
    keep_first: bool = True
    keep_last: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the first field out of range. Every float field must be
        finite (checked first: NaN passes any comparison-based range check)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        if self.act_bits not in (1, 2, 32):
            raise ValueError(f"act_bits must be 1, 2 or 32, got {self.act_bits}")

    def to_dict(self) -> dict:
        return asdict(self)


class Method:
    """A compression method: ``prepare`` rewrites the model, the trainer calls ``on_step``
    before each training step and ``finalize`` at the end, ``stats`` reports memory."""

    name = "?"
    config_class: type[CompressionConfig] = CompressionConfig

    def __init__(self, config: CompressionConfig | None = None):
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"method {self.name!r} takes a {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        config.validate()
        self.config = config

    def make_weight_quantizer(self, weight) -> WeightQuantizer | None:
        """The quantizer for one layer's weight, or None to leave the layer alone."""
        raise NotImplementedError

    def prepare(self, model: nn.Module, filter_fn: FilterFn | None = None) -> nn.Module:
        """Rewrite the selected ``Conv2d``/``Linear`` modules of ``model`` in place; every
        ``nn.MultiheadAttention`` first becomes an equivalent module with separate projection
        layers (:func:`apb.nn.attention.split_attention_`), so that they can be selected."""
        split_attention_(model)
        targets = select_layers(model, self.config, filter_fn)
        for name in targets:
            module = model.get_submodule(name)
            wq = self.make_weight_quantizer(module.weight)
            if wq is None:
                continue
            aq = make_act_quantizer(self.config.act_bits)
            cls = QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear
            model.set_submodule(name, cls.from_float(module, wq, aq))
        return model

    def on_step(self, model: nn.Module, progress: float) -> None:
        for _, layer in compressed_layers(model):
            layer.weight_quantizer.set_progress(progress, layer.weight)

    def finalize(self, model: nn.Module) -> None:
        freeze_masks(model)

    def stats(self, model: nn.Module) -> dict:
        s = summary(model)
        return {
            "bits_per_weight": s.bits_per_weight,
            "fp_fraction": s.fp_fraction,
            "model_bytes": s.model_bytes,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def select_layers(
    model: nn.Module, config: CompressionConfig, filter_fn: FilterFn | None = None
) -> list[str]:
    """Names of the plain ``Conv2d``/``Linear`` modules to compress, in module order.

    With ``filter_fn(module, name)`` given, it alone decides; otherwise the first layer
    and the classifier (last ``Linear``) are skipped per ``keep_first``/``keep_last``.
    """
    candidates = [
        (name, m) for name, m in model.named_modules()
        if type(m) in (nn.Conv2d, nn.Linear)
    ]
    if filter_fn is not None:
        return [name for name, m in candidates if filter_fn(m, name)]
    skip = set()
    if config.keep_first and candidates:
        skip.add(candidates[0][0])
    linears = [name for name, m in candidates if type(m) is nn.Linear]
    if config.keep_last and linears:
        skip.add(linears[-1])
    return [name for name, _ in candidates if name not in skip]

