"""Evaluating a classifier: accuracy, mean cross-entropy and, when asked, the predictions.

One loop (:func:`_evaluation_sums`) serves the trainer (sharded over ranks), the jobs that
measure a stored model (:func:`predict`) and filter pruning's proxy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import distributed
from .distributed import DistContext


def evaluate(
    model: nn.Module,
    data: Dataset | DataLoader,
    batch_size: int = 256,
    *,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """``(accuracy, mean cross-entropy)`` of ``model`` in eval mode over ``data``, a dataset
    of ``(input, label)`` pairs or any iterable of ``(inputs, labels)`` batches.

    ``device`` defaults to the model's. The model's train/eval mode is restored afterwards.
    """
    loader = _batches(data, batch_size)
    device = model_device(model) if device is None else torch.device(device)
    return accuracy_and_loss(_evaluation_sums(model, loader, device))


def predict(
    model: nn.Module, data: Dataset | DataLoader, batch_size: int = 256
) -> tuple[np.ndarray, float]:
    """``(int64 argmax predictions in data order, accuracy)`` of ``model`` in eval mode.

    Raises ``ValueError`` when the model refuses the inputs' shape or ``data`` is empty.
    """
    predictions: list[torch.Tensor] = []
    try:
        sums = _evaluation_sums(model, _batches(data, batch_size), model_device(model),
                                predictions)
    except RuntimeError as err:  # a shape torch's own layers refuse
        raise ValueError(f"the model cannot take this dataset's inputs: {err}") from None
    accuracy, _ = accuracy_and_loss(sums)
    return np.asarray(torch.cat(predictions).cpu().numpy(), dtype=np.int64), accuracy


def evaluate_sharded(
    model: nn.Module, dataset: Dataset, batch_size: int, ctx: DistContext
) -> tuple[float, float]:
    """:func:`evaluate` over the whole ``dataset`` with each rank taking every
    ``world_size``-th sample (no padding, so no sample counts twice) and summing over ranks."""
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False)
    sums = _evaluation_sums(model, loader, ctx.device)
    return accuracy_and_loss(distributed.all_reduce_sum(ctx, sums))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with none)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def _batches(data: Dataset | DataLoader, batch_size: int):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


@torch.no_grad()
def _evaluation_sums(model: nn.Module, batches, device: torch.device,
                     predictions: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``[sum of losses, correct, count]`` as a float64 tensor on ``device``; each batch's
    argmax is appended to ``predictions`` when given."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    try:
        for inputs, labels in batches:
            inputs, labels = inputs.to(device), labels.to(device)
            logits = model(inputs)
            predicted = logits.argmax(dim=1)
            sums[0] += F.cross_entropy(logits, labels, reduction="sum").double()
            sums[1] += (predicted == labels).sum()
            sums[2] += labels.numel()
            if predictions is not None:
                predictions.append(predicted)
    finally:
        model.train(was_training)
    return sums


def accuracy_and_loss(sums: torch.Tensor) -> tuple[float, float]:
    loss_sum, correct, count = (float(v) for v in sums.cpu())
    if count == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return correct / count, loss_sum / count
