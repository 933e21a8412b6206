"""Packed Linear layers with int8 inputs (apb.pack.set_input_precision(model, "int8"), the
linear_1xf fast path): against the numpy oracle of the same math (int8 codes per row, then
the exact integer product, the sparse part on the float input), against the exact path
within the int8 error, through a folded BatchNorm, torch.compile and torch.export; the
switch is never saved and leaves the file and its accounting as they were."""

from __future__ import annotations

import copy
import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import apb
from _packing import ODD_INPUT, odd_model, one_thread, packed_copy, prepare  # noqa: F401
from apb.methods import APBConfig, BNNConfig
from apb.pack import PackedAPBLinear, load_packed, save_packed, set_input_precision
from oracles.linear_fp import linear_1xf_ref, quantize_rows_ref


def _layer(rng, m, k, *, per_channel, nnz_density, value_bits, bias, backend="kernels"):
    """A PackedAPBLinear of random sign words (padding bits set too), α, CSR, bias; and the
    numpy arrays the oracle takes."""
    words = rng.integers(0, 2**64, size=(m, -(-k // 64)), dtype=np.uint64)
    alpha = rng.uniform(0.05, 1.0, size=m if per_channel else 1).astype(np.float32)
    mask = rng.random((m, k)) < nnz_density
    rows, cols = np.nonzero(mask)
    csr = None
    if len(cols):
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))]).astype(np.int32)
        values = rng.standard_normal(len(cols)).astype(
            np.float16 if value_bits == 16 else np.float32)
        csr = (indptr, cols.astype(np.int32 if k > 2**16 else np.uint16), values)
    b = rng.standard_normal(m).astype(np.float32) if bias else None
    layer = PackedAPBLinear(
        k, m, sign_bits=torch.from_numpy(words), alpha=torch.from_numpy(alpha),
        csr=None if csr is None else tuple(torch.from_numpy(a) for a in csr),
        value_bits=value_bits, bias=None if b is None else torch.from_numpy(b), backend=backend,
    )
    return layer, (words, np.broadcast_to(alpha, (m,)), csr, b)


@settings(max_examples=40, deadline=None)
@given(
    m=st.sampled_from([1, 3, 63, 64, 65, 130]),
    k=st.sampled_from([1, 3, 5, 63, 64, 65, 130, 257]),
    lead=st.sampled_from([(), (1,), (5,), (2, 3)]),
    per_channel=st.booleans(),
    nnz_density=st.sampled_from([0.0, 0.05]),
    value_bits=st.sampled_from([16, 32]),
    bias=st.booleans(),
    backend=st.sampled_from(["kernels", "reference"]),
    seed=st.integers(0, 2**16),
)
def test_int8_path_matches_the_oracle(m, k, lead, per_channel, nnz_density, value_bits, bias,
                                      backend, seed):
    rng = np.random.default_rng(seed)
    layer, (words, alpha, csr, b) = _layer(rng, m, k, per_channel=per_channel,
                                           nnz_density=nnz_density, value_bits=value_bits,
                                           bias=bias, backend=backend)
    layer.set_input_precision("int8")
    x = rng.standard_normal((*lead, k)).astype(np.float32)
    with torch.no_grad():
        y = layer(torch.from_numpy(x))
    assert y.shape == (*lead, m) and y.dtype == torch.float32
    want = linear_1xf_ref(x.reshape(-1, k), words, alpha, csr, b).reshape(*lead, m)
    # the binary part is the same float32 product; the sparse sums run in another order
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5 * (np.abs(want).max() + 1))


def test_the_oracle_quantizes_what_it_should():
    """The reference rounds half to even and clips at ±127, so a row whose largest value is
    127 gives its own integers back, and ties land on even codes."""
    x = np.array([[127.0, -2.5, 3.5, 0.5, -127.0]], dtype=np.float32)
    codes, scales = quantize_rows_ref(x)
    assert codes.tolist() == [[127, -2, 4, 0, -127]] and scales.tolist() == [1.0]


@pytest.mark.parametrize("method", ["apb", "bnn"])
def test_int8_path_is_close_to_the_exact_path(method):
    """Whole models (APB with a CSR part, per-channel α; binary): the int8 path within about
    1 % of the exact packed output, which is the training model's."""
    config = (APBConfig(fp_fraction=0.05, per_channel=True) if method == "apb"
              else BNNConfig())
    model = prepare(_mlp(), config, (32, 96))
    exact = packed_copy(model)
    fast = set_input_precision(copy.deepcopy(exact), "int8")
    x = torch.randn(4, 7, 96)
    with torch.no_grad():
        want, got, training = exact(x), fast(x), model(x)
    torch.testing.assert_close(want, training, rtol=1e-5, atol=1e-5)
    error = float((got - want).norm() / want.norm())
    assert 1e-4 < error < 0.03, error  # quantized (not the exact path), and close
    assert all(layer.input_precision == "int8" for layer in fast.modules()
               if isinstance(layer, PackedAPBLinear))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(96, 130), nn.ReLU(), nn.Linear(130, 67), nn.ReLU(),
                         nn.Linear(67, 10))


