r"""``fold_batchnorm_(model)``: fold eval-mode BatchNorms into the layers that feed them.

A BatchNorm in eval mode is a per-channel affine map,

.. math::

    \mathrm{BN}(y) = \gamma \frac{y - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta
    = a \odot y + b, \qquad a = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}},\quad
    b = \beta - a \odot \mu,

so when its input is a layer's output and nothing else reads that output, the layer can
apply it itself: a packed layer adds it to its epilogue (for :class:`PackedAPBConv2d` the
same kernel pass that adds the sparse correction, :func:`apb.kernels.sparse_conv2d`), a
plain ``Conv2d`` gets the folded weights of :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`.
The BatchNorm becomes ``nn.Identity``. Which BatchNorm follows which layer is read from
the model's ``torch.fx`` graph (packed layers as leaves), not from module order.

Inference only: the folded model computes the same function up to float rounding, but it
is no longer the architecture a packed file describes, so :func:`apb.pack.save_packed`
refuses it (save first, then fold).
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .layer import PackedLayer

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class _PackedLeafTracer(fx.Tracer):
    """Packed layers check their inputs with Python control flow: keep them opaque."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, PackedLayer) or super().is_leaf_module(m, qualname)


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
def fold_batchnorm_(model: nn.Module) -> nn.Module:
    """Fold, in place, every eval-mode BatchNorm whose input is the output of a packed
    layer or a plain ``Conv2d`` used only there (see the module docstring). Returns
    ``model``, marked ``apb_folded = True``.

    Raises:
        ValueError: ``model`` is in training mode, or ``torch.fx`` cannot trace it (the
            message says why).
    """
    if model.training:
        raise ValueError("fold_batchnorm_ folds eval-mode statistics: call model.eval() first")
    try:
        graph = _PackedLeafTracer().trace(model)
    except Exception as err:  # fx raises many kinds of errors on untraceable code
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"fold_batchnorm_ needs a torch.fx-traceable model: {first}") from None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], _BATCHNORMS):
            continue
        source = node.args[0] if node.args else None
        if not (isinstance(source, fx.Node) and source.op == "call_module"
                and len(source.users) == 1 and calls[source.target] == 1
                and calls[node.target] == 1):
            continue
        bn, layer = modules[node.target], modules[source.target]
        if isinstance(layer, PackedLayer) and layer.rows == bn.num_features:
            layer.fold_affine_(*batchnorm_affine(bn))
        elif (type(layer) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d)
              and layer.out_channels == bn.num_features and bn.running_mean is not None):
            model.set_submodule(source.target, fuse_conv_bn_eval(layer, bn))
        else:
            continue
        model.set_submodule(node.target, nn.Identity())
    model.apb_folded = True
    return model
