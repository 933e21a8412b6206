"""Compression methods behind one interface, addressable by name.

>>> method = apb.methods.create("apb", fp_fraction=0.01, act_bits=2)
>>> method.prepare(model)        # or: apb.compress_(model, APBConfig(fp_fraction=0.01))
"""

from __future__ import annotations

import dataclasses

from torch import nn

from .apb import APBConfig, APBMethod
from .base import CompressionConfig, FilterFn, Method, select_layers
from .bnn import BNNConfig, BNNMethod
from .dorefa import DoReFaConfig, DoReFaMethod
from .fp import FPMethod
from .magnitude import MagnitudeConfig, MagnitudeMethod, PruneQuantConfig, PruneQuantMethod

_REGISTRY: dict[str, type[Method]] = {
    m.name: m
    for m in (FPMethod, BNNMethod, APBMethod, DoReFaMethod, MagnitudeMethod, PruneQuantMethod)
}

__all__ = [
    "APBConfig", "BNNConfig", "CompressionConfig", "DoReFaConfig", "MagnitudeConfig", "Method",
    "PruneQuantConfig", "available", "compress_", "config_class", "create", "select_layers",
]


def available() -> list[str]:
    """Names accepted by :func:`create`."""
    return list(_REGISTRY)


def _method_class(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; available: {', '.join(available())}"
        ) from None


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
