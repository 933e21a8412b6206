"""XOR-gate weight encryption (apb.pack.xor, apb.kernels.xor_gate): the compiled solver and
decoder against the numpy references over shapes and remainders, the lossless round trip
over pruning rates and bit-planes, the mask code, every packed layer kind, the file format
with its checks on damaged input, and the paper's operating point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import apb
import apb.models
from _isa import isas_under_test
from _packing import one_thread  # noqa: F401  (autouse fixture)
from apb.kernels import set_num_threads, use_isa
from apb.kernels.xor_gate import (
    offset_bits,
    xor_gate_decode,
    xor_gate_encode,
    xor_gate_table,
)
from apb.methods import APBConfig, BNNConfig, DoReFaConfig, PruneQuantConfig
from apb.nn import compressed_layers
from apb.pack import PackedAPBLinear, PackedFormatError
from apb.pack.bits import pack_bits
from apb.pack.layer_tensors import layer_config, layer_tensors
from apb.pack.xor import (
    XorFormatError,
    XorNetwork,
    decode_file,
    decode_layer,
    decode_mask,
    decode_planes,
    encode_file,
    encode_layer,
    encode_mask,
    encode_planes,
    layer_planes,
    load_xor,
    patch_streams,
)
from oracles.xor_gate import decode_ref, encode_ref, patch_positions_ref

SLOW = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def stream(bits01) -> np.ndarray:
    return np.packbits(np.asarray(bits01, dtype=np.uint8), bitorder="little")


def unstream(data: np.ndarray, n: int) -> np.ndarray:
    return np.unpackbits(data, bitorder="little")[:n]


shapes = st.integers(1, 64).flatmap(
    lambda n_in: st.tuples(st.just(n_in), st.integers(max(1, -(-n_in // 8)), 40).map(
        lambda k: 8 * k)))


# -- kernels against the references -------------------------------------------------------
@SLOW
@given(shape=shapes, n_bits=st.integers(0, 1500), density=st.floats(0.02, 1.0),
       seed=st.integers(0, 2**32 - 1))
def test_encoder_matches_the_reference_solver(shape, n_bits, density, seed):
    n_in, n_out = shape
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, n_bits, dtype=np.uint8)
    care = (rng.random(n_bits) < density).astype(np.uint8)
    net = XorNetwork(n_in, n_out, seed % 1000)
    inputs, flips, count = xor_gate_encode(net.rows, n_in, stream(bits), stream(care), n_bits)
    x_ref, flips_ref = encode_ref(net.matrix(), bits, care)
    assert np.array_equal(inputs, stream(x_ref.reshape(-1)))
    assert np.array_equal(unstream(flips, n_bits), flips_ref)
    assert count == int(flips_ref.sum())
    # what the network outputs, corrected by the flips, is right at every care bit
    decoded = decode_ref(net.matrix(), x_ref, n_bits) ^ flips_ref
    assert np.array_equal(decoded[care == 1], bits[care == 1])


@SLOW
@given(shape=shapes, n_bits=st.integers(0, 3000), patch_density=st.floats(0.0, 0.2),
       seed=st.integers(0, 2**32 - 1))
def test_decoder_matches_the_reference_on_every_isa(shape, n_bits, patch_density, seed):
    n_in, n_out = shape
    rng = np.random.default_rng(seed)
    net = XorNetwork(n_in, n_out, seed % 1000)
    blocks = -(-n_bits // n_out)
    x = rng.integers(0, 2, (blocks, n_in), dtype=np.uint8)
    flips = (rng.random(n_bits) < patch_density).astype(np.uint8)
    counts, offsets = patch_streams(stream(flips), n_bits, n_out)
    want = decode_ref(net.matrix(), x, n_bits) ^ flips
    assert np.array_equal(
        patch_positions_ref(counts, offsets, int(flips.sum()), n_out, n_bits),
        np.flatnonzero(flips))
    for isa in isas_under_test():
        with use_isa(isa):
            out = xor_gate_decode(net.table, n_out, n_in, stream(x.reshape(-1)), n_bits,
                                  counts, offsets, int(flips.sum()))
        assert np.array_equal(unstream(out, n_bits), want), isa
        assert not np.unpackbits(out, bitorder="little")[n_bits:].any()  # zero padding


def test_decoder_threads_split_blocks_exactly():
    """A plane large enough for two threads, every ISA, against the reference."""
    net = XorNetwork(40, 200, 7)
    n_bits = 700_001
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, (-(-n_bits // 200), 40), dtype=np.uint8)
    flips = (rng.random(n_bits) < 0.001).astype(np.uint8)
    counts, offsets = patch_streams(stream(flips), n_bits, 200)
    want = decode_ref(net.matrix(), x, n_bits) ^ flips
    set_num_threads(2)
    try:
        for isa in isas_under_test():
            with use_isa(isa):
                out = xor_gate_decode(net.table, 200, 40, stream(x.reshape(-1)), n_bits, counts,
                                      offsets, int(flips.sum()))
            assert np.array_equal(unstream(out, n_bits), want), isa
    finally:
        set_num_threads(1)


@pytest.mark.parametrize("n_in,n_out", [(1, 8), (8, 8), (13, 72), (64, 64), (64, 656),
                                        (33, 4096)])
def test_table_rows_are_xors_of_columns(n_in, n_out):
    net = XorNetwork(n_in, n_out, 3)
    table = xor_gate_table(net.rows, n_in)
    g = net.matrix()
    rng = np.random.default_rng(n_in)
    for group in range(table.shape[0]):
        for value in [0, 1, 255, *rng.integers(0, 256, 5)]:
            cols = [8 * group + t for t in range(8) if value >> t & 1 and 8 * group + t < n_in]
            want = g[:, cols].sum(1) % 2 if cols else np.zeros(n_out, dtype=np.int64)
            row = np.unpackbits(table[group, value], bitorder="little")
            assert np.array_equal(row[:n_out], want)
            assert not row[n_out:].any()


def test_damaged_streams_are_refused_before_anything_is_written():
    net = XorNetwork(16, 64, 0)
    n_bits = 1000
    rng = np.random.default_rng(1)
    x = stream(rng.integers(0, 2, 16 * 16))
    flips = np.zeros(n_bits, dtype=np.uint8)
    flips[[3, 70, 71, 999]] = 1
    counts, offsets = patch_streams(stream(flips), n_bits, 64)
    args = (net.table, 64, 16)

    def decode(inputs=x, c=counts, o=offsets, n=4, bits=n_bits):
        out = np.full(-(-bits // 8), 0xAB, dtype=np.uint8)
        try:
            xor_gate_decode(*args, inputs, bits, c, o, n, out)
        except ValueError:
            assert (out == 0xAB).all()  # untouched
            raise
        return out

    decode()
    with pytest.raises(ValueError, match="patch counts stream has"):
        decode(c=counts[:-1])  # truncated
    with pytest.raises(ValueError, match="patch offsets stream has"):
        decode(o=offsets[:-1])
    with pytest.raises(ValueError, match="inputs stream has"):
        decode(inputs=x[:-1])
    with pytest.raises(ValueError, match="xor_gate_decode: nonzero padding after the patch"):
        decode(n=3)  # the counts hold more patches than recorded
    bad_counts = counts.copy()
    bad_counts[-1] |= 0x80  # a 1 in the padding
    with pytest.raises(ValueError, match="nonzero padding after the patch counts"):
        decode(c=bad_counts)
    late = np.zeros(n_bits, dtype=np.uint8)
    late[999] = 1
    c2, o2 = patch_streams(stream(late), n_bits, 64)
    o2 = stream(np.unpackbits(o2, bitorder="little")[:offset_bits(64)] | 1)  # offset 63: > 999
    with pytest.raises(ValueError, match="outside its block or the plane"):
        decode(c=c2, o=o2, n=1)
    with pytest.raises(ValueError, match="table has shape"):
        xor_gate_decode(XorNetwork(16, 264).table, 64, 16, x, n_bits, counts, offsets, 4)
    swapped = flips.copy()
    swapped[[70, 71]] = 0
    swapped[[80, 75]] = 1
    c3, o3 = patch_streams(stream(swapped), n_bits, 64)
    fields = np.unpackbits(o3, bitorder="little")[:4 * offset_bits(64)].reshape(4, -1)
    fields[[1, 2]] = fields[[2, 1]]  # offsets 16, 11 in block 1: out of order
    with pytest.raises(ValueError, match="out of order"):
        decode(c=c3, o=stream(fields.reshape(-1)))


def test_kernel_arguments_are_checked():
    net = XorNetwork(8, 16)
    with pytest.raises(ValueError, match="n_out=12 must be a multiple of 8"):
        XorNetwork(8, 12)
    with pytest.raises(ValueError, match="n_in=65"):
        XorNetwork(65, 128)
    with pytest.raises(ValueError, match="must not exceed n_out"):
        XorNetwork(64, 56)
    with pytest.raises(ValueError, match="rows have bits at or above n_in"):
        xor_gate_encode(net.rows, 4, stream([1]), stream([1]), 1)
    with pytest.raises(ValueError, match="bits has 1 bytes, expected 2"):
        xor_gate_encode(net.rows, 8, stream([1]), stream([1] * 9), 9)
    with pytest.raises(TypeError, match="uint8"):
        xor_gate_encode(net.rows, 8, np.zeros(2, np.int32), stream([1] * 9), 9)


# -- the network ---------------------------------------------------------------------------
def test_network_is_a_function_of_seed_and_shape():
    a, b, c = XorNetwork(48, 400, 5), XorNetwork(48, 400, 5), XorNetwork(48, 400, 6)
    assert np.array_equal(a.rows, b.rows) and a.fingerprint == b.fingerprint
    assert not np.array_equal(a.rows, c.rows) and a.fingerprint != c.fingerprint
    assert (a.rows != 0).all() and (a.rows < 2**48).all()
    small = XorNetwork(3, 8, 0)
    assert (small.rows != 0).all() and (small.rows < 8).all()


# -- planes: lossless over pruning rates and bit-planes -------------------------------------
@settings(max_examples=20, deadline=None)
@given(prune=st.floats(0.5, 0.95), planes=st.integers(1, 4), n=st.integers(1, 20_000),
       seed=st.integers(0, 2**32 - 1))
def test_decode_of_encode_is_right_at_every_care_bit(prune, planes, n, seed):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (planes, n), dtype=np.uint8)
    care = rng.random(n) >= prune
    encoded = encode_planes(bits, care, scheme="xor", seed=seed % 7)
    decoded = decode_planes(encoded)
    assert np.array_equal(decoded[:, care], bits[:, care])
    assert encoded.encrypted_bits == planes * -(-n // encoded.network.n_out) * \
        encoded.network.n_in
    plain = encode_planes(bits, care, scheme="plain")
    assert np.array_equal(decode_planes(plain, care)[:, care], bits[:, care])
    assert plain.bits == planes * int(care.sum())


def test_the_papers_operating_point():
    """1-bit, 91% random pruning, a million weights: encrypted + patch bits <= 0.33 per
    weight (the paper: 0.28), lossless. (Speed is `apb bench xor`'s business.)"""
    from apb.bench.xor import random_pruned_planes

    planes, care = random_pruned_planes(1_000_000, 0.91, 1, seed=0)
    encoded = encode_planes(planes, care, scheme="xor")
    assert encoded.bits / 1_000_000 <= 0.33
    assert np.array_equal(decode_planes(encoded)[:, care], planes[:, care])


def test_shape_choice_follows_the_pruning_rate():
    rng = np.random.default_rng(0)
    shapes = {}
    for prune in (0.5, 0.9):
        care = rng.random(50_000) >= prune
        e = encode_planes(rng.integers(0, 2, (1, 50_000)), care, scheme="xor")
        shapes[prune] = e.network.n_in / e.network.n_out
        assert e.bits / 50_000 < (1 - prune) * 1.35  # close to the care fraction
    assert shapes[0.9] < shapes[0.5] / 3


def test_decoding_with_another_network_is_refused():
    rng = np.random.default_rng(0)
    care = rng.random(5000) >= 0.8
    e = encode_planes(rng.integers(0, 2, (1, 5000)), care, scheme="xor", n_in=32, n_out=128)
    with pytest.raises(ValueError, match="does not match the one the planes were encoded"):
        decode_planes(e, network=XorNetwork(32, 128, seed=1))
    with pytest.raises(ValueError, match="does not match"):
        decode_planes(e, network=XorNetwork(32, 136, seed=0))
    assert np.array_equal(decode_planes(e, network=XorNetwork(32, 128, seed=0)),
                          decode_planes(e))


# -- the mask ------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 5000), density=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_mask_round_trip_and_size(n, density, seed):
    keep = np.random.default_rng(seed).random(n) < density
    m = encode_mask(keep)
    assert np.array_equal(decode_mask(m.describe(), dict(m.streams)), keep)
    assert m.bits <= n  # never more than the bitmap


def test_rice_mask_is_near_the_entropy_and_checked():
    keep = np.random.default_rng(0).random(200_000) >= 0.91
    m = encode_mask(keep)
    entropy = -(0.09 * np.log2(0.09) + 0.91 * np.log2(0.91))
    assert m.coding == "rice" and m.bits / 200_000 < 1.03 * entropy
    streams = dict(m.streams)
    short = dict(streams, quotients=streams["quotients"][:-1])
    with pytest.raises(ValueError, match="quotients"):
        decode_mask(m.describe(), short)
    unary = np.unpackbits(streams["quotients"], bitorder="little")
    unary[np.flatnonzero(unary[:m.quotient_bits] == 0)[0]] = 1  # two gaps run together
    merged = dict(streams, quotients=np.packbits(unary, bitorder="little"))
    with pytest.raises(ValueError, match="gaps"):
        decode_mask(m.describe(), merged)


# -- layers --------------------------------------------------------------------------------
def packed_lenet(config, seed=0):
    torch.manual_seed(seed)
    model = apb.models.create("lenet5")
    apb.compress_(model, config)
    for _, layer in compressed_layers(model):
        if hasattr(layer.weight_quantizer, "set_progress"):
            layer.weight_quantizer.set_progress(1.0, layer.weight)
    return apb.pack_(model.eval())


LAYER_CONFIGS = [PruneQuantConfig(sparsity=0.9, bits=1), PruneQuantConfig(sparsity=0.6, bits=3),
                 PruneQuantConfig(sparsity=0.97, bits=2), APBConfig(fp_fraction=0.3),
                 APBConfig(fp_fraction=0.1, value_bits=16), DoReFaConfig(bits=2), BNNConfig()]


@pytest.mark.parametrize("config", LAYER_CONFIGS, ids=lambda c: repr(c)[:40])
def test_every_packed_layer_kind_round_trips_exactly(config):
    model = packed_lenet(config)
    for _, layer in apb.pack.packed_layers(model):
        encoded = encode_layer(layer)
        decoded = decode_layer(encoded)
        original = layer_tensors(layer)
        again = layer_tensors(decoded)
        assert original.keys() == again.keys()
        for key in original:
            assert np.array_equal(original[key], again[key]), key
        bits = encoded.bits()
        assert bits["total"] == bits["encrypted"] + bits["patches"] + bits["mask"]
        kind = layer.kind.split("_")[0]
        if kind == "pruned":
            assert encoded.planes.scheme == "xor" and encoded.mask is not None
            assert bits["encrypted"] + bits["patches"] < bits["dense"]
        elif kind == "dorefa" or layer.method == "bnn":
            assert encoded.planes.scheme == "plain"
            assert bits["total"] == bits["dense"]  # nothing to gain, nothing lost


@pytest.mark.parametrize("kept", ["none", "all", "one"])
def test_pruned_layers_at_the_extremes_round_trip(kept):
    from apb.pack import PackedPrunedLinear

    rows, cols, q = 3, 70, 2
    keep = {"none": torch.zeros(rows, cols), "all": torch.ones(rows, cols),
            "one": torch.zeros(rows, cols).index_fill_(1, torch.tensor([69]), 1)}[kept]
    keep = keep.to(torch.uint8)
    codes = torch.randint(0, 2, (q, rows, cols), dtype=torch.uint8) * keep
    layer = PackedPrunedLinear(cols, rows, keep_bits=pack_bits(keep),
                               code_planes=pack_bits(codes), alpha=torch.rand(rows))
    decoded = decode_layer(encode_layer(layer))
    assert torch.equal(decoded.keep_bits, layer.keep_bits)
    assert torch.equal(decoded.code_planes, layer.code_planes)


def test_apb_signs_implied_by_the_correction_are_dont_care():
    """|S| >= alpha fixes the sign: those positions cost nothing; the others stay care."""
    model = packed_lenet(APBConfig(fp_fraction=0.3))
    layer = dict(apb.pack.packed_layers(model))["fc1"]
    lp = layer_planes(layer_config(layer), layer_tensors(layer))
    values = layer.csr_values.double()
    alpha = float(layer.alpha[0]) if layer.alpha.numel() == 1 else None
    assert alpha is not None
    implied = int(((values >= alpha) | (values < -alpha)).sum())
    assert implied > 0
    assert int((~lp.care).sum()) == implied
    encoded = encode_layer(layer)
    assert encoded.inferred_signs and encoded.planes.care_count == layer.n_weights - implied


def test_apb_layer_whose_sign_contradicts_its_correction_keeps_every_bit():
    """A stored sign bit that the correction contradicts (lost to rounding) cannot be
    inferred: the layer falls back to all care bits, and still round-trips."""
    signs = pack_bits(torch.tensor([[1, 0, 0, 1]], dtype=torch.uint8))  # w0 negative
    csr = (torch.tensor([0, 2], dtype=torch.uint8), torch.tensor([0, 3], dtype=torch.uint8),
           torch.tensor([0.75, -0.8]))  # S0 >= alpha says positive, but the bit says negative
    layer = PackedAPBLinear(4, 1, sign_bits=signs, alpha=torch.tensor([0.5]), csr=csr)
    encoded = encode_layer(layer)
    assert not encoded.inferred_signs and encoded.planes.care_count == 4
    assert torch.equal(decode_layer(encoded).sign_bits, layer.sign_bits)


# -- files ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pruned_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("xor")
    model = packed_lenet(PruneQuantConfig(sparsity=0.9, bits=1))
    apb.pack.save_packed(model, d / "m.safetensors")
    report = encode_file(d / "m.safetensors", d / "m.xor.safetensors")
    return d, report


def read_safetensors(path):
    from safetensors.numpy import load

    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])["__metadata__"], load(data)


