"""Pieces shared by every architecture: the activation factory and argument checks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS = ("relu", "hardtanh")
"""Activation names accepted by every model's ``activation=`` argument.

``"hardtanh"`` (clip to [-1, 1]) is the one to use ahead of 1-bit or 2-bit activation
quantizers: it is symmetric around zero, whereas after a ReLU every activation is >= 0 and a
sign quantizer would map all of them to +1.
"""


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name`` in :data:`ACTIVATIONS`.

    Each call returns a new, not-in-place module, so every position in a network owns its
    activation (compression passes may replace or hook them one by one).
    """
    if name == "relu":
        return nn.ReLU()
    if name == "hardtanh":
        return nn.Hardtanh(-1.0, 1.0)
    raise ValueError(f"unknown activation {name!r}; expected one of: {', '.join(ACTIVATIONS)}")


def check_activation(name: str) -> str:
    """Validate ``name`` up front, before any layer is built; returns it unchanged."""
    if name not in ACTIVATIONS:
        make_activation(name)  # raises the ValueError with the list of choices
    return name


def check_positive_int(value: object, what: str) -> int:
    """``value`` if it is an int >= 1 (bool excluded), else a ``ValueError`` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


def check_widths(widths: object, count: int, what: str) -> tuple[int, ...]:
    """``widths`` as a tuple of ``count`` positive ints, else a ``ValueError`` naming ``what``
    (a JSON list from a checkpoint is accepted as well as a tuple)."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise ValueError(f"{what} must be a sequence of {count} channel counts, got {widths!r}")
    if len(widths) != count:
        raise ValueError(f"{what} must hold {count} channel counts, got {len(widths)}: "
                         f"{list(widths)!r}")
    return tuple(check_positive_int(w, f"every entry of {what}") for w in widths)


def init_weights(model: nn.Module) -> None:
    """He (fan-out) initialisation for convolutions, unit scale / zero shift for BatchNorm.

    Linear layers keep PyTorch's default. Uses the global torch RNG: seed it to reproduce.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
