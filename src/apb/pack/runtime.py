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

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.modules import module as _module_globals  # global hooks: every module's

from .dense import TunedConv2d, TunedLinear
from .fold import _PackedLeafTracer
from .inference import FastMaxPool2d
from .runtime_steps import (
    _ACTIVATION_BOUNDS,
    _add,
    _as_array,
    _as_tensor,
    _block_end,
    _flatten,
    _generic,
    _module_step,
    _relu,
    _Step,
)

_RELU_FUNCTIONS = (F.relu, torch.relu)
_ADD_FUNCTIONS = (operator.add, torch.add)


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
        return (isinstance(m, (FastMaxPool2d, TunedConv2d, TunedLinear))
                or super().is_leaf_module(m, qualname))


class _NotPlannable(Exception):
    pass


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
        self._fuse_pooled_activations()
        self._fuse_activations()
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

    def _fuse_pooled_activations(self) -> None:
        """``pool(act(x))`` as ``act(pool(x))`` in the pool's step, for a max-pool whose
        input is a ReLU or Hardtanh read by nothing else, of a value read by nothing else
        and not made by a packed layer (whose kernel applies the bounds for free). The
        activation is non-decreasing, so it commutes with the maximum exactly; applied as
        the pool stores its output, it touches a quarter of the values (a 2 × 2 stride) or
        fewer: ResNet-18's stem ReLU was a pass over 3.2 MB of its output."""
        by_node = {step.node: step for step in self.steps}
        fused: dict[_Step, _Step] = {}
        drop: set[_Step] = set()
        for pool in self.steps:
            act = by_node.get(pool.inputs[0]) if len(pool.inputs) == 1 else None
            if (pool.kind != "max_pool2d" or act is None or act.kind not in _ACTIVATION_BOUNDS
                    or len(act.inputs) != 1 or len(act.node.users) != 1
                    or len(act.inputs[0].users) != 1):
                continue
            producer = by_node.get(act.inputs[0])
            if producer is not None and producer.kind.startswith("apb_"):
                continue
            bounds = _ACTIVATION_BOUNDS[act.kind](act)
            fused[pool] = _Step(pool.node, pool.fn.bounded(act.fn, *bounds), act.inputs,
                                pool.takes, f"{pool.kind}+{act.kind}")
            drop.add(act)
        self.steps = [fused.get(step, step) for step in self.steps if step not in drop]

    def _fuse_activations(self) -> None:
        """``act(layer(x))`` as one step for a layer read only by a ReLU or Hardtanh whose
        kernel has the bounds in its epilogue (a packed convolution or Linear layer, a tuned
        convolution where it runs the direct kernel): one pass over the output instead of
        two. Block ends are fused before, so a convolution with a residual is not here."""
        by_node = {step.node: step for step in self.steps}
        fused: dict[_Step, _Step] = {}  # the layer's step -> the fused one
        drop: set[_Step] = set()
        for act in self.steps:
            bounds = _ACTIVATION_BOUNDS.get(act.kind)
            layer = by_node.get(act.inputs[0]) if len(act.inputs) == 1 else None
            if (bounds is None or layer is None or not hasattr(layer.fn, "bounded")
                    or len(layer.node.users) != 1):
                continue
            fused[layer] = _Step(act.node, layer.fn.bounded(act.fn, *bounds(act)),
                                 layer.inputs, layer.takes, f"{layer.kind}+{act.kind}")
            drop.add(act)
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
                if kinds[n] == step.takes or step.takes == "any":
                    args.append(names[n])
                elif step.takes == "tensor":  # a view of an array: free
                    args.append(f"_as_tensor({names[n]})")
                else:
                    # An array from a tensor may be a copy (a channels-last stem's output to
                    # NCHW): made once, for every later step that reads it.
                    lines.append(f"    {names[n]} = _as_array({names[n]})")
                    kinds[n] = "array"
                    args.append(names[n])
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
