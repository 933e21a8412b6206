"""The full-precision layers of a packed model, tuned for inference (docs/design.md,
"Full-precision layers"): :class:`TunedConv2d` and :class:`TunedLinear` run, per input
shape, the fastest of torch's algorithms and apb's own float32 kernels
(:func:`apb.kernels.direct.dense_conv2d`, :func:`~apb.kernels.direct.dense_linear`),
timed at the first input of that shape.

Why: a packed network keeps its first and last layers in float32 (the paper's
convention), and torch runs the shapes of small networks badly at batch 1: LeNet-5's
1→6 5×5 stem costs 48 µs in oneDNN and 16 µs by im2col where apb's direct convolution
takes 6, the MLP's 784→256 ``F.linear`` 18-28 µs where apb's takes 12; yet oneDNN runs
ResNet-18's 7×7 stride-2 stem near the core's peak. Timing each candidate once per shape
keeps whichever wins on this machine. The candidates differ by float rounding only (sums
in another order); the choice is kept per shape, so a model computes the same on every
call, and a :class:`~apb.pack.PackedRuntime` plan calls the same choice (bit for bit).
With autograd, under tracing and the profiler each layer is its ``nn`` parent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import direct
from .fold import FoldedLinear

_TIMED_RUNS = 3


def _fastest(candidates: dict[str, Callable[[], object]]) -> str:
    """The name of the candidate with the shortest time: each run once to warm, then
    ``_TIMED_RUNS`` times, the minimum kept."""
    times = {}
    for name, run in candidates.items():
        run()
        best = math.inf
        for _ in range(_TIMED_RUNS):
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
        times[name] = best
    return min(times, key=times.get)


def _plain_inference(x, *params: Tensor) -> bool:
    """A float32 CPU tensor, no gradient to record, outside tracing and the profiler."""
    return (type(x) is Tensor and x.dtype == torch.float32 and x.is_cpu
            and not (torch.is_grad_enabled()
                     and (x.requires_grad or any(p.requires_grad for p in params)))
            and not torch.compiler.is_compiling() and not torch.autograd._profiler_enabled()
            and torch._C._get_tracing_state() is None)


def _array(t: Tensor) -> np.ndarray:
    t = t.detach()
    return (t if t.is_contiguous() else t.contiguous()).numpy()


def _derived(layer: nn.Module, make: Callable[[Tensor, Tensor | None], object]):
    """``make(weight, bias)`` of ``layer``'s parameters, kept on the layer and made again
    when either is replaced or changed in place (``load_state_dict`` included)."""
    w, b = layer.weight, layer.bias
    state = (w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
    cached = layer._derived
    if cached is None or cached[0] is not w or cached[1] is not b or cached[2] != state:
        cached = layer._derived = (w, b, state, make(w, b))
    return cached[3]


class TunedConv2d(nn.Conv2d):
    """A full-precision ``nn.Conv2d`` for inference that runs, for each input shape and
    layout, the fastest of torch's two CPU convolutions, oneDNN's (what ``F.conv2d``
    picks) and its im2col + GEMM (``aten._slow_conv2d_forward``), and, for contiguous
    inputs of stride-1 convolutions, apb's direct convolution
    (:func:`apb.kernels.direct.dense_conv2d`), timed on the first input of that shape
    (three runs each, the minimum).

    Measured (one thread, ``docs/performance.md``): LeNet-5's 1→6 5×5 stem at batch 1
    takes 48 µs in oneDNN, 16-27 by im2col and 6 direct; VGG-Small's 3→128 3×3 at batch
    64 43, 23-29 and 11 ms; ResNet-18's 7×7 stride-2 stem 2.2 ms in oneDNN and 5.7 by
    im2col (stride 2: no direct candidate).
    """

    @classmethod
    def from_module(cls, conv: nn.Conv2d) -> TunedConv2d:
        tuned = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode, device=conv.weight.device, dtype=conv.weight.dtype)
        tuned.weight, tuned.bias = conv.weight, conv.bias
        return tuned.train(conv.training)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._choices: dict[tuple, str] = {}
        self._derived: tuple | None = None

    @staticmethod
    def tunable(conv: nn.Conv2d) -> bool:
        """Whether both torch algorithms compute ``conv``: no groups, dilation or other
        padding."""
        return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.padding_mode == "zeros"
                and not isinstance(conv.padding, str) and tuple(conv.dilation) == (1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if not (_plain_inference(x, self.weight) and x.dim() == 4):
            return super().forward(x)
        return self.inference(x)

    def inference(self, x: Tensor) -> Tensor:
        """The fastest algorithm for ``x``'s shape and layout (timed at its first use)."""
        choice = self.choice(x)
        if choice == "direct":
            return torch.from_numpy(self.direct(x.numpy()))
        if choice == "im2col":
            weight = self.weight
            if not weight.is_contiguous():
                weight = weight.contiguous()
            return torch.ops.aten._slow_conv2d_forward(x, weight, self.kernel_size, self.bias,
                                                       self.stride, self.padding)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)

    def direct(self, a: np.ndarray, lower: float = -math.inf,
               upper: float = math.inf) -> np.ndarray:
        """apb's direct convolution of the NCHW float32 array ``a`` (stride 1), then
        ``min(max(., lower), upper)``: the activation after it in the same pass."""
        weight, bias = self.direct_arrays()
        return direct.dense_conv2d(a, weight, bias, self.padding, lower, upper)

    def direct_arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The weight (NCHW-contiguous) and bias as the direct kernel takes them, copied
        once and again only when a parameter changes."""
        return _derived(self, lambda w, b: (_array(w).copy(),
                                            None if b is None else _array(b).copy()))

    def choice(self, x: Tensor | np.ndarray) -> str:
        """``"onednn"``, ``"im2col"`` or ``"direct"``: the algorithm for ``x``'s shape and
        layout (an array counts as the contiguous tensor it views), timed now if this is
        the first such input."""
        if type(x) is np.ndarray:
            found = self._choices.get((x.shape, True))
            return found if found is not None else self.choice(torch.from_numpy(x))
        key = (tuple(x.shape), x.is_contiguous())
        found = self._choices.get(key)
        if found is None:
            found = self._choices[key] = self._tune(x)
        return found

    def _tune(self, x: Tensor) -> str:
        key = (tuple(x.shape), x.is_contiguous())
        names = ["onednn", "im2col"]
        if tuple(self.stride) == (1, 1) and x.is_contiguous():
            names.append("direct")

        def run(name: str) -> Callable[[], object]:
            def once():
                self._choices[key] = name
                return self.inference(x)
            return once

        return _fastest({name: run(name) for name in names})


class TunedLinear(nn.Linear):
    """A full-precision ``nn.Linear`` for inference that runs, per batch size of 2-D
    float32 input, the faster of ``F.linear`` and apb's
    :func:`~apb.kernels.direct.dense_linear` on weights packed once (timed at the first
    input of that size; the packing is redone when the weight changes). The MLP's 784→256
    layer at batch 1: 18-28 µs in torch, 12 in apb's kernel."""

    @classmethod
    def from_module(cls, linear: nn.Linear) -> TunedLinear:
        tuned = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=linear.weight.device, dtype=linear.weight.dtype)
        tuned.weight, tuned.bias = linear.weight, linear.bias
        return tuned.train(linear.training)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._choices: dict[int, str] = {}
        self._derived: tuple | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not (_plain_inference(x, self.weight) and x.dim() == 2
                and x.shape[1] == self.in_features):
            return super().forward(x)
        if self.choice(x.shape[0]) == "dense":
            return torch.from_numpy(self.dense(_array(x)))
        return F.linear(x, self.weight, self.bias)

    def dense(self, a: np.ndarray) -> np.ndarray:
        """apb's kernel on the float32 ``[rows, in_features]`` array ``a``."""
        packed, bias = self.dense_arrays()
        return direct.dense_linear(a, packed, self.out_features, bias)

    def choice(self, rows: int) -> str:
        """``"torch"`` or ``"dense"`` for ``rows`` rows, timed now at the first such call."""
        found = self._choices.get(rows)
        if found is None:
            x = torch.randn(rows, self.in_features, generator=torch.Generator().manual_seed(0))
            a = x.numpy()
            found = self._choices[rows] = _fastest({
                "torch": lambda: F.linear(x, self.weight, self.bias),
                "dense": lambda: self.dense(a),
            })
        return found

    def dense_arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The weight in dense_linear's panels and the bias as an array, made once and
        again only when a parameter changes."""
        return _derived(self, lambda w, b: (direct.dense_linear_pack(_array(w)),
                                            None if b is None else _array(b).copy()))


class TunedFoldedLinear(TunedLinear, FoldedLinear):
    """A :class:`~apb.pack.fold.FoldedLinear` (a Linear with a BatchNorm folded in, which
    refuses input that is not ``[batch, features]``) tuned as :class:`TunedLinear`."""
