"""The interface every weight quantizer implements (APB and the baselines)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..memory import LayerStorage


class WeightQuantizer(nn.Module):
    """Maps latent weights ``W`` to the weights the layer computes with, ``Ŵ``.

    Subclasses set ``method`` (the name shown in summaries) and implement ``forward``,
    ``storage`` (what the packed format stores, docs/design.md §3) and ``describe`` (scalars for the
    summary table). ``set_progress``, ``freeze_scales`` and ``freeze_mask`` are training
    controls; the defaults do nothing.
    """

    method = "?"
    resizable = False
    """Whether the quantizer keeps no state shaped like the weight, so that it can follow a
    weight whose rows or columns were removed (filter pruning) by :meth:`resize`."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self._set_shape(tuple(weight.shape))

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.rows = shape[0]
        self.cols = math.prod(shape[1:])
        self.n_weights = self.rows * self.cols

    def resize(self, weight: torch.Tensor) -> None:
        """Follow ``weight`` after rows (filters) or columns (input channels) were removed."""
        if not self.resizable:
            raise TypeError(f"{type(self).__name__} keeps state shaped like its weight; it "
                            "cannot follow a weight whose shape changed")
        self._set_shape(tuple(weight.shape))

    def storage(self, weight: torch.Tensor) -> LayerStorage:
        raise NotImplementedError

    def describe(self, weight: torch.Tensor) -> dict:
        return {}

    def set_progress(self, progress: float, weight: torch.Tensor) -> None:
        """Called before each training step with ``progress`` = step / total in [0, 1]."""

    def freeze_scales(self) -> None:
        """Stop learning the quantizer's scales."""

    def freeze_mask(self, weight: torch.Tensor) -> None:
        """Fix which weights are binary / pruned from now on."""
