"""The lines of a :class:`~apb.pack.PackedRuntime` plan: what each kind of graph node
becomes (docs/design.md, "The packed runtime"). Every step computes what the module or
function it replaces computes, with the same kernels, so a plan's output is the model's
bit for bit; each falls back to the module itself for what it does not handle."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..kernels import direct
from .apb_layers import PackedAPBConv2d, PackedAPBLinear
from .dense import TunedConv2d, TunedFoldedLinear, TunedLinear
from .fold import FoldedLinear
from .inference import FastMaxPool2d, pool_windows

_POOLS = (nn.MaxPool2d, FastMaxPool2d)

# -- values: numpy arrays between the planned steps, torch tensors for torch's own ---------
def _as_array(value):
    """A tensor's values as a C-contiguous numpy array (no copy when it is contiguous);
    anything else as it is."""
    if type(value) is Tensor:
        if value.dtype != torch.float32 or value.device.type != "cpu":
            return value
        return (value if value.is_contiguous() else value.contiguous()).numpy()
    return value


def _as_tensor(value):
    return torch.from_numpy(value) if type(value) is np.ndarray else value


class _Step:
    """One line of the plan: ``out = fn(*inputs)``, ``inputs`` the graph's nodes, each
    converted to what ``fn`` takes (``"array"``, ``"tensor"`` or ``"any"``, as it is)."""

    def __init__(self, node: fx.Node, fn: Callable, inputs: list[fx.Node], takes: str,
                 kind: str):
        # A step returns what it takes: a step on arrays an array (its fallbacks convert
        # back), one on tensors whatever torch gives, one on either ("any") either.
        self.node, self.fn, self.inputs, self.takes, self.kind = node, fn, inputs, takes, kind


# -- the planned steps ----------------------------------------------------------------
# The elementwise steps and the max-pool take arrays or tensors: a channels-last tensor (a
# stem's output) stays a tensor, computed by torch as the model computes it, instead of
# being copied to NCHW before the packed layer that copies it anyway; a contiguous one
# (a full-precision layer's NCHW output) becomes an array, without a copy.
def _array_if_contiguous(a):
    if type(a) is Tensor and a.dtype == torch.float32 and a.is_cpu and a.is_contiguous():
        return a.numpy()
    return a


def _relu(a):
    a = _array_if_contiguous(a)
    return np.maximum(a, np.float32(0)) if type(a) is np.ndarray else torch.relu(a)


def _relu_in_place(a):
    a = _array_if_contiguous(a)
    return np.maximum(a, np.float32(0), out=a) if type(a) is np.ndarray else torch.relu_(a)


def _hardtanh(low: float, high: float, inplace: bool) -> Callable:
    low32, high32 = np.float32(low), np.float32(high)

    def hardtanh(a):
        a = _array_if_contiguous(a)
        if type(a) is np.ndarray:
            return np.clip(a, low32, high32, out=a if inplace else None)
        return F.hardtanh(a, low, high, inplace)

    hardtanh.bounds = (float(low32), float(high32))
    return hardtanh


_ACTIVATION_BOUNDS: dict[str, Callable[[_Step], tuple[float, float]]] = {
    "relu": lambda step: (0.0, np.inf),
    "hardtanh": lambda step: step.fn.bounds,
}
"""The activations a packed convolution's epilogue applies, as ``(lower, upper)``: the
kernel computes ``min(max(y, lower), upper)``, which keeps NaN as torch's ReLU and
Hardtanh do, with the bounds rounded to float32 as the planned steps round them."""


def _block_end(conv: Callable, add: Callable, act: Callable,
               bounds: tuple[float, float]) -> Callable:
    """The fused step: ``act(conv(a) + r)`` in the convolution's kernel call when ``r`` is
    an array of the output's shape, else the three steps one after the other."""
    lower, upper = bounds

    def apb_conv2d_add_act(a, r):
        if type(r) is np.ndarray and r.dtype == np.float32 and r.flags.c_contiguous:
            out = conv(a, r, lower, upper)
            if out is not None:
                return out
        return _as_array(act(add(conv(a), r)))

    return apb_conv2d_add_act


def _add(a, b):
    if type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == b.dtype == np.float32:
        return a + b
    return _as_tensor(a) + _as_tensor(b)


def _flatten(a):
    if type(a) is np.ndarray and a.ndim >= 2:
        return a.reshape(a.shape[0], -1)
    return torch.flatten(_as_tensor(a), 1)


