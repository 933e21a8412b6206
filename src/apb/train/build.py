"""Building the model a run trains, the same way at the start and when read back from a
checkpoint: ``models.create`` → ``method.prepare`` → (load state) → re-apply freezes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .. import methods, models
from ..nn import freeze_masks, freeze_scales
from .config import TrainConfig

FREEZES: dict[str, Callable[[nn.Module], None]] = {
    "freeze_scales": freeze_scales,
    "freeze_masks": freeze_masks,
}
"""Freeze events by name; each is idempotent and keeps its state in ``requires_grad`` or
buffers, so a resumed run re-applies the ones that happened before it stopped."""


def model_kwargs_for(
    model: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    activation: str,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``apb.models.create(model, ...)`` for a dataset with
    ``input_shape`` (C, H, W) and ``num_classes``; ``options`` override them.

    Every model of the zoo takes ``num_classes``, ``activation`` and ``in_channels``; ``mlp``
    takes its flattened input size instead, and ``lenet5`` and the ResNets (every builder with
    an ``input_size`` argument) their (square) image side.
    """
    c, h, w = (int(v) for v in input_shape)
    kwargs: dict[str, Any] = {"num_classes": int(num_classes), "activation": activation}
    if model == "mlp":
        kwargs.update(in_features=c * h * w, input_shape=[c, h, w])
    else:
        kwargs["in_channels"] = c
        if "input_size" in models.parameters(model):
            if h != w:
                raise ValueError(f"{model} takes square images, the dataset's are {h}x{w}")
            kwargs["input_size"] = h
    kwargs.update(options or {})
    return kwargs


def build_model(
    model: str, model_kwargs: dict[str, Any], method: str, method_options: dict[str, Any]
) -> tuple[nn.Module, methods.Method]:
    """``(model, method)``: the architecture built and rewritten in place by the method."""
    net = models.create(model, **model_kwargs)
    compression = methods.create(method, **method_options)
    net = compression.prepare(net)
    return net, compression


def freezes_due(config: TrainConfig, epoch: int) -> list[str]:
    """The freezes in force during ``epoch`` (each happens at the start of its epoch)."""
    due = []
    if config.freeze_scales_epoch is not None and epoch >= config.freeze_scales_epoch:
        due.append("freeze_scales")
    if config.freeze_masks_epoch is not None and epoch >= config.freeze_masks_epoch:
        due.append("freeze_masks")
    return due


def freeze_epoch(config: TrainConfig, name: str) -> int | None:
    return {"freeze_scales": config.freeze_scales_epoch,
            "freeze_masks": config.freeze_masks_epoch}[name]
