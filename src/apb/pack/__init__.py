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
fastest inference, :func:`fold_batchnorm_` folds BatchNorms into the packed layers'
epilogues (after saving: a folded model is not saved).
"""

from __future__ import annotations

from torch import nn

from . import xor
from .apb_layers import PackedAPBConv2d, PackedAPBLinear
from .backend import BACKENDS, DEFAULT_BACKEND
from .convert import PackError, pack_, pack_layer
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
from .layer import PackedLayer
from .layer_tensors import PACKED_TYPES
from .pruned_layers import PackedPrunedConv2d, PackedPrunedLinear

__all__ = [
    "BACKENDS", "DEFAULT_BACKEND", "FORMAT", "FORMAT_VERSION", "PACKED_TYPES", "PackError",
    "PackedAPBConv2d", "PackedAPBLinear", "PackedDoReFaConv2d", "PackedDoReFaLinear",
    "PackedFileInfo", "PackedFormatError", "PackedLayer", "PackedPrunedConv2d",
    "PackedPrunedLinear", "UncheckedFileWarning", "fold_batchnorm_", "load_packed", "pack_",
    "pack_layer", "packed_bytes", "packed_layers", "read_packed_info", "save_packed",
    "set_backend", "xor",
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
