"""Dataset registry: ``load(name, data_dir, **kwargs)`` returns a :class:`DataSplit`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from apb.data.datasplit import DataSplit

DatasetLoader = Callable[..., DataSplit]

_LOADERS: dict[str, DatasetLoader] = {}


def register(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator adding a loader ``fn(data_dir, **options) -> DataSplit`` under ``name``."""

    def add(loader: DatasetLoader) -> DatasetLoader:
        if name in _LOADERS and _LOADERS[name] is not loader:
            raise ValueError(f"a dataset named {name!r} is already registered")
        _LOADERS[name] = loader
        return loader

    return add


def available() -> list[str]:
    """Names accepted by :func:`load`, sorted."""
    return sorted(_LOADERS)


def load(name: str, data_dir: str | Path | None = None, **kwargs) -> DataSplit:
    """Load dataset ``name``; ``data_dir`` is where its files are (ignored by the datasets
    shipped inside installed packages, ``mnist5k`` and ``digits``). Nothing is ever downloaded.

    Raises ``ValueError`` for an unknown name (listing the available ones), ``TypeError`` for an
    option the loader does not take (listing those it does), and :class:`DataError` when the
    files are missing or malformed.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available datasets: {', '.join(available())}")
    loader = _LOADERS[name]
    signature = inspect.signature(loader)
    try:
        signature.bind(data_dir, **kwargs)
    except TypeError as err:
        options = [p for p in signature.parameters if p != "data_dir"]
        raise TypeError(
            f"dataset {name!r} got invalid options {sorted(kwargs)}: {err}; "
            f"it accepts: {', '.join(options) or '(none)'}"
        ) from None
    return loader(data_dir, **kwargs)
