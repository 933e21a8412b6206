"""apb.pack: the reference kernels against numpy oracles written from docs/design.md §2,
packed layers against the training layers they come from (padding, stride, dilation, odd
channel counts; fp, 2-bit and 1-bit activations), pack_ errors and forward input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import apb
from _packing import (
    ODD_INPUT,
    TOLERANCE,
    odd_model,
    one_thread,  # noqa: F401  (autouse fixture)
    packed_copy,
    prepare,
    relative_error,
)
from apb.methods import APBConfig, BNNConfig, DoReFaConfig, MagnitudeConfig, PruneQuantConfig
from apb.nn import compressed_layers
from apb.pack import (
    PackedAPBConv2d,
    PackedAPBLinear,
    PackedDoReFaConv2d,
    PackedDoReFaLinear,
    PackError,
)
from apb.pack import reference as ref
from apb.pack.bits import unpack_bits
from apb.pack.csr import check_csr
from oracles.sign_packing import pack_bits_ref, pack_signs_ref

EDGE_K = [1, 7, 63, 64, 65, 127, 128, 129, 200]


# -- numpy oracles, straight from docs/design.md §2 ----------------------------------------
def popcount(words: np.ndarray) -> np.ndarray:
    return np.bitwise_count(words).astype(np.int64).sum(-1)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


sizes = st.integers(1, 5)
columns = st.one_of(st.sampled_from(EDGE_K), st.integers(1, 300))


@settings(max_examples=40, deadline=None)
@given(m=sizes, n=sizes, k=columns, p=st.integers(1, 4), q=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_reference_products_match_popcount_formulas(m, n, k, p, q, seed):
    rng = np.random.default_rng(seed)
    wb = rng.integers(0, 2, (q, m, k), dtype=np.uint8)
    xb = rng.integers(0, 2, (p, n, k), dtype=np.uint8)
    w, x = pack_bits_ref(wb), pack_bits_ref(xb)
    # 1x1: k − 2·popcount(w XOR x)
    expect = k - 2 * popcount(w[0][:, None, :] ^ x[0][None, :, :])
    np.testing.assert_array_equal(ref.bgemm_1x1(t(w[0]), t(x[0]), k).numpy(), expect)
    # 1x2: Σ_p 2^p (popcount(x_p) − 2·popcount(w AND x_p))
    expect = sum((1 << i) * (popcount(x[i])[None, :] - 2 * popcount(w[0][:, None] & x[i][None]))
                 for i in range(p))
    np.testing.assert_array_equal(ref.bgemm_1x2(t(w[0]), t(x)).numpy(), expect)
    # 2x2: Σ_{q,p} 2^{q+p} popcount(w_q AND x_p)
    expect = sum((1 << (i + j)) * popcount(w[j][:, None] & x[i][None])
                 for i in range(p) for j in range(q))
    np.testing.assert_array_equal(ref.bgemm_2x2(t(w), t(x)).numpy(), expect)
    # 1xf: Σ_j s_w(m, j)·x[n, j]
    xf = rng.standard_normal((n, k)).astype(np.float32)
    expect = (1.0 - 2.0 * wb[0]) @ xf.astype(np.float64).T
    np.testing.assert_allclose(ref.bgemm_1xf(t(w[0]), t(xf)).numpy(), expect, rtol=1e-5,
                               atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 5), k=columns, bits=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_reference_packing_matches_numpy(n, k, bits, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)).astype(np.float32)
    x[rng.random((n, k)) < 0.1] = 0.0
    np.testing.assert_array_equal(ref.pack_signs(t(x)).numpy(), pack_signs_ref(x))
    codes = rng.integers(0, 1 << bits, (n, k), dtype=np.uint8)
    planes = np.stack([pack_bits_ref((codes >> i) & 1) for i in range(bits)])
    np.testing.assert_array_equal(ref.pack_planes(t(codes), bits).numpy(), planes)
    np.testing.assert_array_equal(unpack_bits(t(planes), k).numpy(),
                                  np.stack([(codes >> i) & 1 for i in range(bits)]))


def test_reference_spmm_matches_dense():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((7, 40)).astype(np.float32) * (rng.random((7, 40)) < 0.2)
    rows, cols = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=7))]).astype(np.uint8)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    out = torch.ones(7, 6)
    ref.spmm_csr(t(indptr), t(cols.astype(np.uint8)), t(dense[rows, cols]), t(x), out)
    np.testing.assert_allclose(out.numpy(), 1.0 + dense @ x, rtol=1e-5, atol=1e-5)


def im2col_loop(x: np.ndarray, k, s, p, d) -> np.ndarray:
    """Rows ``(b, oy, ox)``, columns ``(c, dy, dx)``, zero padding: a slow explicit loop."""
    b, c, h, w = x.shape
    oh = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    out = np.zeros((b, oh, ow, c, k[0], k[1]), dtype=x.dtype)
    for bi, oy, ox, ci, dy, dx in np.ndindex(b, oh, ow, c, k[0], k[1]):
        iy, ix = oy * s[0] - p[0] + dy * d[0], ox * s[1] - p[1] + dx * d[1]
        if 0 <= iy < h and 0 <= ix < w:
            out[bi, oy, ox, ci, dy, dx] = x[bi, ci, iy, ix]
    return out.reshape(b * oh * ow, c * k[0] * k[1])


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 4), h=st.integers(3, 7), w=st.integers(3, 7), k=st.sampled_from(
    [(1, 1), (3, 3), (3, 2)]), s=st.sampled_from([(1, 1), (2, 1)]), p=st.sampled_from(
    [(0, 0), (1, 1), (2, 0)]), d=st.sampled_from([(1, 1), (1, 2)]), seed=st.integers(0, 999))
def test_reference_im2col_packing_matches_loop(c, h, w, k, s, p, d, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    if (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) < 0 or (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) < 0:
        return
    cols = im2col_loop(x, k, s, p, d)
    got = ref.im2col_pack_signs(t(x), list(k), list(s), list(p), list(d))
    np.testing.assert_array_equal(got.numpy(), pack_signs_ref(cols))
    quantizer = apb.nn.UniformActivation(2)
    quantizer.act_scale.data.fill_(0.8)
    x_hat = quantizer.eval()(t(x)).detach().numpy()  # code · s/3, 0 where padded
    codes = np.rint(im2col_loop(x_hat, k, s, p, d) / np.float32(0.8 / 3)).astype(np.uint8)
    planes = np.stack([pack_bits_ref((codes >> i) & 1) for i in range(2)])
    got = ref.im2col_pack_codes(t(x), torch.tensor([0.8]), 2, list(k), list(s), list(p), list(d))
    np.testing.assert_array_equal(got.numpy(), planes)


# -- packed layers against the training layers -------------------------------------------
CONFIGS = {
    "apb": lambda bits: APBConfig(fp_fraction=0.1, act_bits=bits),
    "apb-channel-fp16": lambda bits: APBConfig(fp_fraction=0.1, act_bits=bits,
                                               per_channel=True, value_bits=16),
    "bnn": lambda bits: BNNConfig(act_bits=bits),
    "dorefa2": lambda bits: DoReFaConfig(bits=2, act_bits=bits),
    "dorefa3": lambda bits: DoReFaConfig(bits=3, act_bits=bits),
}


@pytest.mark.parametrize("act_bits", [32, 2, 1])
@pytest.mark.parametrize("method", list(CONFIGS))
def test_packed_layers_reproduce_training_layers(method, act_bits):
    activation = "hardtanh" if act_bits == 1 else "relu"
    model = prepare(odd_model(activation), CONFIGS[method](act_bits), ODD_INPUT)
    packed = packed_copy(model)
    kinds = {type(m) for m in packed.modules()}
    expected = {PackedDoReFaConv2d, PackedDoReFaLinear} if method.startswith("dorefa") else {
        PackedAPBConv2d, PackedAPBLinear}
    assert expected <= kinds
    x = torch.randn(*ODD_INPUT)
    with torch.no_grad():
        want, got = model(x), packed(x)
    assert relative_error(got, want) < TOLERANCE
    assert apb.summary(packed).model_bytes == apb.summary(model).model_bytes
    if method == "apb":
        assert sum(layer.nnz for layer in packed.modules() if isinstance(
            layer, (PackedAPBConv2d, PackedAPBLinear))) > 0


@pytest.mark.parametrize("act_bits", [32, 2, 1])
@pytest.mark.parametrize("method", ["apb", "dorefa2"])
def test_backends_agree(method, act_bits):
    """The compiled kernels against the pure-torch reference, through whole layers."""
    activation = "hardtanh" if act_bits == 1 else "relu"
    model = prepare(odd_model(activation), CONFIGS[method](act_bits), ODD_INPUT)
    x = torch.randn(*ODD_INPUT)
    with torch.no_grad():
        outputs = [packed_copy(model, backend=b)(x) for b in apb.pack.BACKENDS]
    assert relative_error(outputs[1], outputs[0]) < 1e-5  # float sums in another order


@pytest.mark.parametrize("act_bits", [2, 1])
def test_direct_calls_and_operators_give_the_same_logits(act_bits, monkeypatch):
    """In eager mode the packed APB layers call the fused kernels directly; under the
    profiler (and torch.compile) they go through the torch.ops.apb operators. Both paths
    must give the same bits, folded BatchNorms and batch > 1 included."""
    activation = "hardtanh" if act_bits == 1 else "relu"
    model = prepare(odd_model(activation), CONFIGS["apb"](act_bits), ODD_INPUT)
    packed = apb.pack.fold_batchnorm_(packed_copy(model))
    x = torch.randn(*ODD_INPUT)
    calls = []
    real = torch.ops.apb.apb_conv2d
    monkeypatch.setattr(torch.ops.apb, "apb_conv2d",
                        lambda *a: calls.append(1) or real(*a), raising=False)
    with torch.no_grad():
        direct = packed(x)
        assert not calls  # eager: no operator call
        with torch.profiler.profile():
            through_ops = packed(x)
        assert calls
        want = model(x)
    assert torch.equal(direct, through_ops)
    assert relative_error(direct, want) < TOLERANCE


def test_int8_input_linears_call_the_kernel_directly_with_the_same_result(monkeypatch):
    """Full-precision inputs quantized to int8 (linear_1xf): the direct call in eager mode
    and the operator under the profiler agree bit for bit, a folded BatchNorm included."""
    model = prepare(nn.Sequential(nn.Linear(40, 30, bias=False), nn.BatchNorm1d(30),
                                  nn.ReLU(), nn.Linear(30, 7)),
                    APBConfig(fp_fraction=0.1), (16, 40), filter_fn=lambda m, name: True)
    packed = apb.pack.fold_batchnorm_(packed_copy(model))
    apb.pack.set_input_precision(packed, "int8")
    calls = []
    real = torch.ops.apb.linear_1xf
    monkeypatch.setattr(torch.ops.apb, "linear_1xf",
                        lambda *a: calls.append(1) or real(*a), raising=False)
    x = torch.randn(5, 40)
    with torch.no_grad():
        direct = packed(x)
        assert not calls
        with torch.profiler.profile():
            through_ops = packed(x)
        assert len(calls) == 2
    assert torch.equal(direct, through_ops)


def test_one_bit_padding_correction_is_needed():
    """With ±1 inputs a padded position's bit reads +1: the popcount product alone is wrong
    at the border, the packed layer (which subtracts the correction) is right."""
    model = prepare(odd_model("hardtanh"), APBConfig(act_bits=1), ODD_INPUT)
    layer = packed_copy(model)[3]
    x = torch.randn(2, 5, 11, 9)
    with torch.no_grad():
        want = model[3](x)
        bits = torch.ops.apb.im2col_pack_signs(x, [3, 3], [2, 2], [1, 1], [1, 1], "reference")
        dot = torch.ops.apb.bgemm_1x1(layer.sign_bits, bits, 45, "reference")
        naive = (layer.alpha * dot.float()).view(7, 2, 6, 5).permute(1, 0, 2, 3)
        assert relative_error(layer(x), want) < 1e-5
    assert relative_error(naive, want) > 0.01


def test_fp16_values_are_what_training_computes_with():
    model = prepare(odd_model("relu"), APBConfig(fp_fraction=0.2, value_bits=16), ODD_INPUT)
    layer = model[3]
    w_hat = layer.quantized_weight().detach()
    mask = layer.weight_quantizer.band_mask(layer.weight)
    a = layer.weight_quantizer.alpha.detach()
    binary = a * torch.where(layer.weight < 0, -1.0, 1.0)
    fp = ~mask
    assert fp.any()
    assert torch.equal(w_hat[fp], (binary + (layer.weight - binary).half().float())[fp])
    packed = packed_copy(model)
    assert packed[3].csr_values.dtype == torch.float16


def test_pack_refuses_unsupported_methods_naming_the_layer():
    for config, label in ((MagnitudeConfig(sparsity=0.5), "magnitude"),
                          (PruneQuantConfig(sparsity=0.5), "prune_quant")):
        model = prepare(odd_model("relu"), config, ODD_INPUT)
        with pytest.raises(PackError, match=rf"layer '3'.*{label}"):
            apb.pack_(model)
        assert not any(isinstance(m, apb.pack.PackedLayer) for m in model.modules())


@pytest.mark.parametrize("where", ["weight", "alpha", "act_scale"])
def test_pack_refuses_non_finite_values_naming_the_layer(where):
    model = prepare(odd_model("relu"), APBConfig(act_bits=2), ODD_INPUT)
    layer = model[6]
    with torch.no_grad():
        target = {"weight": layer.weight, "alpha": layer.weight_quantizer.alpha,
                  "act_scale": layer.act_quantizer.act_scale}[where]
        target.view(-1)[0] = float("nan") if where != "alpha" else float("inf")
    with pytest.raises(PackError, match=r"layer '6'.*NaN/Inf"):
        apb.pack_(model)


def test_pack_filter_and_top_level_layer():
    model = prepare(odd_model("relu"), APBConfig(), ODD_INPUT)
    apb.pack_(model, filter_fn=lambda m, name: name == "3")
    assert isinstance(model[3], PackedAPBConv2d)
    assert type(model[6]).__name__ == "QuantConv2d"
    single = apb.pack_(model[6])
    assert isinstance(single, PackedAPBConv2d)


def test_packed_forward_checks_its_input():
    model = prepare(odd_model("relu"), APBConfig(act_bits=2), ODD_INPUT)
    packed = packed_copy(model)
    conv, linear = packed[3], packed[12]
    x = torch.randn(2, 5, 11, 9)
    with pytest.raises(ValueError, match="expects 5 input channels"):
        conv(torch.randn(2, 4, 11, 9))
    with pytest.raises(TypeError, match="float32"):
        conv(x.double())
    with pytest.raises(TypeError, match="float32"):
        conv(x.to(torch.int64))
    with pytest.raises(ValueError, match=r"\[batch, channels, height, width\]"):
        conv(torch.randn(5, 11))
    with pytest.raises(ValueError, match="smaller than"):
        packed[6](torch.randn(1, 7, 3, 0))
    with pytest.raises(ValueError, match="last dimension is 264"):
        linear(torch.randn(2, 263))
    with pytest.raises(TypeError, match="torch.Tensor"):
        linear(np.zeros((2, 264), dtype=np.float32))
    with torch.no_grad():
        base = conv(x)
        strided = conv(x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2))
        assert torch.equal(base, strided)
        assert torch.equal(conv(x[0]), base[0])
        y = torch.randn(4, 264)
        assert torch.equal(linear(y.t().contiguous().t()), linear(y))
        assert torch.allclose(linear(y.view(2, 2, 264)), linear(y).view(2, 2, 13))


def test_check_csr_rejects_bad_structures():
    ptr = torch.tensor([0, 2, 2, 3])
    idx = torch.tensor([1, 4, 0])
    check_csr(ptr, idx, 5)
    with pytest.raises(ValueError, match="start at 0"):
        check_csr(torch.tensor([1, 2, 2, 3]), idx, 5)
    with pytest.raises(ValueError, match="decreases at row 1"):
        check_csr(torch.tensor([0, 2, 1, 3]), idx, 5)
    with pytest.raises(ValueError, match="ends at 2"):
        check_csr(torch.tensor([0, 2, 2, 2]), idx, 5)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        check_csr(ptr, torch.tensor([1, 5, 0]), 5)
    with pytest.raises(ValueError, match="not increasing"):
        check_csr(ptr, torch.tensor([4, 1, 0]), 5)


def test_packed_layers_print_what_they_are():
    model = prepare(odd_model("relu"), APBConfig(fp_fraction=0.1, act_bits=2), ODD_INPUT)
    text = repr(packed_copy(model))
    assert "PackedAPBConv2d(5, 7, kernel_size=(3, 3), stride=(2, 2)" in text
    assert "act_bits=2, method=apb, alpha=per-layer, fp_weights=" in text
    assert f"backend={apb.pack.DEFAULT_BACKEND}" in text


def test_trained_layers_are_left_alone_by_summary_after_packing():
    model = prepare(odd_model("relu"), APBConfig(fp_fraction=0.05, act_bits=2), ODD_INPUT)
    before = apb.summary(model)
    packed = packed_copy(model)
    after = apb.summary(packed)
    assert after.model_bytes == before.model_bytes
    assert after.bits_per_weight == before.bits_per_weight
    assert [r.bytes for r in after.rows] == [r.bytes for r in before.rows]
    assert [name for name, _ in compressed_layers(model)] == [
        name for name, _ in apb.pack.packed_layers(packed)]
