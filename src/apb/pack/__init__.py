"""Packed inference: trained compressed layers as bits + sparse corrections, run with
popcount kernels, saved as safetensors.

>>> apb.pack_(model.eval())                    # in place, like torchao's quantize_
>>> apb.pack.save_packed(model, "lenet.safetensors")
>>> model = apb.pack.load_packed("lenet.safetensors")          # a model of apb.models
>>> with torch.device("meta"):
...     skeleton = MyNet()                                       # any other model
>>> model = apb.pack.load_packed("mynet.safetensors", model=skeleton)

Layers: :class:`PackedAPBConv2d` / :class:`PackedAPBLinear` (APB, and the binary baselines
without a sparse part), :class:`PackedDoReFaConv2d` / :class:`PackedDoReFaLinear`
(DoReFa ``k``-bit weights) and :class:`PackedPrunedConv2d` / :class:`PackedPrunedLinear`
(pruning + ``k``-bit quantization, ``prune_quant``). Kernels run through ``torch.ops.apb.*`` custom ops
(:mod:`apb.pack.ops`) on the backend each layer holds: ``"reference"`` (pure torch) or
``"kernels"`` (the compiled popcount kernels); see :mod:`apb.pack.backend`. For the
fastest inference, :func:`optimize_for_inference_` folds BatchNorms into the packed layers'
epilogues (:func:`fold_batchnorm_`), runs a full-precision stem channels-last, each
full-precision convolution and Linear layer on the fastest of torch's algorithms and
apb's float32 kernels (:class:`TunedConv2d`, :class:`TunedLinear`) and
max-pooling with a compiled kernel (after saving: a folded model is not saved); then
:class:`PackedRuntime` runs the network as one planned function of direct kernel calls. For transformers,
:func:`set_input_precision` ``(model, "int8")`` runs the Linear layers with float inputs on
the int8 fast path (:func:`apb.kernels.linear_1xf`), at about 1 % relative error.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from . import xor
from .apb_layers import PackedAPBConv2d, PackedAPBLinear
from .backend import BACKENDS, DEFAULT_BACKEND
from .convert import PackError, pack_, pack_layer
from .dense import TunedConv2d, TunedLinear
from .dorefa_layers import PackedDoReFaConv2d, PackedDoReFaLinear
from .fold import fold_batchnorm_
from .format import load_packed, packed_bytes, read_packed_info, save_packed
from .header import (
    FORMAT,
    FORMAT_VERSION,
    PackedFileInfo,
    PackedFormatError,
    UncheckedFileWarning,
)
from .inference import FastMaxPool2d, optimize_for_inference_
from .layer import INPUT_PRECISIONS, PackedLayer, check_input_precision
from .layer_tensors import PACKED_TYPES
from .pruned_layers import PackedPrunedConv2d, PackedPrunedLinear
from .runtime import PackedRuntime

__all__ = [
    "BACKENDS", "DEFAULT_BACKEND", "FORMAT", "FastMaxPool2d", "FORMAT_VERSION", "INPUT_PRECISIONS",
    "PACKED_TYPES", "PackError",
    "PackedAPBConv2d", "PackedAPBLinear", "PackedDoReFaConv2d", "PackedDoReFaLinear",
    "PackedFileInfo", "PackedFormatError", "PackedLayer", "PackedPrunedConv2d", "PackedRuntime",
    "PackedPrunedLinear", "UncheckedFileWarning", "fold_batchnorm_", "load_packed",
    "optimize_for_inference_", "pack_",
    "pack_layer", "packed_bytes", "packed_layers", "read_packed_info", "save_packed",
    "set_backend", "set_input_precision", "TunedConv2d", "TunedLinear", "xor",
]


def packed_layers(model: nn.Module):
    """``(name, layer)`` for every packed layer of ``model``, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, PackedLayer):
            yield name, module


def set_backend(model: nn.Module, backend: str) -> nn.Module:
    """Run every packed layer of ``model`` on ``backend`` (``"reference"`` or ``"kernels"``)."""
    for _, layer in packed_layers(model):
        layer.set_backend(backend)
    return model


def set_input_precision(model: nn.Module, precision: str,
                        filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Run the packed layers of ``model`` that take float32 inputs at ``precision``:
    ``"exact"`` (the default of every packed layer: the training model's output, to float
    rounding) or ``"int8"`` (each input row quantized to int8, symmetric per row, then an
    exact integer product by table lookup, :func:`apb.kernels.linear_1xf`: about 1 %
    relative error, several times faster on transformer Linear layers). ``filter_fn(layer,
    name)`` picks layers (default: all). ``"int8"`` applies to every picked layer that
    :attr:`~PackedLayer.takes_int8_inputs` (APB and binary ``PackedAPBLinear`` with
    ``act_bits = 32``); the others keep computing as they do. Not saved: a loaded model
    starts exact. Returns ``model``.

    Raises:
        ValueError: an unknown precision, or ``"int8"`` when no picked layer takes it.
    """
    check_input_precision(precision)
    picked = [(name, layer) for name, layer in packed_layers(model)
              if filter_fn is None or filter_fn(layer, name)]
    takers = [layer for _, layer in picked if precision == "exact" or layer.takes_int8_inputs]
    if not takers and precision != "exact":
        raise ValueError(
            f"no packed layer{' picked' if filter_fn else ''} takes {precision} inputs "
            f"({len(picked)} packed layer(s)): only APB / binary Linear layers with "
            "full-precision inputs (act_bits=32) do; pack the model first (apb.pack_)"
        )
    for layer in takers:
        layer.set_input_precision(precision)
    return model
