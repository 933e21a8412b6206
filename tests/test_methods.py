"""compress_, the method registry, model-wide budgets and the memory accounting."""

import pytest
import torch
from torch import nn

import apb
from apb.memory import binary_sparse_storage, index_bits, quantized_storage, sparse_storage
from apb.methods import APBConfig, BNNConfig, DoReFaConfig
from apb.methods.apb import apply_model_budget
from apb.nn import QuantConv2d, QuantLinear, compressed_layers


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def test_compress_skips_first_and_classifier_by_default():
    m = small_cnn()
    apb.compress_(m, APBConfig())
    kinds = [type(x) for x in m if isinstance(x, (nn.Conv2d, nn.Linear))]
    assert kinds == [nn.Conv2d, QuantConv2d, QuantLinear, nn.Linear]


def test_compress_with_filter_fn_and_keeps_weights():
    m = small_cnn()
    before = m[3].weight.detach().clone()
    apb.compress_(m, BNNConfig(), filter_fn=lambda mod, name: name == "3")
    assert isinstance(m[3], QuantConv2d) and isinstance(m[7], nn.Linear)
    assert type(m[7]) is nn.Linear
    assert torch.equal(m[3].weight, before)


def test_compressed_forward_matches_manual_quantized_conv():
    m = small_cnn()
    apb.compress_(m, APBConfig(fp_fraction=0.05)).eval()
    x = torch.randn(2, 1, 8, 8)
    layer = m[3]
    w_hat = layer.weight_quantizer(layer.weight)
    h = m[2](m[1](m[0](x)))
    expected = torch.nn.functional.conv2d(h, w_hat, None, 1, 1)
    assert torch.allclose(layer(h), expected)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        apb.methods.create("nope")
    with pytest.raises(ValueError, match="has no option"):
        apb.methods.create("bnn", fp_fraction=0.1)
    with pytest.raises(ValueError, match="act_bits"):
        apb.methods.create("apb", act_bits=3)
    with pytest.raises(ValueError, match="bits_per_weight must exceed 1"):
        apb.methods.create("apb", bits_per_weight=0.9)
    with pytest.raises(ValueError, match="fp_fraction"):
        apb.methods.create("apb", fp_fraction=-0.01)
    with pytest.raises(TypeError, match="'apb' takes a APBConfig, got DoReFaConfig"):
        apb.methods.create("apb").__class__(DoReFaConfig())


@pytest.mark.parametrize("frac", [0.0, 0.003, 0.01, 0.1])
def test_model_wide_fp_fraction_is_exact(frac):
    m = small_cnn()
    apb.methods.create("apb", fp_fraction=frac, budget_scope="model").prepare(m)
    s = apb.summary(m)
    n = s.compressed_weights
    assert s.compressed_fp == round(frac * n)
    assert abs(s.fp_fraction - frac) <= 0.001


def test_model_wide_bits_per_weight_and_training_keeps_it():
    m = small_cnn()
    method = apb.methods.create("apb", bits_per_weight=1.4, budget_scope="model")
    method.prepare(m)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for step in range(5):
        method.on_step(m, step / 5)
        opt.zero_grad()
        m(torch.randn(4, 1, 8, 8)).logsumexp(1).sum().backward()
        opt.step()
    method.finalize(m)
    s = apb.summary(m)
    assert 1.3 < s.bits_per_weight <= 1.4


