r"""``optimize_for_inference_(model)``: the layout steps that make a packed model fast as a
whole network, not only in its packed layers (issue 18; docs/performance.md, "Every zoo
model against three peers").

A packed network is more than its packed layers: the full-precision stem convolution,
BatchNorms, max-pooling and residual adds run as ordinary torch operators, and at batch 1
some of them cost more than the binary GEMMs. Measured on ResNet-18 (one thread, batch
1, ``benchmarks/inference_layout.py``): torch's NCHW ``max_pool2d`` takes 6.2 ms on the
stem's 64×112×112 output against 0.3 ms channels-last; the 7×7 stem convolution takes
2.2 ms either way (373 against 264 ms at batch 64), and with channels-last weights its
output, and so the max-pool's input, is channels-last. This step, in place and
idempotent:

1. folds every BatchNorm it safely can (:func:`~apb.pack.fold.fold_batchnorm_`);
2. stores the weights of every full-precision ``nn.Conv2d`` with a kernel of at least
   5×5 or a stride above 1 (an ImageNet-style stem) channels-last, which makes torch pick
   its channels-last convolution for it whatever the input's layout; the output is
   channels-last, and so are the BatchNorm, activation and pooling after it (torch keeps
   the layout through elementwise operators and pooling). A packed layer takes any
   layout: it copies its input to NCHW once (``x.contiguous()``), which costs a fraction
   of what the NCHW operators cost. Small 3×3 stride-1 convolutions stay NCHW: on 32×32
   inputs at batch 1 channels-last took 1.4-2.6× as long (0.089 → 0.125 ms for 3 → 128
   channels, 0.022 → 0.058 ms for 3 → 16);
   Every full-precision ``nn.Conv2d`` without groups or dilation then becomes a
   :class:`~apb.pack.dense.TunedConv2d` and every full-precision ``nn.Linear`` (folded or
   not) a :class:`~apb.pack.dense.TunedLinear`: per input shape, the fastest of torch's
   algorithms and apb's float32 kernels, timed at its first use (LeNet-5's stem at batch
   1: 48 µs in oneDNN, 6 µs in apb's direct convolution);
3. replaces every plain ``nn.MaxPool2d`` by :class:`FastMaxPool2d`, the same pooling
   computed for NCHW inputs as the maximum of its ``k×k`` strided windows (exactly
   ``max_pool2d``'s values; 3.5-5.4× faster at batch 1 than torch's NCHW kernel on these
   shapes, 1.1× at batch 64);
4. removes an activation whose only use is the input of a packed layer whose own input
   quantizer makes it a no-op: a ``ReLU`` before 2-8-bit codes (the codes clip to
   ``[0, s]``), a ``Hardtanh`` with ``min_val < 0 < max_val`` before 1-bit signs (the sign
   is unchanged). The packed layer then computes bit for bit what it computed before
   (NaN included: both give code 0, sign +1). In ResNets that is the activation inside
   each block (the one after the residual add also feeds the shortcut and stays), in
   VGG-small and the MLP every hidden one; at batch 64 ReLU is 12 % of a packed
   ResNet-18's forward;
5. makes the remaining ``ReLU`` / ``Hardtanh`` modules in place where their input is a
   tensor made for them alone: the output of a convolution, Linear, BatchNorm or packed
   layer, or of an addition, that nothing else reads. That spares a fresh output per
   activation (at batch 64 a ResNet-18 forward then faults 194,000 pages instead of
   270,000, about 4 % faster).

Nothing here changes what the model computes beyond float rounding in the folded layers
(see :func:`~apb.pack.fold.fold_batchnorm_`) and the tuned ones (sums in another order).
It is for inference: save a packed model before optimizing it
(:func:`apb.pack.save_packed` refuses a model with folded layers).
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..kernels import direct
from .dense import TunedConv2d, TunedFoldedLinear, TunedLinear
from .fold import FoldedLinear, _traced_parts, fold_batchnorm_
from .layer import PackedLayer


class FastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` for inference, computed for NCHW float inputs as the elementwise
    maximum of the ``kernel_size²`` strided slices of the input (padded with ``-inf``).

    Why by hand: torch's NCHW CPU max-pool walks every window with index bookkeeping;
    ``torch.maximum`` over strided views streams the image once per window offset
    (measured 0.125 against 0.670 ms on a 128×32×32 map, 2×2 windows, one thread). The
    values are exactly ``max_pool2d``'s (NaN propagates in both). Channels-last inputs,
    other dtypes, dilation, ``ceil_mode`` and ``return_indices`` go to ``max_pool2d``.
    """

    @classmethod
    def from_module(cls, pool: nn.MaxPool2d) -> FastMaxPool2d:
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                   return_indices=pool.return_indices, ceil_mode=pool.ceil_mode)

    def forward(self, x: Tensor):
        windows = pool_windows(self)
        if (windows is None or x.dim() != 4 or not x.is_floating_point()
                or not x.is_contiguous() or (x.requires_grad and torch.is_grad_enabled())
                or x.shape[2] + 2 * windows[2][0] < windows[0][0]
                or x.shape[3] + 2 * windows[2][1] < windows[0][1]):
            return super().forward(x)  # max_pool2d, with its own argument errors
        k, s, p = windows
        if self._direct(x):
            return torch.from_numpy(direct.max_pool2d(x.detach().numpy(), k, s, p))
        if p != (0, 0):
            x = F.pad(x, (p[1], p[1], p[0], p[0]), value=float("-inf"))
        h, w = x.shape[2], x.shape[3]
        oh, ow = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
        out = None
        for dy in range(k[0]):
            for dx in range(k[1]):
                window = x[:, :, dy:dy + s[0] * (oh - 1) + 1:s[0],
                           dx:dx + s[1] * (ow - 1) + 1:s[1]]
                out = window.clone() if out is None else torch.maximum(out, window, out=out)
        return out

    @staticmethod
    def _direct(x: Tensor) -> bool:
        """Whether the compiled kernel (:func:`apb.kernels.direct.max_pool2d`) computes
        this call (the windows fit, the input is a contiguous 4-D float tensor outside
        autograd): a plain float32 CPU tensor outside torch.compile / torch.export
        tracing and the profiler. At batch 1 it costs 1-3 µs where the strided maxima
        cost 20-25 µs on LeNet-5's maps."""
        return (type(x) is Tensor and x.dtype == torch.float32 and x.is_cpu
                and not torch.compiler.is_compiling()
                and not torch.autograd._profiler_enabled())