def _compress_all(model, config, shape):
    return prepare(model, config, shape, filter_fn=lambda m, name: isinstance(m, nn.Linear))


def test_folded_batchnorm_is_applied_on_the_int8_path():
    """Linear → BatchNorm1d folded into the layer: the int8 path with the fold equals the
    int8 path without it followed by the BatchNorm (α, the CSR values and the bias scaled)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 70, bias=False), nn.BatchNorm1d(70), nn.ReLU(),
                          nn.Linear(70, 33), nn.BatchNorm1d(33))
    model = _compress_all(model, APBConfig(fp_fraction=0.1), (64, 40))
    unfolded = set_input_precision(packed_copy(model), "int8")
    folded = apb.pack.fold_batchnorm_(copy.deepcopy(unfolded))
    assert folded[0].folded and folded[3].folded and isinstance(folded[4], nn.Identity)
    assert folded[3].nnz > 0
    x = torch.randn(9, 40)
    with torch.no_grad():
        want, got = unfolded(x), folded(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_the_panel_is_derived_never_stored(tmp_path):
    """The switch changes neither the file nor the accounting; a loaded model starts exact;
    loading a state dict rebuilds the panel of the new sign bits."""
    model = _compress_all(_mlp(), APBConfig(fp_fraction=0.05), (32, 96))
    exact = packed_copy(model)
    fast = set_input_precision(copy.deepcopy(exact), "int8")
    assert "linear_1xf_panel" not in "".join(fast.state_dict())
    assert apb.summary(fast).model_bytes == apb.summary(exact).model_bytes
    save_packed(exact, tmp_path / "exact.safetensors")
    save_packed(fast, tmp_path / "fast.safetensors")
    assert _contents(tmp_path / "exact.safetensors") == _contents(tmp_path / "fast.safetensors")
    loaded = load_packed(tmp_path / "fast.safetensors", model=copy.deepcopy(_mlp()))
    assert all(layer.input_precision == "exact" and layer.linear_1xf_panel is None
               for layer in loaded.modules() if isinstance(layer, PackedAPBLinear))
    other = set_input_precision(packed_copy(_compress_all(_mlp(), APBConfig(fp_fraction=0.05),
                                                          (32, 96))), "int8")
    assert not torch.equal(other[0].linear_1xf_panel, fast[0].linear_1xf_panel)  # other weights
    other.load_state_dict(fast.state_dict())
    torch.testing.assert_close(other[0].linear_1xf_panel, fast[0].linear_1xf_panel, rtol=0, atol=0)
    x = torch.randn(3, 96)
    with torch.no_grad():
        torch.testing.assert_close(other(x), fast(x), rtol=0, atol=0)


def _contents(path) -> tuple[dict, bytes]:
    """A safetensors file's header (parsed: its metadata order is the writer's hash order)
    and its tensor bytes."""
    data = path.read_bytes()
    size = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + size]), data[8 + size:]


@pytest.mark.parametrize("mode", ["compile", "export"])
def test_compile_and_export_run_the_int8_op(mode):
    model = _compress_all(_mlp(), APBConfig(fp_fraction=0.05, per_channel=True), (32, 96))
    packed = set_input_precision(packed_copy(model), "int8")
    x = torch.randn(2, 5, 96)
    with torch.no_grad():
        want = packed(x)
        if mode == "compile":
            got = torch.compile(packed, backend="aot_eager", fullgraph=True)(x)
        else:
            program = torch.export.export(packed, (x,))
            assert program.graph_module.code.count("torch.ops.apb.linear_1xf.default") == 3
            got = program.module()(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bad_input_and_bad_switches_say_what_to_do():
    model = _compress_all(_mlp(), APBConfig(fp_fraction=0.05), (32, 96))
    packed = set_input_precision(packed_copy(model), "int8")
    with pytest.raises(ValueError, match=r"last dimension is 96, got shape \(3, 95\)"):
        packed(torch.randn(3, 95))
    with pytest.raises(TypeError, match="float32 input, got torch.float64"):
        packed(torch.randn(3, 96, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown input precision 'int4'"):
        set_input_precision(packed, "int4")
    two_bit = packed_copy(_compress_all(_mlp(), APBConfig(act_bits=2), (32, 96)))
    with pytest.raises(ValueError, match="act_bits=2\\) has no int8 input path"):
        two_bit[2].set_input_precision("int8")
    with pytest.raises(ValueError, match="no packed layer takes int8 inputs"):
        set_input_precision(two_bit, "int8")
    convs = packed_copy(prepare(odd_model("relu"), APBConfig(), ODD_INPUT,
                                filter_fn=lambda m, name: isinstance(m, nn.Conv2d)))
    with pytest.raises(ValueError, match="no packed layer takes int8 inputs"):
        set_input_precision(convs, "int8")
    set_input_precision(packed, "exact")  # back, everywhere
    assert all(layer.linear_1xf_panel is None for layer in packed.modules()
               if isinstance(layer, PackedAPBLinear))