def rewrite(src, dst, metadata=None, tensors=None, sign=True):
    """``src`` with some metadata entries and tensors replaced; ``sign``: its sha256
    recomputed, as a forger would (the checks behind the checksum are what is tested)."""
    from safetensors.numpy import save

    from apb.pack.header import content_digest

    md, ts = read_safetensors(src)
    md.update(metadata or {})
    ts.update(tensors or {})
    if sign:
        md["sha256"] = content_digest(md, ts)
    dst.write_bytes(save(ts, metadata=md))
    return dst


def test_file_round_trip_gives_the_packed_model_back(pruned_files):
    d, report = pruned_files
    x = torch.randn(4, 1, 28, 28)
    original = apb.pack.load_packed(d / "m.safetensors")
    with torch.no_grad():
        assert torch.equal(load_xor(d / "m.xor.safetensors")(x), original(x))
    decode_file(d / "m.xor.safetensors", d / "back.safetensors")
    md_a, ts_a = read_safetensors(d / "m.safetensors")
    md_b, ts_b = read_safetensors(d / "back.safetensors")
    assert md_a == md_b and ts_a.keys() == ts_b.keys()
    assert all(np.array_equal(ts_a[k], ts_b[k]) for k in ts_a)
    assert report.encoded.model_bytes < report.packed.model_bytes
    tot = report.totals()
    assert tot["encrypted"] + tot["patches"] < 0.2 * report.weights
    assert {r.scheme for r in report.rows} == {"xor"}


