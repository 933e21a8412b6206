"""Packed pruning + quantization layers (apb.pack.PackedPrunedConv2d / PackedPrunedLinear):
the training model's logits, the file's two layouts (bitmap and CSR) at the bytes the
summary predicts, and the checks on damaged tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import apb
import apb.models
from _packing import (
    ODD_INPUT,
    TOLERANCE,
    odd_model,
    one_thread,  # noqa: F401  (autouse fixture)
    packed_copy,
    prepare,
    relative_error,
)
from apb.methods import PruneQuantConfig
from apb.nn import compressed_layers
from apb.pack import PackedFormatError, PackedPrunedConv2d, PackedPrunedLinear, PackError
from apb.pack.bits import pack_bits, unpack_bits
from apb.pack.header import content_digest


def quantizing(model):
    """Finish the pruning schedule and start quantizing, as the end of training does."""
    for _, layer in compressed_layers(model):
        layer.weight_quantizer.set_progress(1.0, layer.weight)
    return model


@pytest.mark.parametrize("act_bits", [32, 1, 2])
@pytest.mark.parametrize("bits", [1, 2, 3])
def test_packed_pruned_layers_reproduce_the_training_logits(bits, act_bits):
    config = PruneQuantConfig(sparsity=0.7, bits=bits, act_bits=act_bits)
    model = quantizing(prepare(odd_model("relu"), config, ODD_INPUT, seed=bits))
    x = torch.randn(*ODD_INPUT)
    with torch.no_grad():
        want = model(x)
        packed = packed_copy(model)
        got = packed(x)
    kinds = {type(m) for m in packed.modules()}
    assert {PackedPrunedConv2d, PackedPrunedLinear} <= kinds
    assert relative_error(got, want) < TOLERANCE
    assert apb.summary(packed).model_bytes == apb.summary(model).model_bytes


def test_pruned_values_are_the_quantizer_levels():
    """Ŵ read back from the packed layer (α, mask, codes) equals the quantizer's forward."""
    model = quantizing(prepare(odd_model("relu"), PruneQuantConfig(sparsity=0.6, bits=2),
                               ODD_INPUT))
    layer = model[3]
    w_hat = layer.quantized_weight().detach().reshape(layer.weight.shape[0], -1)
    packed = packed_copy(model)[3]
    k = packed.cols
    keep = unpack_bits(packed.keep_bits, k).float()
    codes = sum((1 << q) * unpack_bits(packed.code_planes[q], k).float()
                for q in range(packed.weight_bits))
    levels = packed.weight_levels
    rebuilt = packed.alpha[:, None] * keep * (2 * codes - levels) / levels
    assert torch.allclose(rebuilt, w_hat, rtol=1e-6, atol=1e-7)
    assert abs(1 - packed.nnz / packed.n_weights - 0.6) < 0.01


@pytest.mark.parametrize("sparsity,layout", [(0.5, "bitmap"), (0.97, "csr")])
def test_pruned_file_round_trip_at_the_predicted_bytes(tmp_path, sparsity, layout):
    from safetensors import safe_open

    torch.manual_seed(0)
    model = apb.models.create("lenet5")
    apb.compress_(model, PruneQuantConfig(sparsity=sparsity, bits=1))
    model = quantizing(model).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        want = model(x)
        predicted = apb.summary(model).model_bytes
        apb.pack_(model)
        info = apb.pack.save_packed(model, tmp_path / "m.safetensors")
        loaded = apb.pack.load_packed(tmp_path / "m.safetensors")
        got = loaded(x)
    assert info.model_bytes == predicted
    assert relative_error(got, want) < TOLERANCE
    with safe_open(tmp_path / "m.safetensors", "np") as f:
        names = set(f.keys())
    key = "keep_bits" if layout == "bitmap" else "csr_indices"
    assert any(n.endswith(key) for n in names)
    for (_, a), (_, b) in zip(apb.pack.packed_layers(model), apb.pack.packed_layers(loaded)):
        assert torch.equal(a.keep_bits, b.keep_bits)
        assert torch.equal(a.code_planes, b.code_planes)


def test_pack_refuses_prune_quant_before_quantization():
    model = prepare(odd_model("relu"), PruneQuantConfig(sparsity=0.5), ODD_INPUT)
    with pytest.raises(PackError, match=r"layer '3'.*before it started quantizing"):
        apb.pack_(model)


def test_pruned_layer_checks_its_tensors():
    keep = pack_bits(torch.tensor([[1, 0, 1]], dtype=torch.uint8))
    codes = pack_bits(torch.tensor([[[1, 1, 0]]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="0 at pruned positions"):
        PackedPrunedLinear(3, 1, keep_bits=keep, code_planes=codes, alpha=torch.ones(1))
    past = pack_bits(torch.tensor([[1, 0, 1, 1]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="past the last column"):
        PackedPrunedLinear(3, 1, keep_bits=past, code_planes=codes & 0, alpha=torch.ones(1))


def test_damaged_pruned_file_is_refused(tmp_path):
    from safetensors.numpy import load, save

    torch.manual_seed(1)
    model = apb.models.create("lenet5")
    apb.compress_(model, PruneQuantConfig(sparsity=0.5, bits=1))
    apb.pack_(quantizing(model).eval())
    path = tmp_path / "m.safetensors"
    apb.pack.save_packed(model, path)
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8:8 + n])["__metadata__"]
    tensors = load(data)
    name = next(k for k in tensors if k.endswith("keep_bits"))
    bad = dict(tensors)
    bad[name] = np.zeros_like(tensors[name])  # nnz no longer matches
    with pytest.raises(PackedFormatError, match="sha256"):
        (tmp_path / "bad.safetensors").write_bytes(save(bad, metadata=metadata))
        apb.pack.load_packed(tmp_path / "bad.safetensors")
    metadata["sha256"] = content_digest(metadata, bad)  # re-signed: the check behind it
    (tmp_path / "bad.safetensors").write_bytes(save(bad, metadata=metadata))
    with pytest.raises(PackedFormatError, match="kept weights"):
        apb.pack.load_packed(tmp_path / "bad.safetensors")