def _module_step(module: nn.Module, node: fx.Node) -> _Step | None:
    """The planned step for a module call with positional arguments, or None."""
    args = list(node.args)
    if len(args) != 1 or not isinstance(args[0], fx.Node):
        return None
    kind = type(module)
    if kind is nn.ReLU:
        return _Step(node, _relu_in_place if module.inplace else _relu, args, "any", "relu")
    if kind is nn.Hardtanh:
        return _Step(node, _hardtanh(module.min_val, module.max_val, module.inplace), args,
                     "any", "hardtanh")
    if kind is nn.Flatten and module.start_dim == 1 and module.end_dim == -1:
        return _Step(node, _flatten, args, "any", "flatten")
    if isinstance(module, nn.MaxPool2d) and kind in _POOLS:
        return _max_pool_step(module, node)
    if kind is PackedAPBConv2d and module.act_bits <= 8 and module.backend == "kernels":
        return _Step(node, _apb_conv2d(module), args, "array", "apb_conv2d")
    if kind is PackedAPBLinear and module.act_bits <= 8 and module.backend == "kernels":
        return _Step(node, _apb_linear(module), args, "array", "apb_linear")
    if kind in (nn.Linear, FoldedLinear):
        return _Step(node, _linear(module), args, "tensor", "linear")
    if kind in (TunedLinear, TunedFoldedLinear):
        return _Step(node, _tuned_linear(module), args, "any", "linear")
    if kind is TunedConv2d:
        return _Step(node, _tuned_conv2d(module), args, "any", "conv2d")
    if kind is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(
            module.padding, str):
        weight, bias = module.weight, module.bias
        stride, padding, dilation, groups = (module.stride, module.padding, module.dilation,
                                             module.groups)
        return _Step(node, lambda t: F.conv2d(t, weight, bias, stride, padding, dilation,
                                              groups), args, "tensor", "conv2d")
    return None


def _max_pool_step(pool: nn.MaxPool2d, node: fx.Node) -> _Step | None:
    windows = pool_windows(pool)
    if windows is None:
        return None
    k, s, p = windows

    def compiled(a, lower: float, upper: float):
        """The pooled map from apb's kernels, bounded, or None where they do not apply."""
        a = _array_if_contiguous(a)
        if type(a) is np.ndarray and a.ndim == 4:
            return direct.max_pool2d(a, k, s, p, lower, upper)
        if (type(a) is Tensor and a.dim() == 4 and a.dtype == torch.float32 and a.is_cpu
                and a.is_contiguous(memory_format=torch.channels_last)):
            # A channels-last map (an ImageNet stem's output): pooled and made NCHW, what
            # the packed layer after it reads, in one pass. torch's channels-last pool and
            # the copy to NCHW took 0.31 + 0.13 ms on ResNet-18's stem output, this 0.09.
            return direct.max_pool2d_channels_last(a.permute(0, 2, 3, 1).numpy(), k, s, p,
                                                   lower, upper)
        return None

    def max_pool(a):
        out = compiled(a, -np.inf, np.inf)
        return out if out is not None else pool(_as_tensor(a))

    def bounded(act: Callable, lower: float, upper: float) -> Callable:
        """The pool with a ReLU or Hardtanh after it, or before it (both are
        non-decreasing, so they commute with a maximum, NaN and ties included), the
        bounds applied as the kernel stores each output."""
        def max_pool_act(a):
            out = compiled(a, lower, upper)
            return out if out is not None else act(pool(_as_tensor(a)))

        return max_pool_act

    max_pool.bounded = bounded

    return _Step(node, max_pool, list(node.args), "any", "max_pool2d")


def _apb_conv2d(layer: PackedAPBConv2d) -> Callable:
    w, indptr, indices, values, s, dot_scale, sparse_scale, shift = layer._direct_args()
    # Its arguments checked and held once: a call passes only what changes.
    call = direct.apb_conv2d_layer(w, indptr, indices, values, layer.kernel_size,
                                   layer.stride, layer.padding, layer.dilation,
                                   layer.act_bits, s, dot_scale, sparse_scale, shift)
    signs = layer.act_bits == 1  # only ±1 inputs need a padding correction
    corrections: dict[tuple[int, int], np.ndarray | None] = {}

    def correction(a: np.ndarray) -> np.ndarray | None:
        if not signs:
            return None
        hw = a.shape[2:]
        corr = corrections.get(hw, False)
        if corr is False:
            c = layer._sign_padding(torch.from_numpy(a))
            corr = corrections[hw] = None if c is None else c.numpy()
        return corr

    def apb_conv2d(a, residual=None, lower=-np.inf, upper=np.inf):
        """The layer's output; with ``residual``, ``min(max(out + residual, lower),
        upper)`` from the same kernel call, or None when the shapes do not fit."""
        if type(a) is not np.ndarray or a.ndim != 4:
            return None if residual is not None else _as_array(layer(_as_tensor(a)))
        if residual is not None and residual.shape != (a.shape[0], w.shape[0],
                                                       *layer._out_size(*a.shape[2:])):
            return None
        return call(a, correction(a), residual, lower, upper)

    def bounded(act: Callable, lower: float, upper: float) -> Callable:
        def apb_conv2d_act(a):
            if type(a) is np.ndarray and a.ndim == 4:
                return call(a, correction(a), None, lower, upper)
            return act(apb_conv2d(a))

        return apb_conv2d_act

    apb_conv2d.bounded = bounded
    return apb_conv2d


