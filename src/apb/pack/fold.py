r"""``fold_batchnorm_(model)``: fold eval-mode BatchNorms into the layers that feed them.

A BatchNorm in eval mode is a per-channel affine map,

.. math::

    \mathrm{BN}(y) = \gamma \frac{y - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta
    = a \odot y + b, \qquad a = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}},\quad
    b = \beta - a \odot \mu,

so when its input is a layer's output and nothing else reads that output, the layer can
apply it itself: a packed layer adds it to its epilogue (for :class:`PackedAPBConv2d` the
same kernel pass that adds the sparse correction, :func:`apb.kernels.sparse_conv2d`), a
plain ``Conv2d`` gets the folded weights of :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`
and a plain ``Linear`` those of :func:`~torch.nn.utils.fusion.fuse_linear_bn_eval`, as a
:class:`FoldedLinear`.
The BatchNorm becomes ``nn.Identity``.

**How it decides** (it folds only what the graph proves safe, and leaves the rest as it is,
so the model keeps computing the same function on any model, the zoo's or yours): which
BatchNorm follows which layer is read from the ``torch.fx`` graph (packed layers as
leaves), never from module order. A BatchNorm folds when, in that graph,

* its input is the output of a packed layer (Conv2d → ``BatchNorm2d``, Linear →
  ``BatchNorm1d``) or of a plain ``nn.Conv2d`` (→ ``BatchNorm2d``) or ``nn.Linear``
  (→ ``BatchNorm1d``) with as many channels; or such a convolution's output max-pooled
  (``conv → MaxPool2d → BatchNorm2d``, VGG-Small's order) when every channel's scale
  ``a`` is positive and finite: a map that increases with ``y`` commutes with the
  maximum (``max_i (a·y_i + b) = a·max_i y_i + b``, rounding included, since rounding is
  monotone), so the layer applies the BatchNorm before the pool and the pool stays;
* that output has no other user, the layer and the BatchNorm are each called once, and
  neither is read as an attribute anywhere else in the graph;
* the BatchNorm is in eval mode with running statistics (otherwise it normalises with
  the batch's statistics, which is not an affine map), and neither module has hooks.

A model whose ``forward`` branches on an optional argument is traced twice, with every
argument symbolic and with the arguments that have defaults at their defaults, and a
BatchNorm folds only if both graphs allow it. When the whole model does not trace (data-
dependent control flow), each submodule that does is analysed on its own, largest first;
this relies on what ordinary PyTorch code does: a submodule's own layers are called only
through that submodule's ``forward``. A Linear layer followed by a ``BatchNorm1d`` (packed,
or a plain one, then a :class:`FoldedLinear`) then accepts only 2-D input (for
``[N, L, C]`` input the BatchNorm would normalise another axis).

Inference only: the folded model computes the same function up to float rounding, but it
is no longer the model a packed file describes, so :func:`apb.pack.save_packed` refuses it
(save first, then fold).
"""

from __future__ import annotations

