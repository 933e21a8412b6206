"""Helpers shared by the packing tests (test_pack, test_packed_models, test_cli_pack)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import apb

TOLERANCE = 1e-4
"""Packed logits must lie within this fraction of the largest |logit| of the training model."""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are small: one thread per process (torch's and apb's kernels') beats
    two contending on a loaded 2-core machine, where pytest runs two workers."""
    torch_threads, kernel_threads = torch.get_num_threads(), apb.get_num_threads()
    torch.set_num_threads(1)
    apb.set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    apb.set_num_threads(kernel_threads)


def odd_model(activation: str) -> nn.Module:
    """Odd channel counts and spatial sizes, stride, asymmetric padding, dilation, biases."""
    act = nn.Hardtanh if activation == "hardtanh" else nn.ReLU
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), act(),
        nn.Conv2d(5, 7, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(7), act(),
        nn.Conv2d(7, 9, (3, 2), stride=(1, 2), padding=(2, 1), dilation=(1, 2)), act(),
        nn.Conv2d(9, 11, 1), nn.BatchNorm2d(11), act(),
        nn.Flatten(), nn.Linear(11 * 8 * 3, 13), act(), nn.Linear(13, 10),
    )


ODD_INPUT = (3, 3, 11, 9)


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
