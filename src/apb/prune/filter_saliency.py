r"""Filter saliency for quantized networks: which channels of a group matter least.

Magnitude criteria fail on quantized filters: a binary filter is :math:`\alpha_c\,
\operatorname{sign}(W_c)`, so every filter of a layer has the same norm up to its scale, and
a BatchNorm after it erases even that scale. The criteria here score channel :math:`c` of a
channel group (:mod:`apb.methods.channel_graph`), higher meaning more important; when a
group has several members (a residual stream is written by many layers) each member's scores
are divided by their mean before they are summed, so that layers of different scales weigh
alike.

``"variance"`` (data-driven, on the quantized network): the energy that the layers reading
the channel lose when it is replaced by its mean (a constant, which the BatchNorm after them
absorbs once its statistics are re-estimated),

.. math:: I_c = \sum_{\text{consumers}} \sum_{j \in c} \|\hat W_{:,j}\|^2\,
          \operatorname{Var}[\hat x_j] ,

with :math:`\hat x` the consumer's input as it computes with it (after its activation
quantizer), :math:`\hat W` its (quantized) weight, :math:`j` the input columns of channel
:math:`c` (one per position of a flattened feature map; a convolution's input channel
pools its positions and kernel taps), variances over the batches and positions — the
reconstruction-error view of channel selection (ThiNet, Luo et al., ICCV 2017) to first order.

``"taylor"`` (data-driven, on the quantized network): the first-order Taylor estimate of the
loss change when the channel is zeroed at its BatchNorm (Molchanov et al., "Importance
Estimation for Neural Network Pruning", CVPR 2019, on the BN parameters):

.. math:: I_c = \frac1B \sum_{b=1}^{B} \Bigl(\gamma_c \frac{\partial L_b}{\partial \gamma_c}
          + \beta_c \frac{\partial L_b}{\partial \beta_c}\Bigr)^2 ,

over ``B`` training batches, the gradients flowing through the quantizers' straight-through
estimators, so the score sees the network as it computes. A group without BatchNorm uses its
filters instead: :math:`(\sum_k W_{ck}\,\partial L/\partial W_{ck} + b_c\,\partial L/\partial
b_c)^2`.

``"bn_scale"``: :math:`|\gamma_c|` of the BatchNorm after the filters (network slimming, Liu
et al., ICCV 2017): after normalisation a channel's spread is :math:`|\gamma_c|`, whatever its
binary filter.

``"latent_l1"``: :math:`\operatorname{mean}_k |W_{ck}|` of the latent full-precision filter,
which is :math:`\alpha_c` of a per-channel binary layer: the magnitude criterion, applied to
the latent weights since the quantized ones are all alike.

``"random"``: a seeded permutation, the control every criterion must beat.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.layers import COMPRESSED_TYPES
from .channel_graph import ChannelGroup

CRITERIA = ("variance", "taylor", "bn_scale", "latent_l1", "random")
DATA_DRIVEN = ("variance", "taylor")


def filter_saliency(
    model: nn.Module,
    groups: list[ChannelGroup],
    criterion: str = "taylor",
    batches: Iterable | None = None,
    *,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """``{group name: scores}`` (float64, one per channel) of ``criterion`` (see the module
    docstring); ``batches`` of ``(inputs, labels)`` are needed by the data-driven ones."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown saliency criterion {criterion!r}; criteria: "
                         f"{', '.join(CRITERIA)}")
    if criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        return {g.name: torch.rand(g.size, generator=gen, dtype=torch.float64) for g in groups}
    if criterion in DATA_DRIVEN and batches is None:
        raise ValueError(f"the {criterion} criterion needs training batches")
    if criterion == "taylor":
        return _taylor(model, groups, batches)
    if criterion == "variance":
        return _variance(model, groups, batches)
    scores = {}
    for group in groups:
        if criterion == "bn_scale" and group.with_role("norm"):
            parts = [model.get_submodule(m.module).weight.detach().abs()
                     for m in group.with_role("norm")]
        else:  # latent_l1, and bn_scale on a group without BatchNorm
            parts = [model.get_submodule(m.module).weight.detach().abs().flatten(1).mean(1)
                     for m in group.with_role("out")]
        scores[group.name] = _combine(parts)
    return scores