import inspect

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .geometry import ConvGeometry, LinearGeometry
from .layer import PackedLayer

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class _PackedLeafTracer(fx.Tracer):
    """Packed layers (and :class:`FoldedLinear`) check their inputs with Python control
    flow: keep them opaque."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (PackedLayer, FoldedLinear))
                or super().is_leaf_module(m, qualname))


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``BN(y) = a·y + b`` per channel, for an eval-mode BatchNorm."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn} tracks no running statistics; only eval-mode statistics fold")
    mean = bn.running_mean.detach().float()
    a = torch.rsqrt(bn.running_var.detach().float() + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.detach().float()
    b = -mean * a
    if bn.bias is not None:
        b = b + bn.bias.detach().float()
    return a, b


@torch.no_grad()
def fold_batchnorm_(model: nn.Module, *, across_max_pools: bool = True) -> nn.Module:
    """Fold, in place, every BatchNorm the graph proves foldable (see the module docstring)
    into the packed layer or plain ``Conv2d`` before it; leave every other one. Returns
    ``model``, marked ``apb_folded = True`` when anything was folded.
    ``across_max_pools=False`` leaves a BatchNorm after a max-pool where it is (ONNX
    Runtime's int8 quantizer runs VGG-Small 3.6× slower with it folded).

    Raises:
        ValueError: ``model`` is in training mode, or it has BatchNorms but neither it nor
            any submodule holding one can be traced by ``torch.fx`` (the message says why).
    """
    if model.training:
        raise ValueError("fold_batchnorm_ folds eval-mode statistics: call model.eval() first")
    if not any(isinstance(m, _BATCHNORMS) for m in model.modules()):
        return model
    parts, error = _traced_parts(model)
    if not any(isinstance(m, _BATCHNORMS) for part, _ in parts for m in part.modules()):
        raise ValueError(f"fold_batchnorm_ needs a torch.fx-traceable model (or submodules "
                         f"holding its BatchNorms): {error}")
    folded = sum(_fold_part(part, graphs, across_max_pools) for part, graphs in parts)
    if folded:
        model.apb_folded = True
    return model


def _traced_parts(model: nn.Module) -> tuple[list[tuple[nn.Module, list[fx.Graph]]], str]:
    """``[(module, graphs)]``: the model's graphs if it traces, else those of its largest
    traceable submodules; and the first tracing error (for the message)."""
    parts: list[tuple[nn.Module, list[fx.Graph]]] = []
    seen: set[int] = set()
    first_error = ""
    todo = [model]
    while todo:
        module = todo.pop(0)
        if id(module) in seen or _PackedLeafTracer().is_leaf_module(module, ""):
            continue
        seen.add(id(module))
        try:
            parts.append((module, _graphs(module)))
        except Exception as err:  # fx raises many kinds of errors on untraceable code
            first_error = first_error or (str(err).splitlines()[0] if str(err)
                                          else type(err).__name__)
            todo.extend(module.children())
    return parts, first_error


def _graphs(module: nn.Module) -> list[fx.Graph]:
    """The graph with every argument symbolic and, if ``forward`` has defaults, the graph
    with those at their defaults: the two paths an ``is None`` test can take."""
    graphs = [_PackedLeafTracer().trace(module)]
    defaults = {name: p.default for name, p in inspect.signature(module.forward).parameters.items()
                if p.default is not inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if defaults:
        graphs.append(_PackedLeafTracer().trace(module, concrete_args=defaults))
    return graphs


def _fold_part(part: nn.Module, graphs: list[fx.Graph], across_max_pools: bool) -> int:
    """Fold the pairs every graph of ``part`` allows; the number folded."""
    modules = dict(part.named_modules())
    pairs = set.intersection(*(_foldable(g, modules, across_max_pools) for g in graphs))
    for layer_name, bn_name in sorted(pairs):
        bn, layer = modules[bn_name], modules[layer_name]
        if isinstance(layer, PackedLayer):
            layer.fold_affine_(*batchnorm_affine(bn))
            if isinstance(layer, LinearGeometry):
                layer.fold_input_dims = 2  # BatchNorm1d normalises dim 1: the features only in 2-D
        elif isinstance(layer, nn.Linear):
            part.set_submodule(layer_name, FoldedLinear.of(fuse_linear_bn_eval(layer, bn)))
        else:
            part.set_submodule(layer_name, fuse_conv_bn_eval(layer, bn))
        part.set_submodule(bn_name, nn.Identity())
    return len(pairs)


def _foldable(graph: fx.Graph, modules: dict[str, nn.Module],
              across_max_pools: bool) -> set[tuple[str, str]]:
    """``(layer, BatchNorm)`` names whose fold this graph proves safe (module docstring)."""
    calls: dict[str, int] = {}
    attrs = [n.target for n in graph.nodes if n.op == "get_attr"]
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = set()
    for node in graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, _BATCHNORMS) or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        pool = _single_max_pool(source, modules, calls) if across_max_pools else None
        if pool is not None:  # conv -> max-pool -> BatchNorm: only increasing affine maps
            if type(bn) is not nn.BatchNorm2d or not _increasing(bn):
                continue
            source = source.args[0]
        if not (isinstance(source, fx.Node) and source.op == "call_module"
                and len(source.users) == 1 and calls[source.target] == 1
                and calls[node.target] == 1):
            continue
        layer = modules[source.target]
        read = [t for t in (node.target, source.target, pool) if t is not None]
        if any(a == t or a.startswith(t + ".") for a in attrs for t in read):
            continue  # read elsewhere as an attribute: replacing it would change that
        if _fits(layer, bn):
            pairs.add((source.target, node.target))
    return pairs


def _single_max_pool(node, modules: dict[str, nn.Module], calls: dict[str, int]) -> str | None:
    """The name of the ``nn.MaxPool2d`` that ``node`` calls, when it is called once, on
    one graph value, returns a tensor (no indices), has no hooks and nothing else reads
    its output; else None."""
    if not (isinstance(node, fx.Node) and node.op == "call_module"):
        return None
    pool = modules.get(node.target)
    if (isinstance(pool, nn.MaxPool2d) and not pool.return_indices and not _hooked(pool)
            and calls[node.target] == 1 and len(node.users) == 1 and len(node.args) == 1
            and not node.kwargs and isinstance(node.args[0], fx.Node)):
        return node.target
    return None


def _increasing(bn: nn.Module) -> bool:
    """Whether every channel's ``a`` of an eval-mode BatchNorm is positive and finite."""
    if bn.running_mean is None or bn.running_var is None:
        return False
    a, _ = batchnorm_affine(bn)
    return bool(torch.all(torch.isfinite(a) & (a > 0)))


def _fits(layer: nn.Module, bn: nn.Module) -> bool:
    """Whether ``bn`` after ``layer`` is an affine map per output channel of ``layer``."""
    if (bn.training or bn.running_mean is None or bn.running_var is None
            or _hooked(bn) or _hooked(layer)):
        return False
    if isinstance(layer, PackedLayer):
        expected = nn.BatchNorm2d if isinstance(layer, ConvGeometry) else nn.BatchNorm1d
        return type(bn) is expected and layer.rows == bn.num_features
    if type(layer) is nn.Linear:
        return type(bn) is nn.BatchNorm1d and layer.out_features == bn.num_features
    return (type(layer) is nn.Conv2d and type(bn) is nn.BatchNorm2d
            and layer.out_channels == bn.num_features)


class FoldedLinear(nn.Linear):
    """An ``nn.Linear`` with a ``BatchNorm1d`` folded in: the same layer, refusing input
    that is not ``[batch, features]`` (where the BatchNorm normalised another axis, so the
    fold would not compute the model)."""

    @classmethod
    def of(cls, linear: nn.Linear) -> FoldedLinear:
        folded = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)
        folded.load_state_dict(linear.state_dict())
        return folded.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(
                f"this Linear({self.in_features}->{self.out_features}) has a BatchNorm1d "
                f"folded in (fold_batchnorm_), which is exact for [batch, features] input "
                f"only, got shape {tuple(x.shape)}; run the model without folding")
        return super().forward(x)


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)