def _apb_linear(layer: PackedAPBLinear) -> Callable:
    w, indptr, indices, values, s, dot_scale, sparse_scale, shift = layer._direct_args()
    call = direct.apb_linear_layer(w, indptr, indices, values, layer.act_bits, s, dot_scale,
                                   sparse_scale, shift)

    def apb_linear(a, lower=-np.inf, upper=np.inf):
        if type(a) is not np.ndarray or a.ndim != 2:
            return _as_array(layer(_as_tensor(a)))
        return call(a, None, lower, upper)

    def bounded(act: Callable, lower: float, upper: float) -> Callable:
        def apb_linear_act(a):
            if type(a) is np.ndarray and a.ndim == 2:
                return call(a, None, lower, upper)
            return act(apb_linear(a))

        return apb_linear_act

    apb_linear.bounded = bounded
    return apb_linear


def _linear(layer: nn.Linear) -> Callable:
    weight, bias = layer.weight, layer.bias
    folded = type(layer) is FoldedLinear

    def linear(t):
        if folded and t.dim() != 2:
            return layer(t)  # raises, saying why
        return F.linear(t, weight, bias)

    return linear


def _plain_array(a, ndim: int) -> bool:
    return (type(a) is np.ndarray and a.ndim == ndim and a.dtype == np.float32
            and a.flags.c_contiguous)


# The tuned layers' arrays are bound when the plan is built, as the packed layers' are
# (load_state_dict, train and to rebuild the plan): the per-call checks of the layers' own
# caches cost 2 µs.
def _tuned_linear(layer: TunedLinear) -> Callable:
    packed, bias = layer.dense_arrays()
    weight, bias_t = layer.weight, layer.bias
    in_features, out_features = layer.in_features, layer.out_features

    def tuned_linear(a):
        if _plain_array(a, 2) and a.shape[1] == in_features:
            if layer.choice(a.shape[0]) == "dense":
                return direct.dense_linear(a, packed, out_features, bias)
            return F.linear(torch.from_numpy(a), weight, bias_t)
        return layer(_as_tensor(a))

    return tuned_linear


def _tuned_conv2d(conv: TunedConv2d) -> Callable:
    """The convolution as the model runs it (:meth:`TunedConv2d.inference`); ``bounded``
    is the same followed by an activation, in the direct kernel's epilogue when that is
    the layer's choice for the input's shape."""
    weight, bias = conv.direct_arrays()
    padding = conv.padding

    def tuned_conv2d(a):
        if _plain_array(a, 4):
            return (direct.dense_conv2d(a, weight, bias, padding) if conv.choice(a) == "direct"
                    else conv.inference(torch.from_numpy(a)))
        t = _as_tensor(a)
        return conv.inference(t) if type(t) is Tensor and t.dim() == 4 else conv(t)

    def bounded(act: Callable, lower: float, upper: float) -> Callable:
        def tuned_conv2d_act(a):
            if _plain_array(a, 4) and conv.choice(a) == "direct":
                return direct.dense_conv2d(a, weight, bias, padding, lower, upper)
            return act(tuned_conv2d(a))

        return tuned_conv2d_act

    tuned_conv2d.bounded = bounded
    return tuned_conv2d


def _generic(node: fx.Node, target: Callable) -> _Step:
    """A step that calls ``target`` with the node's arguments, its graph values as torch
    tensors: what the model itself would do."""
    inputs = list(node.all_input_nodes)
    position = {n: i for i, n in enumerate(inputs)}
    template_args, template_kwargs = node.args, node.kwargs

    def call(*values):
        args = fx.node.map_arg(template_args, lambda n: values[position[n]])
        kwargs = fx.node.map_arg(template_kwargs, lambda n: values[position[n]])
        return target(*args, **kwargs)

    return _Step(node, call, inputs, "tensor", "generic")
