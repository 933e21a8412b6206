"""Model registry: build any architecture of ``apb.models`` by its name.

>>> import apb.models
>>> model = apb.models.create("resnet20", num_classes=10, activation="hardtanh")
>>> "lenet5" in apb.models.available()
True

A builder is a function returning an ``nn.Module`` whose every argument is a keyword with a
default; :func:`register` adds it under its function name (or an explicit ``name=``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TypeVar

from torch import nn

ModelBuilder = Callable[..., nn.Module]
_Builder = TypeVar("_Builder", bound=ModelBuilder)

_BUILDERS: dict[str, ModelBuilder] = {}


def register(builder: _Builder | None = None, *, name: str | None = None):
    """Register ``builder`` under ``name`` (default: its ``__name__``); usable as a decorator.

    ``@register`` and ``@register(name="other")`` both work. Registering a second builder
    under a taken name raises ``ValueError``, so two families cannot silently shadow each other.
    """

    def add(fn: _Builder) -> _Builder:
        key = name if name is not None else fn.__name__
        if not isinstance(key, str) or not key:
            raise ValueError(f"a model name must be a non-empty string, got {key!r}")
        if key in _BUILDERS and _BUILDERS[key] is not fn:
            raise ValueError(f"a model named {key!r} is already registered")
        _BUILDERS[key] = fn
        return fn

    if builder is not None:
        return add(builder)
    return add


def available() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(_BUILDERS)


def parameters(name: str) -> list[str]:
    """The keyword arguments the builder of ``name`` accepts (``ValueError`` if unknown)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available())}")
    return list(inspect.signature(_BUILDERS[name]).parameters)


def create(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with the builder's keyword arguments ``kwargs``.

    The model records ``apb_architecture = {"name": name, "kwargs": kwargs}``, which
    :func:`apb.pack.save_packed` writes into the file to rebuild it.

    Raises ``ValueError`` for an unknown name (the message lists the available ones) or an
    invalid argument value, and ``TypeError`` for a keyword the builder does not accept (the
    message lists those it does).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available())}")
    builder = _BUILDERS[name]
    signature = inspect.signature(builder)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        accepted = ", ".join(signature.parameters) or "(none)"
        raise TypeError(
            f"model {name!r} got invalid keyword arguments {sorted(kwargs)}: {err}; "
            f"it accepts: {accepted}"
        ) from None
    model = builder(**kwargs)
    # What built it, so a packed file can name its architecture (apb.pack.save_packed).
    model.apb_architecture = {"name": name, "kwargs": dict(kwargs)}
    return model
