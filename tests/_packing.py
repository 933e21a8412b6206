"""Helpers shared by the packing tests (test_pack, test_packed_models, test_cli_pack)."""

from __future__ import annotations

import copy

import torch
from torch import nn

import apb

TOLERANCE = 1e-4
"""Packed logits must lie within this fraction of the largest |logit| of the training model."""


def prepare(model: nn.Module, config, input_shape, *, seed: int = 0, steps: int = 2,
            filter_fn=None) -> nn.Module:
    """``model`` compressed with ``config``, after ``steps`` training-mode forwards on random
    inputs (they initialise the 2-bit activation scales and move the BatchNorm statistics
    away from 0/1), in eval mode."""
    torch.manual_seed(seed)
    apb.compress_(model, config, filter_fn=filter_fn)
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(torch.randn(*input_shape))
    return model.eval()


def packed_copy(model: nn.Module, **kwargs) -> nn.Module:
    return apb.pack_(copy.deepcopy(model), **kwargs)


def relative_error(packed: torch.Tensor, reference: torch.Tensor) -> float:
    """``max |packed − reference| / max |reference|``."""
    return float((packed - reference).abs().max() / reference.abs().max())
