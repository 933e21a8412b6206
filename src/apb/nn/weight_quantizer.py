"""The interface every weight quantizer implements (APB and the baselines)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..memory import LayerStorage


class WeightQuantizer(nn.Module):
    """Maps latent weights ``W`` to the weights the layer computes with, ``Ŵ``.

    Subclasses set ``method`` (the name shown in summaries) and implement ``forward``,
    ``storage`` (what the packed format stores, DESIGN §4) and ``describe`` (scalars for the
    summary table). ``set_progress``, ``freeze_scales`` and ``freeze_mask`` are training
    controls; the defaults do nothing.
    """

    method = "?"

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.shape = tuple(weight.shape)
        self.rows = self.shape[0]
        self.cols = math.prod(self.shape[1:])
        self.n_weights = self.rows * self.cols

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
