r"""Which channels of a network must go together, and their physical removal.

Removing filter ``c`` of a convolution removes channel ``c`` from every tensor that channel
flows into: the entries ``c`` of the BatchNorm after it, the input channel ``c`` of every
layer that reads it (``H·W`` consecutive columns of a Linear after a flatten), and, across a
residual addition ``a + b``, channel ``c`` of both operands, so of every layer writing to the
same residual stream. :func:`channel_groups` finds these sets from a ``torch.fx`` trace of
the model (compressed layers are leaves): every tensor carries a *channel space*; a
Conv2d / Linear opens a new space of its output channels, BatchNorm, activations, pooling and
dropout keep it, a flatten keeps it with each channel widened to ``H·W`` features, and an
addition merges the spaces of its operands (union-find). A group is one merged space; the
spaces of the network input and of its output are never pruned.

:func:`remove_channels` then slices every member in place, so the result is a smaller
dense network computing exactly what the original computes with the removed channels'
consumers ignoring them (for a full-precision network; quantizers that rescale per layer or
per filter, as binary ``α_c = mean|W_c|`` does, see the remaining weights only).

Written here rather than with a structural-pruning library because what is needed is only
the map from each tensor dimension to its channel group, over a graph whose compressed
layers (and their quantizers' state) such libraries do not know; the trace and the rules are
a page.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..nn.layers import COMPRESSED_TYPES

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU,
    nn.Identity, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
"""Modules that act on every channel alone and keep the channel dimension where it was."""
CHANNELWISE_FUNCTIONS = {
    F.relu, F.relu6, F.hardtanh, F.leaky_relu, F.gelu, F.silu, F.dropout, F.max_pool2d,
    F.avg_pool2d, F.adaptive_avg_pool2d, torch.relu, torch.sigmoid, torch.tanh,
}
CHANNELWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone"}
ADDITIONS = {operator.add, operator.iadd, torch.add}


class ChannelGraphError(ValueError):
    """The network's channels cannot be removed consistently (an operation whose channel
    mapping is unknown, a grouped convolution, a shared layer, ...)."""


@dataclass(frozen=True)
class ChannelMember:
    """One tensor dimension indexed by a group's channels.

    ``role``: ``"out"`` (weight rows and bias of a Conv2d / Linear: its filters), ``"in"``
    (weight columns: its input channels, each ``expansion`` consecutive columns) or
    ``"norm"`` (the affine entries and running statistics of a BatchNorm).
    """

    module: str
    role: str
    expansion: int = 1


@dataclass
class ChannelGroup:
    """Channels that are removed together: ``size`` of them, shared by ``members``."""

    name: str
    size: int
    members: list[ChannelMember] = field(default_factory=list)

    @property
    def producers(self) -> list[str]:
        """The layers whose filters make these channels (``role == "out"``)."""
        return [m.module for m in self.members if m.role == "out"]

    def with_role(self, role: str) -> list[ChannelMember]:
        return [m for m in self.members if m.role == role]


class _LayerTracer(fx.Tracer):
    """Compressed layers are leaves: their quantizers are part of the layer, not the graph."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, COMPRESSED_TYPES) or super().is_leaf_module(m, qualname)


@dataclass
class _Flow:
    """A tensor's channel dimension (dim 1): its space, and features per channel (a flatten
    of ``C × H × W`` gives ``H·W``)."""

    space: int
    expansion: int = 1


class _Spaces:
    """Union-find over channel spaces, each with its size and members."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.members: list[list[ChannelMember]] = []
        self.frozen: list[bool] = []

    def new(self, size: int, frozen: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.members.append([])
        self.frozen.append(frozen)
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int, where: str) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if self.size[a] != self.size[b]:
            raise ChannelGraphError(f"{where} adds tensors of {self.size[a]} and {self.size[b]} "
                                    "channels")
        self.parent[b] = a
        self.members[a] += self.members[b]
        self.frozen[a] = self.frozen[a] or self.frozen[b]
        return a

    def add(self, space: int, member: ChannelMember) -> None:
        self.members[self.find(space)].append(member)


def example_input(model: nn.Module) -> torch.Tensor:
    """Two zero images of ``model.input_shape`` on the model's device."""
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ChannelGraphError("the model has no input_shape attribute; pass example_input")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else "cpu"
    return torch.zeros(2, *shape, device=device)


