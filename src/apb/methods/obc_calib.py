r"""Calibration for post-training compression: layer Hessians through forward hooks, and
BatchNorm statistics re-estimated afterwards.

A ``Linear`` layer sees input rows :math:`x \in \mathbb{R}^{d}` (every token of every sample
when the input has more than two dimensions); a ``Conv2d`` layer's input is unfolded (im2col)
so that each output position is one row of :math:`C_{in} k_h k_w` values and the
convolution is the matrix product :math:`W x` with :math:`W` flattened to
:math:`C_{out} \times C_{in} k_h k_w`. Over the :math:`n` rows of the calibration set,

.. math:: H = \frac{2}{n} \sum_i x_i x_i^\top ,

the Hessian of the mean squared output error :math:`\frac1n\|WX - \hat W X\|^2` in each row
of :math:`W`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .obc_layer import OBCError

Batches = Iterable


def check_supported(name: str, module: nn.Module) -> None:
    """Raise :class:`OBCError` naming ``module`` unless OBC can compress it: an ``nn.Linear``
    or an ungrouped, zero-padded ``nn.Conv2d`` (exact types: subclasses such as
    ``MultiheadAttention``'s ``out_proj`` are used through their weights directly, so their
    inputs cannot be observed)."""
    if type(module) is nn.Linear:
        return
    if type(module) is nn.Conv2d:
        if module.groups != 1:
            raise OBCError(f"layer {name!r} is a grouped convolution (groups={module.groups}), "
                           "which OBC does not support; leave it out with filter_fn")
        if module.padding_mode != "zeros":
            raise OBCError(f"layer {name!r} uses padding_mode={module.padding_mode!r}; OBC "
                           "supports zero padding only; leave it out with filter_fn")
        return
    raise OBCError(f"layer {name!r} is a {type(module).__name__}; OBC compresses nn.Linear "
                   "and nn.Conv2d modules only; leave it out with filter_fn")


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as an (n, d) matrix, one row per output position."""
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        if isinstance(padding, str):  # "same" / "valid": pad as the module does, then unfold
            if padding == "same":
                pads = []
                for k, dil in zip(module.kernel_size[::-1], module.dilation[::-1]):
                    total = dil * (k - 1)
                    pads += [total // 2, total - total // 2]
                x = F.pad(x, pads)
            padding = 0
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding,
                        stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


class HessianCollector:
    """Accumulates :math:`\\sum_i x_i x_i^\\top` of one layer's inputs (float64)."""

    def __init__(self, name: str, module: nn.Module):
        self.name = name
        self.module = module
        d = module.weight[0].numel()
        self.sum = torch.zeros((d, d), dtype=torch.float64)
        self.n_inputs = 0
        self.n_samples = 0

    def __call__(self, module, args) -> None:
        x = args[0].detach()
        rows = input_rows(module, x).float().cpu()
        self.sum += (rows.t() @ rows).double()
        self.n_inputs += rows.shape[0]
        self.n_samples += x.shape[0]

    @property
    def hessian(self) -> torch.Tensor:
        return self.sum * (2.0 / max(1, self.n_inputs))

    @property
    def positions(self) -> float:
        """Input rows per sample: output positions of a convolution, tokens of a Linear."""
        return self.n_inputs / max(1, self.n_samples)


def batch_inputs(batches: Batches) -> Iterator[torch.Tensor]:
    """The input tensors of ``batches``: tensors, or ``(inputs, labels, ...)`` tuples."""
    for batch in batches:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def collect_hessians(model: nn.Module, names: list[str], batches: Batches,
                     device: torch.device | str = "cpu") -> dict[str, HessianCollector]:
    """Run ``model`` (eval mode) over ``batches`` with a hook on each layer of ``names``."""
    collectors = {n: HessianCollector(n, model.get_submodule(n)) for n in names}
    handles = [c.module.register_forward_pre_hook(c) for c in collectors.values()]
    was_training = model.training
    model.eval()
    seen = 0
    try:
        for x in batch_inputs(batches):
            model(x.to(device))
            seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if seen == 0:
        raise OBCError("the calibration set is empty")
    for c in collectors.values():
        if c.n_inputs == 0:
            raise OBCError(
                f"layer {c.name!r} was never called during calibration (its parent computes "
                "with its weight directly, e.g. nn.MultiheadAttention); OBC cannot see its "
                "inputs: leave it out with filter_fn"
            )
    return collectors


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Batches,
                          device: torch.device | str = "cpu") -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches`` (a cumulative
    average over all of them), the rest of the model in eval mode. Returns the number of
    BatchNorm layers updated."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    try:
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch weighs the same
            m.train()
        for x in batch_inputs(batches):
            model(x.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)