def test_file_errors_are_clear(pruned_files, tmp_path):
    d, _ = pruned_files
    src = d / "m.xor.safetensors"
    (tmp_path / "junk.bin").write_bytes(b"not a model at all")
    with pytest.raises(PackedFormatError, match="not an apb packed model"):
        encode_file(tmp_path / "junk.bin", tmp_path / "o.safetensors")
    with pytest.raises(PackedFormatError, match="not an apb packed model"):
        encode_file(src, tmp_path / "o.safetensors")  # already XOR-encoded
    with pytest.raises(XorFormatError, match="it is a packed model"):
        load_xor(d / "m.safetensors")
    with pytest.raises(XorFormatError, match="not an apb XOR-encoded model"):
        load_xor(tmp_path / "junk.bin")

    md, ts = read_safetensors(src)
    layers = json.loads(md["layers"])
    fc1 = dict(layers["fc1"])
    for change, match in (({"seed": fc1["seed"] + 1}, "seed or shape does not match"),
                          ({"n_out": fc1["n_out"] + 8}, "seed or shape does not match"),
                          ({"patches": [fc1["patches"][0] + 1]}, "patch")):
        bad = dict(layers, fc1=dict(fc1, **change))
        path = rewrite(src, tmp_path / "bad.safetensors", {"layers": json.dumps(bad)})
        with pytest.raises(XorFormatError, match=match):
            load_xor(path)
    counts = ts["fc1.xor.patch_counts"]
    path = rewrite(src, tmp_path / "bad.safetensors", tensors={"fc1.xor.patch_counts":
                                                              counts[:-1]})
    with pytest.raises(XorFormatError, match="truncated"):
        load_xor(path)
    inputs = ts["fc1.xor.inputs"].copy()
    inputs[0, 5] ^= 0x10
    path = rewrite(src, tmp_path / "bad.safetensors", tensors={"fc1.xor.inputs": inputs})
    with pytest.raises(XorFormatError, match="checksum"):
        load_xor(path)
    bias = ts["fc3.bias"].copy()
    bias[0] += 1
    path = rewrite(src, tmp_path / "bad.safetensors", tensors={"fc3.bias": bias})
    with pytest.raises(XorFormatError, match="checksum"):
        load_xor(path)