@torch.no_grad()
def channel_groups(model: nn.Module, example: torch.Tensor | None = None
                   ) -> list[ChannelGroup]:
    """The prunable channel groups of ``model`` in the order their first producer runs
    (see the module docstring). ``example`` is one input batch (default:
    :func:`example_input`); it fixes the spatial sizes a flatten multiplies channels by.

    Raises :class:`ChannelGraphError` naming the first operation whose channels cannot be
    followed.
    """
    example = example_input(model) if example is None else example
    try:
        graph_module = fx.GraphModule(model, _LayerTracer().trace(model))
    except Exception as err:  # fx raises many kinds for data-dependent control flow
        raise ChannelGraphError(f"the model cannot be traced by torch.fx "
                                f"({type(err).__name__}: {err})") from None
    was_training = model.training
    model.eval()  # BatchNorm in training mode would update its statistics
    try:
        ShapeProp(graph_module).propagate(example)
    except Exception as err:  # whatever the forward raises on a wrong example
        raise ChannelGraphError(f"the model does not run on an example input of shape "
                                f"{tuple(example.shape)} ({type(err).__name__}: {err})") from None
    finally:
        model.train(was_training)
    modules = dict(model.named_modules())
    spaces = _Spaces()
    flows: dict[fx.Node, _Flow | None] = {}
    calls: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            shape = _shape(node)
            flows[node] = None if shape is None or len(shape) < 2 else _Flow(
                spaces.new(shape[1], frozen=True))
        elif node.op == "call_module":
            module = modules[node.target]
            calls[node.target] = calls.get(node.target, 0) + 1
            if calls[node.target] > 1 and isinstance(module, (nn.Conv2d, nn.Linear) + NORMS):
                raise ChannelGraphError(f"layer {node.target!r} is called more than once; a "
                                        "shared layer's channels cannot be removed for one use")
            flows[node] = _module_flow(node, module, _input_flow(node, flows), spaces)
        elif node.op in ("call_function", "call_method"):
            flows[node] = _function_flow(node, flows, spaces)
        elif node.op == "output":
            for arg in node.all_input_nodes:
                if flows.get(arg) is not None:
                    spaces.frozen[spaces.find(flows[arg].space)] = True
        elif node.op == "get_attr":
            raise ChannelGraphError(f"the forward reads the tensor {node.target!r} directly; "
                                    "its channels cannot be followed")
    order = {name: i for i, name in enumerate(modules)}
    groups = []
    for space in range(len(spaces.parent)):
        if spaces.find(space) != space or spaces.frozen[space]:
            continue
        members = sorted(spaces.members[space], key=lambda m: order[m.module])
        first = next(m.module for m in members if m.role == "out")
        groups.append(ChannelGroup(first, spaces.size[space], members))
    return sorted(groups, key=lambda g: order[g.name])


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return None if meta is None or not hasattr(meta, "shape") else tuple(meta.shape)


def _input_flow(node: fx.Node, flows: dict) -> _Flow | None:
    inputs = [a for a in node.args if isinstance(a, fx.Node)]
    return flows.get(inputs[0]) if inputs else None


