r"""``PackedRuntime``: a packed model run as one planned sequence of kernel calls
(issue 18; ``docs/design.md``, "The packed runtime").

At batch 1 a small packed network spends more time in Python than in its kernels:
``nn.Module.__call__``, the input checks each layer repeats, the numpy views of its
buffers and the torch wrappers around each result cost 5-12 µs per layer, against 4-17 µs
of kernel time in LeNet-5's packed layers (``docs/performance.md``). The runtime traces
the model once (``torch.fx``, packed layers as leaves) and turns the graph into one
generated Python function whose lines call the kernels directly
(:mod:`apb.kernels.direct`) on numpy arrays, with every argument that depends on the
weights computed beforehand:

- a packed ``Conv2d`` / ``Linear`` with 1..8-bit inputs: one fused kernel call
  (``apb_conv2d`` / ``apb_linear``);
- ``MaxPool2d``: :func:`apb.kernels.direct.max_pool2d`;
- ``ReLU`` / ``Hardtanh``, ``Flatten``, ``Identity``, additions: numpy, in place where
  :func:`~apb.pack.optimize_for_inference_` made the activation in place;
- full-precision ``Conv2d`` / ``Linear``: torch's own functions on the bound weights;
- anything else: the module, function or method itself, on torch tensors.

The input is checked once (a float32 CPU tensor); a layer that refuses what it is given
makes the runtime run the model itself, whose error then says what is wrong. Every line
computes what the module it replaces computes, with the same kernels: the runtime's
output is the model's bit for bit (``tests/test_pack_runtime.py``).

When the plan is not used: under ``torch.compile`` / ``torch.export`` / fx and jit
tracing and the profiler (they see the model and its operators, as before), when
autograd would record the forward (a parameter or the input requires grad and grad mode
is on), while a global module hook is registered (``nn.modules.module.
register_module_forward_hook``: the hooks see every module call), for inputs that are not
a plain float32 CPU tensor, and for models that do not trace (the model then runs as it
is). Then ``forward`` is ``model(x)``. The runtime
takes one input, as the zoo's models do.

A plan is a snapshot of the weights' derived values (``α`` times a folded scale, the
clip scale, ...). ``load_state_dict``, ``train``/``eval`` and ``to``/``float``/...
drop it; after changing a weight in place, call :meth:`PackedRuntime.refresh`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.modules import module as _module_globals  # global hooks: every module's

from ..kernels import direct
from .apb_layers import PackedAPBConv2d, PackedAPBLinear
from .fold import FoldedLinear, _PackedLeafTracer
from .inference import FastMaxPool2d, TunedConv2d, pool_windows

_RELU_FUNCTIONS = (F.relu, torch.relu)
_ADD_FUNCTIONS = (operator.add, torch.add)
_POOLS = (nn.MaxPool2d, FastMaxPool2d)


class PackedRuntime(nn.Module):
    """``model`` (a packed network, usually after :func:`~apb.pack.optimize_for_inference_`)
    run through its plan (see the module docstring). It is an ``nn.Module`` holding the
    model as ``.model``; its output equals ``model(x)``'s."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"PackedRuntime takes an nn.Module, got {type(model).__name__}")
        self.model = model
        self._plan: _Plan | None = None
        self._untraceable = ""
        self.register_load_state_dict_post_hook(lambda module, _: module.refresh())

    @property
    def planned(self) -> bool:
        """Whether eager calls run the plan (it is built at the first such call)."""
        if self._plan is None and not self._untraceable:
            self._build()
        return self._plan is not None

    @property
    def plan_error(self) -> str:
        """Why the model has no plan ("" when it has one or none was tried yet)."""
        return self._untraceable

    def refresh(self) -> None:
        """Drop the plan; the next eager call builds it from the current weights."""
        self._plan = None
        self._untraceable = ""

    def train(self, mode: bool = True) -> PackedRuntime:
        self.refresh()
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self.refresh()
        return super()._apply(fn, recurse)

    def forward(self, x):
        if not self._plannable(x):
            return self.model(x)
        plan = self._plan
        if plan is None:
            if self._untraceable or not self._build():
                return self.model(x)
            plan = self._plan
        if plan.needs_grad and torch.is_grad_enabled():
            return self.model(x)
        try:  # nothing requires grad here: autograd records nothing
            return plan.run(x if x.is_contiguous() else x.contiguous())
        except (ValueError, TypeError, RuntimeError) as plan_error:
            # A layer refused its input: the model's own checks say why. If the model
            # takes it, the plan is wrong, and that must not pass silently.
            self.model(x)
            raise plan_error

    @staticmethod
    def _plannable(x) -> bool:
        return (type(x) is Tensor and x.dtype == torch.float32 and x.is_cpu
                and not x.requires_grad and not torch.compiler.is_compiling()
                and not torch.autograd._profiler_enabled()
                and torch._C._get_tracing_state() is None
                and not _module_globals._global_forward_hooks
                and not _module_globals._global_forward_pre_hooks)

    def _build(self) -> bool:
        try:
            graph = _RuntimeTracer().trace(self.model)
        except Exception as err:  # fx raises many kinds of errors on untraceable code
            self._untraceable = str(err).splitlines()[0] if str(err) else type(err).__name__
            return False
        try:
            self._plan = _Plan(self.model, graph)
        except _NotPlannable as err:
            self._untraceable = str(err)
            return False
        return True

    def extra_repr(self) -> str:
        if self._plan is not None:
            return f"plan: {self._plan.summary()}"
        return f"not planned: {self._untraceable}" if self._untraceable else "plan: not built"

    def __repr__(self) -> str:  # the model is printed by itself; the runtime in one line
        return f"{type(self).__name__}({self.extra_repr()})"


