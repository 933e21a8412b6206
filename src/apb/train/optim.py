"""The two optimizers of a run and their per-step learning-rate schedules (docs/design.md §1).

The quantizer scales (``α``, ``δ``, activation clips: :func:`apb.nn.scale_parameters`) learn
with their own Adam, learning rate and weight decay, ``δ`` with a weight decay of its own;
every other parameter goes to the main optimizer (Adam or SGD).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..nn import scale_parameters
from .config import TrainConfig


def build_optimizers(
    model: nn.Module, config: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """``(main, scales)``; ``scales`` is None when the model has no quantizer scales."""
    scales = scale_parameters(model)
    scale_ids = {id(p) for _, p in scales}
    main_params = [
        p for p in model.parameters() if id(p) not in scale_ids and p.requires_grad
    ]
    if not main_params:
        raise ValueError("the model has no trainable parameters besides quantizer scales")
    if config.optimizer == "sgd":
        main = torch.optim.SGD(
            main_params, lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    else:
        main = torch.optim.Adam(main_params, lr=config.lr, weight_decay=config.weight_decay)
    deltas = [p for name, p in scales if name.endswith("delta")]
    others = [p for name, p in scales if not name.endswith("delta")]
    groups = [
        {"params": params, "weight_decay": decay}
        for params, decay in ((others, config.scale_weight_decay),
                              (deltas, config.delta_weight_decay))
        if params
    ]
    scale_opt = torch.optim.Adam(groups, lr=config.scale_lr) if groups else None
    return main, scale_opt


def warmup_cosine(total_steps: int, warmup_steps: int, cosine: bool) -> Callable[[int], float]:
    r"""The learning-rate factor at optimizer step :math:`t` of :math:`T`, with :math:`W`
    warm-up steps: :math:`(t+1)/W` while :math:`t < W`, then
    :math:`\tfrac12\bigl(1 + \cos(\pi (t - W)/(T - W))\bigr)` (``cosine``) or 1.

    A plain function, so ``LambdaLR.state_dict`` leaves it out: a run resumed with another
    number of epochs follows the new schedule from the step it stopped at.
    """
    span = max(1, total_steps - warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> LambdaLR:
    """A per-step schedule over ``config.epochs * steps_per_epoch`` steps."""
    factor = warmup_cosine(
        total_steps=config.epochs * steps_per_epoch,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        cosine=config.scheduler == "cosine",
    )
    return LambdaLR(optimizer, factor)
