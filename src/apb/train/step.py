"""One optimisation step, the same for training, fine-tuning and filter pruning's proxy."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def train_step(
    net: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] = (),
    *,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward ``inputs``, cross-entropy against ``labels``, clear the gradients, backward,
    step every optimizer, then every per-step scheduler. Returns ``(loss, logits)``,
    detached. ``net`` is in training mode already (the caller decides, once per epoch)."""
    logits = net(inputs)
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    optimizer_step(loss, optimizers, schedulers)
    return loss.detach(), logits.detach()


def optimizer_step(
    loss: torch.Tensor,
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler] = (),
) -> None:
    """Clear the gradients, backward ``loss``, step every optimizer, then every per-step
    scheduler."""
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
    for scheduler in schedulers:
        scheduler.step()