class _RuntimeTracer(_PackedLeafTracer):
    """Packed layers, folded Linear layers, the fast max-pool and the tuned convolution
    stay opaque: each becomes one step."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (FastMaxPool2d, TunedConv2d))
                or super().is_leaf_module(m, qualname))


class _NotPlannable(Exception):
    pass


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


class _Plan:
    """The generated function and what it was made of."""

    def __init__(self, model: nn.Module, graph: fx.Graph):
        self.modules = dict(model.named_modules())
        self.needs_grad = any(p.requires_grad for p in model.parameters())
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise _NotPlannable(f"forward takes {len(placeholders)} inputs; the runtime "
                                "plans models of one input")
        for node in list(graph.nodes):  # an Identity is its input: no step at all
            module = self.modules.get(str(node.target)) if node.op == "call_module" else None
            if (type(module) is nn.Identity and len(node.args) == 1 and not node.kwargs
                    and not (module._forward_hooks or module._forward_pre_hooks)):
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
        self.steps: list[_Step] = []
        output = None
        for node in graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                output = node.args[0]
                break
            self.steps.append(self._step(model, node))
        self._fuse_block_ends()
        if not isinstance(output, fx.Node):
            raise _NotPlannable("the model returns a structure; the runtime plans models that "
                                "return one tensor")
        self.run = self._generate(placeholders[0], output)

    # -- building ----------------------------------------------------------------------
    def _step(self, model: nn.Module, node: fx.Node) -> _Step:
        if node.op == "get_attr":
            value = operator.attrgetter(str(node.target))(model)
            return _Step(node, lambda: value, [], "tensor", "attribute")
        if node.op == "call_module":
            module = self.modules[str(node.target)]
            planned = None
            if not (module._forward_hooks or module._forward_pre_hooks) and not node.kwargs:
                planned = _module_step(module, node)
            if planned is not None:
                return planned
            return _generic(node, module)
        if node.op == "call_function":
            if node.target in _RELU_FUNCTIONS and len(node.args) == 1 and not node.kwargs:
                return _Step(node, _relu, list(node.args), "any", "relu")
            if (node.target in _ADD_FUNCTIONS and len(node.args) == 2 and not node.kwargs
                    and all(isinstance(a, fx.Node) for a in node.args)):
                return _Step(node, _add, list(node.args), "any", "add")
            if (node.target is torch.flatten and node.args[1:] == (1,) and not node.kwargs
                    and isinstance(node.args[0], fx.Node)):
                return _Step(node, _flatten, [node.args[0]], "any", "flatten")
            return _generic(node, node.target)
        if node.op == "call_method":
            method = str(node.target)
            return _generic(node, lambda obj, *a, **k: getattr(obj, method)(*a, **k))
        raise _NotPlannable(f"graph node {node.op} is not supported")

    def _fuse_block_ends(self) -> None:
        """``act(conv(x) + r)`` as one kernel call: a packed convolution read only by an
        addition, read only by a ReLU or Hardtanh, becomes one step at the activation's
        place whose kernel adds ``r`` and applies the bounds in its epilogue (the three
        lines cost a residual ResNet block two passes over its output)."""
        by_node = {step.node: step for step in self.steps}
        fused: dict[_Step, _Step] = {}
        drop: set[_Step] = set()
        for act in self.steps:
            bounds = _ACTIVATION_BOUNDS.get(act.kind)
            add = by_node.get(act.inputs[0]) if len(act.inputs) == 1 else None
            if bounds is None or add is None or add.kind != "add" or len(add.node.users) != 1:
                continue
            for conv_node, residual in (add.inputs, add.inputs[::-1]):
                conv = by_node.get(conv_node)
                if (conv is not None and conv.kind == "apb_conv2d" and residual is not conv_node
                        and len(conv_node.users) == 1):
                    fused[act] = _Step(act.node, _block_end(conv.fn, add.fn, act.fn, bounds(act)),
                                       [conv.inputs[0], residual], "array",
                                       "apb_conv2d+add+" + act.kind)
                    drop.update((conv, add))
                    break
        self.steps = [fused.get(step, step) for step in self.steps if step not in drop]

    def _generate(self, placeholder: fx.Node, output: fx.Node) -> Callable:
        """One Python function, a line per step, each value deleted after its last use,
        conversions between arrays and tensors only where a step needs them."""
        names = {placeholder: "v0"}
        kinds = {placeholder: "array"}  # what each value is as the function holds it
        last_use: dict[fx.Node, int] = {}
        for i, step in enumerate(self.steps):
            for n in step.inputs:
                last_use[n] = i
        last_use[output] = len(self.steps)
        scope: dict = {"_as_array": _as_array, "_as_tensor": _as_tensor}
        lines = ["def planned(x):", "    v0 = x.numpy()"]  # a contiguous float32 CPU tensor
        for i, step in enumerate(self.steps):
            args = []
            for n in step.inputs:
                if n not in names:
                    raise _NotPlannable(f"step {step.node.name} reads an unplanned value")
                convert = ("_as_tensor" if step.takes == "tensor" else "_as_array")
                args.append(names[n] if kinds[n] == step.takes or step.takes == "any"
                            else f"{convert}({names[n]})")
            name = f"v{i + 1}"
            scope[f"f{i}"] = step.fn
            lines.append(f"    {name} = f{i}({', '.join(args)})")
            names[step.node], kinds[step.node] = name, step.takes
            dead = [names[n] for n in step.inputs if last_use.get(n) == i]
            if dead:
                lines.append(f"    del {', '.join(sorted(set(dead)))}")
        if output not in names:
            raise _NotPlannable("the output is not computed by the graph")
        lines.append(f"    return _as_tensor({names[output]})")
        self.source = "\n".join(lines)
        self.scope = dict(scope)  # what the source names: benchmarks/runtime_lines.py
        exec(compile(self.source, "<apb packed runtime>", "exec"), scope)  # noqa: S102
        return scope["planned"]

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for step in self.steps:
            kinds[step.kind] = kinds.get(step.kind, 0) + 1
        return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))


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
    if kind is TunedConv2d:
        def tuned_conv2d(t):
            if type(t) is Tensor and t.dim() == 4:
                return module.inference(t)
            return module(t)

        return _Step(node, tuned_conv2d, args, "tensor", "conv2d")
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

    def max_pool(a):
        a = _array_if_contiguous(a)
        if type(a) is np.ndarray and a.ndim == 4:
            return direct.max_pool2d(a, k, s, p)
        # A channels-last map (an ImageNet stem's output) stays channels-last: torch pools
        # it fast in that layout, and the next packed layer reads it once to make it NCHW.
        return pool(_as_tensor(a))

    return _Step(node, max_pool, list(node.args), "any", "max_pool2d")


def _apb_conv2d(layer: PackedAPBConv2d) -> Callable:
    w, indptr, indices, values, s, dot_scale, sparse_scale, shift = layer._direct_args()
    geometry = (layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.act_bits)
    corrections: dict[tuple[int, int], np.ndarray | None] = {}

    def apb_conv2d(a, residual=None, lower=-np.inf, upper=np.inf):
        """The layer's output; with ``residual``, ``min(max(out + residual, lower),
        upper)`` from the same kernel call, or None when the shapes do not fit."""
        if type(a) is not np.ndarray or a.ndim != 4:
            return None if residual is not None else _as_array(layer(_as_tensor(a)))
        hw = a.shape[2:]
        corr = corrections.get(hw, False)
        if corr is False:
            c = layer._sign_padding(torch.from_numpy(a))
            corr = corrections[hw] = None if c is None else c.numpy()
        if residual is not None:
            if residual.shape != (a.shape[0], w.shape[0], *layer._out_size(*hw)):
                return None
            return direct.apb_conv2d(a, w, indptr, indices, values, *geometry, s, corr,
                                     dot_scale, sparse_scale, shift, residual, lower, upper)
        return direct.apb_conv2d(a, w, indptr, indices, values, *geometry, s, corr,
                                 dot_scale, sparse_scale, shift)

    return apb_conv2d


def _apb_linear(layer: PackedAPBLinear) -> Callable:
    w, indptr, indices, values, s, dot_scale, sparse_scale, shift = layer._direct_args()
    act_bits = layer.act_bits

    def apb_linear(a):
        if type(a) is not np.ndarray or a.ndim != 2:
            return _as_array(layer(_as_tensor(a)))
        return direct.apb_linear(a, w, indptr, indices, values, act_bits, s, dot_scale,
                                 sparse_scale, shift)

    return apb_linear


def _linear(layer: nn.Linear) -> Callable:
    weight, bias = layer.weight, layer.bias
    folded = type(layer) is FoldedLinear

    def linear(t):
        if folded and t.dim() != 2:
            return layer(t)  # raises, saying why
        return F.linear(t, weight, bias)

    return linear


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
