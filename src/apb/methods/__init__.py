"""Compression methods behind one interface, addressable by name.

>>> method = apb.methods.create("apb", fp_fraction=0.01, act_bits=2)
>>> method.prepare(model)        # or: apb.compress_(model, APBConfig(fp_fraction=0.01))

Post-training methods (OBC, post-training APB) compress a trained model from calibration
data instead: ``apb.methods.ptq_(model, OBCConfig(mode="prune", sparsity=0.5), batches)``.
Filter pruning of trained binary / DoReFa networks lives in :mod:`apb.prune`.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from .apb import APBConfig, APBMethod
from .apb_ptq import APBPTQConfig, APBPTQMethod
from .base import CompressionConfig, FilterFn, Method, select_layers
from .bnn import BNNConfig, BNNMethod
from .dorefa import DoReFaConfig, DoReFaMethod
from .fp import FPMethod
from .magnitude import MagnitudeConfig, MagnitudeMethod, PruneQuantConfig, PruneQuantMethod
from .obc import OBCConfig, OBCMethod
from .obc_layer import OBCError
from .ptq import PostTrainingMethod, PTQConfig, PTQReport, post_training_method, ptq_

_REGISTRY: dict[str, type[Method]] = {
    m.name: m
    for m in (FPMethod, BNNMethod, APBMethod, DoReFaMethod, MagnitudeMethod, PruneQuantMethod)
}
_POST_TRAINING: dict[str, type[PostTrainingMethod]] = {
    m.name: m for m in (OBCMethod, APBPTQMethod)
}

__all__ = [
    "APBConfig", "APBPTQConfig", "BNNConfig", "CompressionConfig", "DoReFaConfig",
    "MagnitudeConfig", "Method", "OBCConfig", "OBCError", "PTQConfig", "PTQReport",
    "PruneQuantConfig", "available", "available_post_training", "compress_", "config_class",
    "create", "is_post_training", "post_training_method", "ptq_", "select_layers",
]


def available() -> list[str]:
    """Names of the training methods (``apb train --method``)."""
    return list(_REGISTRY)


def available_post_training() -> list[str]:
    """Names of the post-training methods (:func:`ptq_`); :func:`create` accepts them too."""
    return list(_POST_TRAINING)


def is_post_training(name: str) -> bool:
    """Whether method ``name`` compresses after training (:func:`ptq_`) rather than in it."""
    return name in _POST_TRAINING


def _method_class(name: str) -> type[Method]:
    cls = _REGISTRY.get(name) or _POST_TRAINING.get(name)
    if cls is None:
        raise ValueError(
            f"unknown method {name!r}; available: {', '.join(available())}"
        )
    return cls


def config_class(name: str) -> type[CompressionConfig]:
    """The configuration dataclass of method ``name``."""
    return _method_class(name).config_class


def create(name: str, **options) -> Method:
    """A method by name, its configuration fields set from ``options``."""
    cls = _method_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"method {name!r} has no option(s) {', '.join(unknown)}; "
            f"its options are: {', '.join(sorted(fields))}"
        )
    return cls(cls.config_class(**options))


def compress_(
    model: nn.Module, config: CompressionConfig, filter_fn: FilterFn | None = None
) -> nn.Module:
    """Rewrite ``model``'s ``Conv2d``/``Linear`` layers in place for the method ``config``
    belongs to; ``filter_fn(module, name)`` picks layers (default: all but the first layer
    and the classifier). Returns the model."""
    if isinstance(config, PTQConfig):
        raise TypeError(f"{type(config).__name__} is a post-training configuration: use "
                        "apb.methods.ptq_(model, config, calibration_batches)")
    for cls in _REGISTRY.values():
        if type(config) is cls.config_class and cls is not FPMethod:
            method = cls(config)
            break
    else:
        if type(config) is CompressionConfig:
            method = FPMethod(config)
        else:
            raise TypeError(f"no method takes a {type(config).__name__}")
    return method.prepare(model, filter_fn)