def _module_flow(node: fx.Node, module: nn.Module, flow: _Flow | None, spaces: _Spaces
                 ) -> _Flow | None:
    name = node.target
    in_shape = _shape(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ChannelGraphError(f"{name!r} is a grouped convolution (groups="
                                    f"{module.groups}): its input and output channels are tied; "
                                    "only groups=1 convolutions can lose filters")
        if flow is None or flow.expansion != 1:
            raise ChannelGraphError(f"{name!r} reads a tensor whose channels cannot be followed")
        spaces.add(flow.space, ChannelMember(name, "in"))
        out = spaces.new(module.out_channels)
        spaces.add(out, ChannelMember(name, "out"))
        return _Flow(out)
    if isinstance(module, nn.Linear):
        if flow is None or in_shape is None or len(in_shape) != 2:
            raise ChannelGraphError(f"{name!r} is a Linear applied to a tensor of shape "
                                    f"{in_shape}; only (batch, features) inputs can be followed")
        spaces.add(flow.space, ChannelMember(name, "in", flow.expansion))
        out = spaces.new(module.out_features)
        spaces.add(out, ChannelMember(name, "out"))
        return _Flow(out)
    if isinstance(module, NORMS):
        if flow is None or flow.expansion != 1 or not module.affine:
            raise ChannelGraphError(f"{name!r}: a BatchNorm must see one entry per channel "
                                    "and be affine to be pruned with its channels")
        spaces.add(flow.space, ChannelMember(name, "norm"))
        return flow
    if isinstance(module, nn.Flatten):
        return _flatten(name, flow, in_shape, module.start_dim, module.end_dim)
    if isinstance(module, CHANNELWISE_MODULES):
        return flow
    raise ChannelGraphError(f"{name!r} is a {type(module).__name__}, whose effect on channels "
                            "is unknown; filter pruning follows Conv2d, Linear, BatchNorm, "
                            "pooling, activations, flatten and residual additions")


def _flatten(where: str, flow: _Flow | None, shape: tuple[int, ...] | None, start: int,
             end: int) -> _Flow | None:
    if flow is None or shape is None:
        return flow
    if start != 1 or end not in (-1, len(shape) - 1):
        raise ChannelGraphError(f"{where} flattens dims {start}..{end}; only flattening "
                                "everything after the batch dimension keeps channels apart")
    spatial = 1
    for s in shape[2:]:
        spatial *= s
    return _Flow(flow.space, flow.expansion * spatial)


def _function_flow(node: fx.Node, flows: dict, spaces: _Spaces) -> _Flow | None:
    target = node.target
    inputs = [flows.get(a) for a in node.args if isinstance(a, fx.Node)]
    where = f"the operation {node.name!r}"
    if target in ADDITIONS or target == "add":
        tensors = [f for f in inputs if f is not None]
        if len(tensors) != len(inputs) or not tensors:
            raise ChannelGraphError(f"{where} adds a tensor whose channels cannot be followed")
        merged = tensors[0].space
        for other in tensors[1:]:
            if other.expansion != tensors[0].expansion:
                raise ChannelGraphError(f"{where} adds tensors of different layouts")
            merged = spaces.union(merged, other.space, where)
        return _Flow(merged, tensors[0].expansion)
    if target in CHANNELWISE_FUNCTIONS or target in CHANNELWISE_METHODS:
        return inputs[0] if inputs else None
    if target in (torch.flatten, "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return _flatten(where, inputs[0] if inputs else None, _shape(node.args[0]), start, end)
    name = getattr(target, "__name__", str(target))
    raise ChannelGraphError(f"{where} calls {name}, whose effect on channels is unknown; filter "
                            "pruning follows Conv2d, Linear, BatchNorm, pooling, activations, "
                            "flatten and residual additions")


def _check_keep(group: ChannelGroup, keep: torch.Tensor) -> torch.Tensor:
    keep = torch.as_tensor(keep, dtype=torch.long).reshape(-1)
    if keep.numel() == 0:
        raise ValueError(f"group {group.name!r} would lose all {group.size} channels; keep at "
                         "least one")
    if int(keep.min()) < 0 or int(keep.max()) >= group.size:
        raise ValueError(f"group {group.name!r} has {group.size} channels; kept indices must lie "
                         f"in 0..{group.size - 1}")
    if keep.unique().numel() != keep.numel():
        raise ValueError(f"group {group.name!r}: kept channel indices repeat")
    return keep.sort().values


def _slice(module: nn.Module, attr: str, dim: int, index: torch.Tensor) -> None:
    value = getattr(module, attr, None)
    if value is None:
        return
    sliced = value.detach().index_select(dim, index.to(value.device)).clone()
    if isinstance(value, nn.Parameter):
        setattr(module, attr, nn.Parameter(sliced, requires_grad=value.requires_grad))
    else:
        setattr(module, attr, sliced)


@torch.no_grad()
def remove_channels(model: nn.Module, groups: list[ChannelGroup],
                    keep: dict[str, torch.Tensor]) -> nn.Module:
    """Keep, in place, only the channels ``keep[group.name]`` (indices) of each group named in
    ``keep``; every member layer is sliced and its channel counts updated, and compressed
    layers' quantizers follow their new shapes. Returns ``model``.

    ``groups`` must come from :func:`channel_groups` of this very model (sizes are checked).
    """
    by_name = {g.name: g for g in groups}
    unknown = sorted(set(keep) - set(by_name))
    if unknown:
        raise ValueError(f"no channel group named {', '.join(unknown)}; groups: "
                         f"{', '.join(by_name)}")
    plan = []
    for name, index in keep.items():  # every check before anything changes
        group = by_name[name]
        index = _check_keep(group, index)
        for member in group.members:
            module = model.get_submodule(member.module)
            _check_size(module, member, group)
            if isinstance(module, COMPRESSED_TYPES) and not module.weight_quantizer.resizable:
                raise TypeError(f"layer {member.module!r} is compressed with "
                                f"{type(module.weight_quantizer).__name__}, whose state is "
                                "shaped like its weight: its channels cannot be removed")
            plan.append((member, module, index))
    touched: set[str] = set()
    for member, module, index in plan:
        touched.add(member.module)
        if member.role == "out":
            _slice(module, "weight", 0, index)
            _slice(module, "bias", 0, index)
        elif member.role == "in":
            cols = index if member.expansion == 1 else (
                index[:, None] * member.expansion + torch.arange(member.expansion)
            ).reshape(-1)
            _slice(module, "weight", 1, cols)
        else:
            for attr in ("weight", "bias", "running_mean", "running_var"):
                _slice(module, attr, 0, index)
            module.num_features = index.numel()
        if isinstance(module, nn.Conv2d):
            module.out_channels, module.in_channels = module.weight.shape[:2]
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = module.weight.shape
    for name in touched:
        module = model.get_submodule(name)
        if isinstance(module, COMPRESSED_TYPES):
            module.weight_quantizer.resize(module.weight)
    return model


def _check_size(module: nn.Module, member: ChannelMember, group: ChannelGroup) -> None:
    if member.role == "norm":
        size = module.num_features
    elif member.role == "out":
        size = module.weight.shape[0]
    else:
        size = module.weight.shape[1] // member.expansion
    if size != group.size:
        raise ValueError(f"layer {member.module!r} has {size} channels where group "
                         f"{group.name!r} has {group.size}: the groups are not this model's")