def _combine(parts: list[torch.Tensor]) -> torch.Tensor:
    """Sum of the members' scores, each divided by its mean (all-zero members count zero)."""
    total = torch.zeros_like(parts[0], dtype=torch.float64)
    for p in parts:
        p = p.double()
        mean = p.mean()
        total += p / mean if mean > 0 else p
    return total


def _taylor(model: nn.Module, groups: list[ChannelGroup], batches: Iterable
            ) -> dict[str, torch.Tensor]:
    sources = {}  # group -> [(module, attrs whose w·∂L/∂w add up per channel)]
    for group in groups:
        norms = group.with_role("norm")
        members = norms or group.with_role("out")
        sources[group.name] = [model.get_submodule(m.module) for m in members]
    params = [p for mods in sources.values() for m in mods
              for p in (m.weight, m.bias) if p is not None]
    sums = {g.name: [torch.zeros(g.size, dtype=torch.float64) for _ in sources[g.name]]
            for g in groups}
    was_training = model.training
    model.eval()  # BatchNorm statistics stay as they are
    count = 0
    try:
        with torch.enable_grad():
            device = params[0].device
            for inputs, labels in batches:
                loss = F.cross_entropy(model(inputs.to(device)), labels.to(device))
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                by_param = {id(p): g for p, g in zip(params, grads)}
                for name, mods in sources.items():
                    for i, m in enumerate(mods):
                        delta = torch.zeros(m.weight.shape[0], dtype=torch.float64,
                                            device=device)
                        for p in (m.weight, m.bias):
                            g = None if p is None else by_param.get(id(p))
                            if g is not None:
                                delta += (p.detach() * g).flatten(1).sum(1).double() \
                                    if p.dim() > 1 else (p.detach() * g).double()
                        sums[name][i] += delta.cpu() ** 2
                count += 1
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("the taylor criterion got no batches")
    return {name: _combine([s / count for s in parts]) for name, parts in sums.items()}


class _InputMoments:
    """Per-column sums of ``x̂`` and ``x̂²`` of one layer's input, over batches (and the
    positions of a convolution's input)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.n = 0
        self.s1 = self.s2 = None

    @torch.no_grad()
    def __call__(self, module: nn.Module, args) -> None:
        x = args[0]
        if isinstance(module, COMPRESSED_TYPES):
            x = module.quantized_input(x)
        x = x.double()
        dims = (0, 2, 3) if x.dim() == 4 else (0,)
        s1, s2 = x.sum(dims), (x * x).sum(dims)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += x.numel() // s1.numel()

    def variance(self) -> torch.Tensor:
        mean = self.s1 / self.n
        return (self.s2 / self.n - mean * mean).clamp_min(0)


@torch.no_grad()
def _variance(model: nn.Module, groups: list[ChannelGroup], batches: Iterable
              ) -> dict[str, torch.Tensor]:
    moments = {m.module: _InputMoments(model.get_submodule(m.module))
               for g in groups for m in g.with_role("in")}
    handles = [mom.module.register_forward_pre_hook(mom) for mom in moments.values()]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for inputs, _ in batches:
            model(inputs.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    scores = {}
    for group in groups:
        parts = []
        for member in group.with_role("in"):
            mom = moments[member.module]
            if mom.n == 0:
                raise ValueError(f"layer {member.module!r} never ran on the batches")
            layer = mom.module
            w = layer.quantized_weight() if isinstance(layer, COMPRESSED_TYPES) else layer.weight
            col_energy = (w.double() ** 2).sum(0)  # [in] or [in, kh, kw]
            if col_energy.dim() > 1:
                col_energy = col_energy.flatten(1).sum(1)
            per_column = col_energy * mom.variance()
            parts.append(per_column.reshape(group.size, member.expansion).sum(1).cpu())
        scores[group.name] = _combine(parts)
    return scores
