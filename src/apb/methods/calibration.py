"""Calibration data for post-training compression: a list of batches and how one batch goes
through a model, for any model, not only those that take a single tensor.

A batch is a tensor (the model's input), a tuple or list ``(inputs, labels, ...)`` whose first
element is the input (what a classification ``DataLoader`` yields), or a dict of keyword
arguments (a tokenizer's ``{"input_ids", "attention_mask", ...}``); tensors anywhere in it are
moved to the calibration device. Anything else needs ``forward(model, batch)``, which runs the
model on a batch in whatever way it takes it (its return value is ignored).

Padding: a dict batch with a 2-D ``attention_mask`` (a tokenizer's, ``(batch, tokens)``, 1 for
real tokens) says which token positions are padding. With ``mask_padding`` (the default),
:meth:`CalibrationSet.token_mask` gives that mask, and the Hessian collectors leave the
padded positions of ``(batch, tokens, features)`` inputs out: they are not part of any
text, and in a short sentence padded to a long batch they would outnumber its tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .obc_layer import OBCError

Forward = Callable[[nn.Module, Any], Any]


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (in tuples, lists and dicts, nested) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def default_forward(model: nn.Module, batch: Any) -> Any:
    """``model(batch)`` for a tensor, ``model(batch[0])`` for ``(inputs, labels, ...)``,
    ``model(**batch)`` for a dict."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return model(batch[0])
    raise TypeError(f"cannot feed a calibration batch of type {type(batch).__name__} to the "
                    "model: give tensors, (inputs, labels) tuples or dicts of keyword "
                    "arguments, or pass forward=lambda model, batch: ...")


class CalibrationSet:
    """The calibration batches (kept in memory: they are iterated several times), the device
    they run on and the ``forward`` that feeds one to a model."""

    def __init__(self, batches: Iterable, device: torch.device | str = "cpu",
                 forward: Forward | None = None, mask_padding: bool = True):
        self.batches = list(batches)
        if not self.batches:
            raise OBCError("the calibration set is empty")
        if forward is not None and not callable(forward):
            raise TypeError(f"forward must be a callable (model, batch), got "
                            f"{type(forward).__name__}")
        self.device = torch.device(device)
        self.forward = forward or default_forward
        self.mask_padding = mask_padding

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Any]:
        """Each batch, on the calibration device."""
        for batch in self.batches:
            yield to_device(batch, self.device)

    def run(self, model: nn.Module, batch: Any) -> None:
        """Feed one batch (from iterating this set) to ``model``."""
        self.forward(model, batch)

    def token_mask(self, batch: Any) -> torch.Tensor | None:
        """(batch, tokens) bool mask of the real tokens of a dict batch with a 2-D
        ``attention_mask`` (None otherwise, or without ``mask_padding``)."""
        if not self.mask_padding or not isinstance(batch, Mapping):
            return None
        mask = batch.get("attention_mask")
        if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
            return None
        return mask.to(self.device) != 0


def as_calibration(batches: Iterable | CalibrationSet, device: torch.device | str = "cpu",
                   forward: Forward | None = None) -> CalibrationSet:
    """``batches`` as a :class:`CalibrationSet` (returned as is when it already is one)."""
    if isinstance(batches, CalibrationSet):
        return batches
    return CalibrationSet(batches, device, forward)