def pool_windows(pool: nn.MaxPool2d) -> tuple[tuple[int, int], ...] | None:
    """``(kernel, stride, padding)`` pairs of a max-pool that the strided maxima and the
    compiled kernel compute (no indices, floor mode, no dilation, padding at most half
    the kernel), else None."""
    k, s, p = (_pair(v) for v in (pool.kernel_size, pool.stride or pool.kernel_size,
                                  pool.padding))
    if (pool.return_indices or pool.ceil_mode or _pair(pool.dilation) != (1, 1)
            or 2 * p[0] > k[0] or 2 * p[1] > k[1]):
        return None
    return k, s, p


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def optimize_for_inference_(model: nn.Module) -> nn.Module:
    """Fold BatchNorms, store full-precision convolutions channels-last, use
    :class:`FastMaxPool2d` and remove activations the next packed layer's quantizer
    repeats (see the module docstring), in place. Returns ``model``."""
    fold_batchnorm_(model)
    _drop_repeated_activations(model)
    _activations_in_place(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, PackedLayer) or not name:
            continue
        if type(module) is nn.Conv2d and _is_stem_like(module):
            with torch.no_grad():
                module.weight.data = module.weight.data.contiguous(
                    memory_format=torch.channels_last)
        if TunedConv2d.tunable(module):
            model.set_submodule(name, TunedConv2d.from_module(module))
        elif type(module) is nn.Linear:
            model.set_submodule(name, TunedLinear.from_module(module))
        elif type(module) is FoldedLinear:
            model.set_submodule(name, TunedFoldedLinear.from_module(module))
        elif type(module) is nn.MaxPool2d:
            model.set_submodule(name, FastMaxPool2d.from_module(module))
    return model


