r"""``pack_(model)``: turn every trained compressed layer into its packed inference module.

Per layer, from the training layer's weight quantizer (what it computes with in eval mode,
so the packed layer reproduces the training model's logits):

* :class:`apb.nn.APBWeightQuantizer`: ``B = sign(W)``, ``α`` (``clamp_min(1e-8)``, as the
  forward uses it), band mask ``M`` from :meth:`band_mask`, and the CSR correction
  ``S = (1 − M) ⊙ (W − α sign(W))`` (fp16 values when ``value_bits == 16``);
* :class:`apb.nn.BinaryWeightQuantizer` and 1-bit :class:`apb.nn.DoReFaWeightQuantizer`:
  ``B`` and ``α = mean|W|`` (per channel or per layer), no ``S``;
* ``k``-bit DoReFa: the codes ``c = round(L·(tanh W / (2 max|tanh W|) + ½))`` as bit-planes.
* :class:`apb.nn.PruneQuantizer` once it quantizes (pruning + ``k``-bit quantization): the
  keep mask ``P``, the per-channel scale ``α_c`` and the codes ``c`` of the kept weights
  (``k = 1``: ``c = [W ≥ 0]``; ``k ≥ 2``: ``c = round(L·(clamp(W/α_c, −1, 1) + 1)/2)``),
  computed with the quantizer's own operations.

Activation quantizers carry over as their parameters: none (fp), sign (1 bit), or the clip
scale of :class:`apb.nn.UniformActivation`. Anything else (magnitude pruning with
full-precision values, a pruning + quantization layer that has not started quantizing, a
custom quantizer) raises :class:`PackError` naming the layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..memory import FP16_BITS
from ..nn import (
    APBWeightQuantizer,
    BinaryWeightQuantizer,
    DoReFaWeightQuantizer,
    PruneQuantizer,
    SignActivation,
    UniformActivation,
)
from ..nn.layers import COMPRESSED_TYPES, QuantConv2d
from .apb_layers import PackedAPBConv2d, PackedAPBLinear
from .bits import pack_bits
from .csr import csr_index_dtype, csr_indptr_dtype
from .dorefa_layers import PackedDoReFaConv2d, PackedDoReFaLinear
from .layer import PackedLayer
from .pruned_layers import PackedPrunedConv2d, PackedPrunedLinear

PACKABLE = ("apb", "bnn", "dorefa", "prune_quant")


class PackError(ValueError):
    """A layer cannot be packed: its method has no packed form, or its values are not finite."""


def pack_(
    model: nn.Module,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    *,
    backend: str | None = None,
) -> nn.Module:
    """Replace, in place, every compressed layer of ``model`` (``QuantConv2d`` /
    ``QuantLinear``) by its packed module; ``filter_fn(module, name)`` picks which ones
    (default: all). ``backend`` is ``"reference"`` or ``"kernels"`` (default:
    :data:`apb.pack.backend.DEFAULT_BACKEND`). Returns ``model`` (or the packed layer when
    ``model`` itself is a compressed layer).

    Raises :class:`PackError` naming the first layer that cannot be packed; the model is
    then left unchanged.

    >>> apb.pack_(model.eval())
    >>> apb.pack.save_packed(model, "model.safetensors")
    """
    targets = [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, COMPRESSED_TYPES) and (filter_fn is None or filter_fn(m, name))
    ]
    packed = [(name, pack_layer(m, name=name, backend=backend)) for name, m in targets]
    for name, new in packed:
        if not name:
            return new
        model.set_submodule(name, new)
    return model


@torch.no_grad()
def pack_layer(layer: nn.Module, *, name: str = "layer", backend: str | None = None
               ) -> PackedLayer:
    """The packed module of one compressed layer (see the module docstring)."""
    if not isinstance(layer, COMPRESSED_TYPES):
        raise PackError(f"{name!r} is a {type(layer).__name__}, not a compressed layer")
    label = f"layer {name!r}"
    weight = layer.weight.detach().float().cpu()  # packed layers run on the CPU
    _require_finite(weight, f"{label}: its weight")
    common = {"bias": _bias(layer, label), **_activation(layer, label), "backend": backend}
    if isinstance(layer, QuantConv2d):
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise PackError(
                f"{label}: only groups=1 convolutions with numeric zero padding are packed, "
                f"got groups={layer.groups}, padding={layer.padding!r}, "
                f"padding_mode={layer.padding_mode!r}"
            )
        geometry = {"in_channels": layer.in_channels, "out_channels": layer.out_channels,
                    "kernel_size": layer.kernel_size, "stride": layer.stride,
                    "padding": layer.padding, "dilation": layer.dilation}
        classes = (PackedAPBConv2d, PackedDoReFaConv2d, PackedPrunedConv2d)
    else:
        geometry = {"in_features": layer.in_features, "out_features": layer.out_features}
        classes = (PackedAPBLinear, PackedDoReFaLinear, PackedPrunedLinear)
    wq = layer.weight_quantizer
    w2d = weight.reshape(weight.shape[0], -1)
    if isinstance(wq, APBWeightQuantizer):
        alpha = wq.alpha.detach().float().cpu().clamp_min(1e-8).reshape(-1)
        mask = wq.band_mask(layer.weight).cpu().reshape(w2d.shape)
        csr = _csr_correction(w2d, alpha, ~mask, wq.value_bits, label)
        fields = {"alpha": alpha, "csr": csr, "value_bits": wq.value_bits, "method": "apb"}
    elif isinstance(wq, BinaryWeightQuantizer):
        fields = {"alpha": wq.scale(weight).reshape(-1).float(), "method": "bnn"}
    elif isinstance(wq, DoReFaWeightQuantizer) and wq.bits == 1:
        fields = {"alpha": weight.abs().mean().reshape(1), "method": "dorefa"}
    elif isinstance(wq, DoReFaWeightQuantizer):
        planes = _dorefa_code_planes(weight, wq.bits)
        return classes[1](**geometry, weight_planes=planes, **common)
    elif isinstance(wq, PruneQuantizer) and bool(wq.quantizing):
        on_device = layer.weight.detach().float()  # the quantizer's buffers live there
        alpha = wq.scale(on_device).reshape(-1).float().cpu()
        _require_finite(alpha, f"{label}: its scale alpha")
        keep, codes = _pruned_codes(wq, on_device)
        planes = pack_bits(torch.stack([(codes >> q) & 1 for q in range(wq.bits)]))
        return classes[2](**geometry, keep_bits=pack_bits(keep), code_planes=planes,
                          alpha=alpha, **common)
    else:
        not_yet = (" before it started quantizing (train it to the end)"
                   if isinstance(wq, PruneQuantizer) else "")
        raise PackError(
            f"{label} is compressed with {type(wq).__name__} (method {wq.method!r}){not_yet}, "
            f"which has no packed form; packable methods: {', '.join(PACKABLE)}"
        )
    _require_finite(fields["alpha"], f"{label}: its scale alpha")
    return classes[0](**geometry, sign_bits=pack_bits(w2d < 0), **fields, **common)


def _csr_correction(w2d: Tensor, alpha: Tensor, full_precision: Tensor, value_bits: int,
                    label: str) -> tuple[Tensor, Tensor, Tensor] | None:
    """CSR of ``S = W − α sign(W)`` at the full-precision positions (row-major, so the
    column indices of each row increase)."""
    rows, cols = w2d.shape
    r, c = full_precision.nonzero(as_tuple=True)
    if r.numel() == 0:
        return None
    a = alpha if alpha.numel() == 1 else alpha[r]
    w = w2d[r, c]
    values = w - a * torch.where(w < 0, -1.0, 1.0)
    if value_bits == FP16_BITS:
        values = values.half()
        _require_finite(values, f"{label}: its full-precision corrections in float16")
    counts = torch.bincount(r, minlength=rows)
    indptr = torch.zeros(rows + 1, dtype=torch.int64)
    indptr[1:] = counts.cumsum(0)
    nnz = r.numel()
    return (indptr.to(csr_indptr_dtype(nnz)), c.to(csr_index_dtype(cols)), values)


def _dorefa_code_planes(weight: Tensor, bits: int) -> Tensor:
    """Bit-planes ``[bits, M, ceil(K/64)]`` of the DoReFa codes, computed exactly as
    :class:`apb.nn.DoReFaWeightQuantizer` computes them."""
    levels = (1 << bits) - 1
    t = torch.tanh(weight)
    x = t / (2 * t.abs().max().clamp_min(1e-12)) + 0.5
    codes = torch.round(x * levels).to(torch.uint8).reshape(weight.shape[0], -1)
    return pack_bits(torch.stack([(codes >> q) & 1 for q in range(bits)]))


def _pruned_codes(wq: PruneQuantizer, weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(keep [M, K] bool, codes [M, K] uint8, 0 where pruned)`` of a quantizing
    :class:`apb.nn.PruneQuantizer`, with the operations of its forward."""
    rows = weight.shape[0]
    keep = wq.keep.reshape(rows, -1)
    if wq.bits == 1:
        codes = (weight >= 0).to(torch.uint8)  # sign(0) = +1: code 1
    else:
        levels = (1 << wq.bits) - 1
        x = ((weight / wq.scale(weight)).clamp(-1, 1) + 1) / 2
        codes = torch.round(x * levels).to(torch.uint8)
    return keep.cpu(), (codes.reshape(rows, -1) * keep).cpu()


def _bias(layer: nn.Module, label: str) -> Tensor | None:
    if layer.bias is None:
        return None
    bias = layer.bias.detach().float().cpu().clone()
    _require_finite(bias, f"{label}: its bias")
    return bias


def _activation(layer: nn.Module, label: str) -> dict:
    aq = layer.act_quantizer
    if aq is None:
        return {"act_bits": 32, "act_scale": None}
    if isinstance(aq, SignActivation):
        return {"act_bits": 1, "act_scale": None}
    if isinstance(aq, UniformActivation):
        scale = aq.act_scale.detach().float().cpu().reshape(1).clone()
        _require_finite(scale, f"{label}: its activation clip scale")
        return {"act_bits": aq.bits, "act_scale": scale}
    raise PackError(
        f"{label} quantizes its input with {type(aq).__name__}, which has no packed form; "
        "packable: none (fp), SignActivation, UniformActivation"
    )


def _require_finite(t: Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise PackError(f"{what} holds {bad} NaN/Inf value(s); a model with them cannot be packed")