@pytest.mark.parametrize("bits", [1.05, 1.4, 2.5, 6.0])
def test_model_budget_counts_match_a_full_ranking(bits):
    """apply_model_budget ranks only the weights the budget can afford; the per-layer counts
    must be those of ranking every weight and taking the most distant that fit."""
    m = small_cnn()
    config = APBConfig(bits_per_weight=bits, budget_scope="model", value_bits=16)
    apb.methods.create("apb", **{k: getattr(config, k) for k in
                                 ("bits_per_weight", "budget_scope", "value_bits")}).prepare(m)
    layers = [(q, layer.weight) for _, layer in compressed_layers(m)
              for q in [layer.weight_quantizer]]
    u = torch.cat([q.normalized_distance(w).reshape(-1) for q, w in layers])
    owner = torch.cat([torch.full((q.n_weights,), i) for i, (q, _) in enumerate(layers)])
    owner = owner[torch.sort(u, descending=True, stable=True).indices]
    best = []
    for k in range(u.numel() + 1):  # brute force: the largest k within the budget
        counts = torch.bincount(owner[:k], minlength=len(layers)).tolist()
        if sum(q._storage_for(n).total_bits for (q, _), n in zip(layers, counts)) \
                > bits * u.numel():
            break
        best = counts
    assert apply_model_budget(m, config) == best


def test_layer_budget_bits_per_weight_every_layer():
    m = small_cnn()
    apb.methods.create("apb", bits_per_weight=1.5).prepare(m)
    for row in apb.summary(m).rows:
        if row.method == "apb":
            assert row.bits_per_weight <= 1.5


def test_model_budget_too_small_is_refused():
    m = small_cnn()
    with pytest.raises(ValueError, match="below what the binary part"):
        apb.methods.create("apb", bits_per_weight=1.0001, budget_scope="model").prepare(m)


def test_magnitude_method_reaches_sparsity():
    m = small_cnn()
    method = apb.methods.create("magnitude", sparsity=0.75, prune_end=0.5)
    method.prepare(m)
    method.on_step(m, 0.6)
    for _, layer in compressed_layers(m):
        w_hat = layer.quantized_weight()
        assert (w_hat == 0).float().mean().item() == pytest.approx(0.75, abs=1 / w_hat.numel())


def test_scale_parameters_and_freeze():
    m = small_cnn()
    apb.compress_(m, APBConfig(act_bits=2))
    names = [n for n, _ in apb.nn.scale_parameters(m)]
    assert sorted(names) == sorted([
        "3.weight_quantizer.alpha", "3.weight_quantizer.delta", "3.act_quantizer.act_scale",
        "7.weight_quantizer.alpha", "7.weight_quantizer.delta", "7.act_quantizer.act_scale",
    ])
    apb.nn.freeze_scales(m)
    assert not m[3].weight_quantizer.delta.requires_grad


def test_memory_primitives_hand_computed():
    assert [index_bits(v) for v in (0, 255, 256, 65535, 65536)] == [8, 8, 16, 16, 32]
    # 10 x 100 APB layer, 7 fp32 weights: 1000 sign bits + 7*(32 + 8) + 11 row pointers * 8
    # + one 32-bit alpha
    s = binary_sparse_storage(10, 100, 7)
    assert s.total_bits == 1000 + 280 + 88 + 32
    assert s.total_bytes == 125 + 28 + 7 + 11 + 4
    assert quantized_storage(4, 16, 2, n_scalars=0).total_bits == 128
    # 90% pruned 10 x 100 at 1 bit: CSR 100*(1+8) + 11*8 = 988 > bitmap 1000 + 100
    s = sparse_storage(10, 100, 100, value_bits=1)
    assert (s.format, s.total_bits) == ("csr", 988)
    s = sparse_storage(10, 100, 500, value_bits=1)
    assert (s.format, s.total_bits) == ("bitmap", 1500)


def test_summary_totals_add_up():
    m = small_cnn()
    apb.compress_(m, APBConfig(fp_fraction=0.02))
    s = apb.summary(m)
    assert s.model_bytes == sum(r.bytes for r in s.rows) + s.other_bytes
    # other: biases (8 + 64 + 10), BN weight/bias/running stats (4 * (8 + 16)), fp32
    assert s.other_bytes == 4 * (8 + 64 + 10) + 4 * 4 * (8 + 16)
    assert "total" in s.table()
    fp = apb.summary(small_cnn())
    assert fp.bits_per_weight == 32.0
    assert fp.model_bytes == 4 * sum(p.numel() for p in small_cnn().parameters()) + 4 * 2 * 24