def _is_stem_like(conv: nn.Conv2d) -> bool:
    """A kernel of at least 5×5 or a stride above 1: where channels-last measured faster."""
    return conv.weight.dim() == 4 and (min(conv.kernel_size) >= 5 or max(conv.stride) > 1)


def _repeats_quantizer(act: nn.Module, layer: nn.Module) -> bool:
    """Whether ``layer``'s input quantizer gives the same result with or without ``act``."""
    if not isinstance(layer, PackedLayer) or act._forward_hooks or act._forward_pre_hooks:
        return False
    if type(act) is nn.ReLU:
        return 2 <= layer.act_bits <= 8
    if type(act) is nn.Hardtanh:
        return layer.act_bits == 1 and act.min_val < 0 < act.max_val
    return False


def _single_calls(model: nn.Module, accept) -> list[tuple[nn.Module, str]]:
    """``(part, name)`` of each module that every traced graph of ``part`` shows called
    once, never read as an attribute, and at whose call node ``accept(node, modules)``
    holds (in every graph)."""
    parts, _ = _traced_parts(model)
    found = []
    for part, graphs in parts:
        modules = dict(part.named_modules())
        keep: set[str] | None = None
        for graph in graphs:
            calls = [n.target for n in graph.nodes if n.op == "call_module"]
            read = {n.target for n in graph.nodes if n.op == "get_attr"}
            names = {node.target for node in graph.nodes
                     if node.op == "call_module" and calls.count(node.target) == 1
                     and node.target not in read and accept(node, modules)}
            keep = names if keep is None else keep & names
        found += [(part, name) for name in sorted(keep or ())]
    return found


def _feeds_a_repeating_quantizer(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """``node``'s only user is a packed layer that takes it as its only argument and whose
    quantizer repeats it (:func:`_repeats_quantizer`)."""
    if len(node.users) != 1:
        return False
    (user,) = node.users
    return (user.op == "call_module" and tuple(user.args) == (node,) and not user.kwargs
            and _repeats_quantizer(modules[node.target], modules[user.target]))


def _drop_repeated_activations(model: nn.Module) -> int:
    """Replace by ``nn.Identity`` each activation called once whose only user is a packed
    layer with a quantizer that repeats it. Returns how many were replaced."""
    found = _single_calls(model, _feeds_a_repeating_quantizer)
    for part, name in found:
        part.set_submodule(name, nn.Identity())
    return len(found)


_FRESH_MODULES = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, PackedLayer)
_FRESH_FUNCTIONS = (operator.add, torch.add)


def _made_for_one(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s tensor is new (a layer's output or a sum) and read only once."""
    if len(node.users) != 1:
        return False
    if node.op == "call_module":
        return isinstance(modules[node.target], _FRESH_MODULES)
    return node.op == "call_function" and node.target in _FRESH_FUNCTIONS


def _in_place_candidate(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A ``ReLU`` / ``Hardtanh`` without hooks called on one tensor made for it alone."""
    act = modules[node.target]
    return (type(act) in (nn.ReLU, nn.Hardtanh) and not act._forward_hooks
            and not act._forward_pre_hooks and not node.kwargs and len(node.args) == 1
            and isinstance(node.args[0], fx.Node) and _made_for_one(node.args[0], modules))


def _activations_in_place(model: nn.Module) -> int:
    """Set ``inplace`` on each ``ReLU`` / ``Hardtanh`` called once on one argument that
    :func:`_made_for_one` accepts. Returns how many."""
    found = _single_calls(model, _in_place_candidate)
    for part, name in found:
        part.get_submodule(name).inplace = True
    return len(found)