# -- the command line ----------------------------------------------------------------------
def run_cli(argv, capsys) -> tuple[int, str, str]:
    from apb import cli

    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_xor_encode_decode_and_bench(pruned_files, tmp_path, capsys):
    d, _ = pruned_files
    out, report = tmp_path / "m.xor.safetensors", tmp_path / "report.json"
    code, stdout, err = run_cli(["xor-encode", d / "m.safetensors", "-o", out, "--json", report],
                                capsys)
    assert code == 0, err
    assert "encrypted" in stdout and "fc1" in stdout and "CSR" in stdout
    doc = json.loads(report.read_text())
    assert [r["name"] for r in doc["layers"]] == ["conv2", "fc1", "fc2"]
    for r in doc["layers"]:
        per = r["bits_per_weight"]
        assert per["total"] == pytest.approx(per["encrypted"] + per["patches"] + per["mask"])
        assert per["total"] < per["bitmap"]
    assert doc["xor_model_bytes"] < doc["packed_model_bytes"]

    back = tmp_path / "back.safetensors"
    code, stdout, err = run_cli(["xor-decode", out, "-o", back], capsys)
    assert code == 0 and "checked against its checksum" in stdout, err
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(apb.pack.load_packed(back)(x),
                           apb.pack.load_packed(d / "m.safetensors")(x))

    bench = tmp_path / "bench.json"
    code, stdout, err = run_cli(["bench", "xor", "--weights", 20_000, "--prune", 0.9, "--bits", 2,
                                 "--repeats", 3, "--json", bench], capsys)
    assert code == 0, err
    result = json.loads(bench.read_text())
    for key in ("bits_per_weight", "patch_bits_per_weight", "mask_bits_per_weight",
                "total_bits_per_weight", "lossless", "encode_seconds", "decode_gbytes_per_s"):
        assert key in result
    assert result["lossless"] is True
    assert result["total_bits_per_weight"] == pytest.approx(
        result["bits_per_weight"] + result["mask_bits_per_weight"])
    assert result["bits_per_weight"] < 2 * 0.1 * 1.4  # 2 planes, 10% kept


def test_cli_xor_errors_are_one_line(pruned_files, tmp_path, capsys):
    d, _ = pruned_files
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 40)
    for argv, match in (
            (["xor-encode", junk, "-o", tmp_path / "o"], "not an apb packed model"),
            (["xor-encode", d / "m.xor.safetensors", "-o", tmp_path / "o"], "already XOR"),
            (["xor-decode", d / "m.safetensors", "-o", tmp_path / "o"], "apb xor-encode"),
            (["xor-encode", tmp_path / "missing", "-o", tmp_path / "o"], "no packed model"),
            (["bench", "xor", "--prune", "1.5"], "--prune must lie in")):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
