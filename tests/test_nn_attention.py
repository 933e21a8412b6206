"""SplitMultiheadAttention computes what nn.MultiheadAttention computes, so swapping it in
(to compress the projections) changes nothing until the projections are compressed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import apb
from apb.methods import APBConfig
from apb.nn.attention import SplitMultiheadAttention, split_attention_


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kdim", [None, 12])
def test_split_attention_matches_torch(batch_first, bias, kdim):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, bias=bias, kdim=kdim, vdim=kdim,
                                batch_first=batch_first).eval()
    split = SplitMultiheadAttention.from_attention(mha).eval()
    n, length, source = 3, 5, 7
    shape = (n, length) if batch_first else (length, n)
    kshape = (n, source) if batch_first else (source, n)
    q = torch.randn(*shape, 16)
    k = torch.randn(*kshape, kdim or 16)
    v = torch.randn(*kshape, kdim or 16)
    padding = torch.zeros(n, source, dtype=torch.bool)
    padding[0, -2:] = True
    attn_mask = torch.randn(length, source)
    for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": attn_mask},
                   {"key_padding_mask": padding, "attn_mask": attn_mask > 1.0},
                   {"average_attn_weights": False}):
        want, want_w = mha(q, k, v, **kwargs)
        got, got_w = split(q, k, v, **kwargs)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_w, want_w, atol=1e-5, rtol=1e-5)


def test_split_attention_unbatched_and_causal():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2).eval()
    split = SplitMultiheadAttention.from_attention(mha).eval()
    x = torch.randn(6, 8)
    torch.testing.assert_close(split(x, x, x)[0], mha(x, x, x)[0], atol=1e-5, rtol=1e-5)
    xb = torch.randn(6, 2, 8)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    torch.testing.assert_close(split(xb, xb, xb, attn_mask=causal, is_causal=True)[0],
                               mha(xb, xb, xb, attn_mask=causal, is_causal=True)[0],
                               atol=1e-5, rtol=1e-5)


def test_transformer_encoder_attention_is_compressed():
    torch.manual_seed(2)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    x = torch.randn(2, 5, 16)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    want = model(x, src_key_padding_mask=padding)
    reference = copy.deepcopy(model)
    assert split_attention_(reference) == ["layers.0.self_attn", "layers.1.self_attn"]
    torch.testing.assert_close(reference(x, src_key_padding_mask=padding), want, atol=1e-5,
                               rtol=1e-5)
    apb.compress_(model, APBConfig(fp_fraction=0.05),
                  filter_fn=lambda m, name: isinstance(m, nn.Linear))
    compressed = {name for name, m in model.named_modules() if hasattr(m, "weight_quantizer")}
    assert {f"layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkv"} <= compressed
    assert "layers.0.self_attn.out_proj" in compressed
    assert model(x, src_key_padding_mask=padding).shape == want.shape


def test_ptq_compresses_attention_projections():
    torch.manual_seed(3)
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
    model = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False).eval()
    batches = [torch.randn(4, 6, 16) for _ in range(8)]
    report = apb.methods.ptq_(model, apb.methods.OBCConfig(mode="quant", bits=4), batches,
                              filter_fn=lambda m, name: isinstance(m, nn.Linear))
    names = {layer.name for layer in report.layers}
    assert {"layers.0.self_attn.q_proj", "layers.0.self_attn.out_proj",
            "layers.0.linear1"} <= names


def test_bias_kv_is_refused():
    with pytest.raises(ValueError, match="add_bias_kv"):
        SplitMultiheadAttention.from_attention(nn.MultiheadAttention(8, 2, add_bias_kv=True))
