"""Whole packed models: logits against the training model (LeNet-5, ResNet-20, ResNet-18),
file bytes against the summary, save/load round trips, torch.compile / torch.export, and
the loader's answer to damaged, alien and hostile files."""

from __future__ import annotations

import json
import random
import struct

import numpy as np
import pytest
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

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
from apb.methods import APBConfig, BNNConfig, DoReFaConfig
from apb.pack import PackedFormatError, load_packed, read_packed_info, save_packed
from apb.pack.header import FORMAT_VERSION, content_digest


def lenet(activation: str, **kwargs):
    return apb.models.create("lenet5", activation=activation, **kwargs)


def check_packed_model(model, x, tmp_path):
    """Packed logits within tolerance of the training model's; the file holds exactly the
    summary's bytes; loading it gives the packed model's logits bit for bit."""
    with torch.no_grad():
        want = model(x)
    predicted = apb.summary(model).model_bytes
    packed = packed_copy(model)
    with torch.no_grad():
        got = packed(x)
    error = relative_error(got, want)
    assert error < TOLERANCE, error
    path = tmp_path / "model.safetensors"
    info = save_packed(packed, path)
    assert info.file_bytes == path.stat().st_size
    assert info.model_bytes == predicted
    assert read_packed_info(path) == info
    loaded = load_packed(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), got)
    assert apb.summary(loaded).model_bytes == predicted
    return error


@pytest.mark.parametrize("act_bits", [32, 2, 1])
@pytest.mark.parametrize("method", ["apb", "bnn"])
def test_lenet5(method, act_bits, tmp_path):
    activation = "hardtanh" if act_bits == 1 else "relu"
    config = (APBConfig(bits_per_weight=1.5, budget_scope="model", act_bits=act_bits)
              if method == "apb" else BNNConfig(act_bits=act_bits))
    model = prepare(lenet(activation), config, (8, 1, 28, 28))
    check_packed_model(model, torch.randn(16, 1, 28, 28), tmp_path)


@pytest.mark.parametrize("act_bits", [32, 2, 1])
def test_lenet5_dorefa_2bit_weights(act_bits, tmp_path):
    activation = "hardtanh" if act_bits == 1 else "relu"
    model = prepare(lenet(activation), DoReFaConfig(bits=2, act_bits=act_bits), (8, 1, 28, 28))
    check_packed_model(model, torch.randn(16, 1, 28, 28), tmp_path)
    layer = apb.pack_(model).conv2
    assert isinstance(layer, apb.pack.PackedDoReFaConv2d) and layer.weight_bits == 2


@pytest.mark.parametrize("act_bits", [32, 2, 1])
def test_resnet20(act_bits, tmp_path):
    activation = "hardtanh" if act_bits == 1 else "relu"
    model = prepare(apb.models.create("resnet20", activation=activation),
                    APBConfig(fp_fraction=0.02, act_bits=act_bits), (4, 3, 32, 32))
    check_packed_model(model, torch.randn(4, 3, 32, 32), tmp_path)


def test_resnet18_224(tmp_path):
    model = prepare(apb.models.create("resnet18"), APBConfig(fp_fraction=0.02, act_bits=2),
                    (2, 3, 224, 224), steps=1)
    check_packed_model(model, torch.randn(1, 3, 224, 224), tmp_path)


def test_files_without_an_architecture_load_into_the_model_given(tmp_path):
    model = prepare(odd_model("relu"), APBConfig(act_bits=2), ODD_INPUT)
    with pytest.raises(ValueError, match="call apb.pack_"):
        save_packed(model, tmp_path / "a.safetensors", architecture={"name": "x", "kwargs": {}})
    assert list(tmp_path.iterdir()) == []
    apb.pack_(model)
    save_packed(model, tmp_path / "a.safetensors")
    with pytest.raises(PackedFormatError, match="pass the model to fill"):
        load_packed(tmp_path / "a.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


@pytest.mark.parametrize("mode", ["compile", "export"])
@pytest.mark.parametrize("method", ["apb-1bit", "dorefa-2bit", "apb-fp"])
def test_compile_and_export(method, mode):
    act_bits = {"apb-1bit": 1, "dorefa-2bit": 2, "apb-fp": 32}[method]
    config = (DoReFaConfig(act_bits=2) if method.startswith("dorefa")
              else APBConfig(fp_fraction=0.1, act_bits=act_bits))
    model = prepare(odd_model("hardtanh" if act_bits == 1 else "relu"), config, ODD_INPUT)
    packed = packed_copy(model)
    x = torch.randn(*ODD_INPUT)
    with torch.no_grad():
        want = packed(x)
        if mode == "compile":
            packed._modules["3"]._pad_cache.clear()  # traced afresh, not from the cache
            got = torch.compile(packed, backend="aot_eager", fullgraph=True)(x)
        else:
            program = torch.export.export(packed, (x,))
            assert "torch.ops.apb." in program.graph_module.code
            got = program.module()(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert all(not isinstance(v, torch._subclasses.FakeTensor)
               for v in packed._modules["3"]._pad_cache.values())


# -- damaged, alien and hostile files ----------------------------------------------------
@pytest.fixture(scope="module")
def packed_file(tmp_path_factory):
    """A small packed LeNet-5 (12x12 inputs): per-channel α, CSR part, 2-bit activations."""
    model = prepare(lenet("relu", input_size=12),
                    APBConfig(fp_fraction=0.05, per_channel=True, act_bits=2), (8, 1, 12, 12))
    path = tmp_path_factory.mktemp("packed") / "lenet12.safetensors"
    save_packed(apb.pack_(model), path)
    return path


def split(path):
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def join(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def rewrite(src, dst, tensors=None, metadata=None, sign=True):
    """Write ``src``'s tensors and metadata after applying the edit functions; ``sign``:
    recompute the file's sha256, as a forger would (so that the checks behind the checksum
    are what is tested)."""
    header, _ = split(src)
    meta = dict(header["__metadata__"])
    arrays = dict(st_load(src.read_bytes()))
    if tensors:
        tensors(arrays)
    if metadata:
        metadata(meta)
    if sign:
        meta["sha256"] = content_digest(meta, arrays)
    dst.write_bytes(st_save(arrays, metadata=meta))
    return dst


def edit_layers(fn):
    def edit(meta):
        layers = json.loads(meta["layers"])
        fn(layers)
        meta["layers"] = json.dumps(layers)
    return edit


def edit_arch(fn):
    def edit(meta):
        arch = json.loads(meta["architecture"])
        fn(arch)
        meta["architecture"] = json.dumps(arch)
    return edit


def set_item(name, index, value):
    def edit(arrays):
        arrays[name] = arrays[name].copy()
        arrays[name][index] = value
    return edit


def load_error(path) -> str:
    with pytest.raises(PackedFormatError) as info:
        load_packed(path)
    return str(info.value)


def test_loader_names_what_is_wrong(packed_file, tmp_path):
    assert isinstance(load_packed(packed_file), torch.nn.Module)
    cases = {
        "random": (lambda p: p.write_bytes(random.Random(0).randbytes(3000)), "not an apb packed"),
        "json": (lambda p: p.write_text('{"format": "apb-packed"}'), "not an apb packed"),
        "empty": (lambda p: p.write_bytes(b""), "only 0 bytes"),
        "plain safetensors": (lambda p: p.write_bytes(st_save({"w": np.zeros(3, np.float32)})),
                              "no apb metadata"),
        "other format": (lambda p: p.write_bytes(st_save({"w": np.zeros(3, np.float32)},
                                                         metadata={"format": "pt"})),
                         "format 'pt'"),
        "newer version": (lambda p: rewrite(packed_file, p, metadata=lambda m: m.update(
            format_version=str(FORMAT_VERSION + 1))), "upgrade apb"),
        "bad version": (lambda p: rewrite(packed_file, p, metadata=lambda m: m.update(
            format_version="1.0")), "invalid format_version"),
        "truncated": (lambda p: p.write_bytes(packed_file.read_bytes()[:-7]), "truncated"),
        "missing tensor": (lambda p: rewrite(packed_file, p, tensors=lambda a: a.pop(
            "conv2.alpha")), "'conv2.alpha' is missing"),
        "extra tensor": (lambda p: rewrite(packed_file, p, tensors=lambda a: a.update(
            {"bn9.weight": np.zeros(2, np.float32)})), "no place for: bn9.weight"),
        "wrong shape": (lambda p: rewrite(packed_file, p, tensors=lambda a: a.update(
            {"conv2.alpha": a["conv2.alpha"][:5]})), "expected float32[16]"),
        "wrong dtype": (lambda p: rewrite(packed_file, p, tensors=lambda a: a.update(
            {"fc1.sign_bits": a["fc1.sign_bits"].view(np.int8)})), "expected uint8"),
        "index out of range": (lambda p: rewrite(packed_file, p, tensors=set_item(
            "conv2.csr_indices", 0, 150)), "must lie in [0, 150)"),
        "indptr decreasing": (lambda p: rewrite(packed_file, p, tensors=set_item(
            "conv2.csr_indptr", 3, 0)), "decreases"),
        "indptr end": (lambda p: rewrite(packed_file, p, tensors=set_item(
            "conv2.csr_indptr", -1, 200)), "ends at 200"),
        "nan act scale": (lambda p: rewrite(packed_file, p, tensors=set_item(
            "fc1.act_scale", 0, np.nan)), "act_scale holds NaN"),
        "inf alpha": (lambda p: rewrite(packed_file, p, tensors=set_item(
            "fc2.alpha", 3, np.inf)), "alpha holds NaN or Inf"),
        "nan running var": (lambda p: rewrite(packed_file, p, tensors=set_item(
            "bn2.running_var", 0, np.nan)), "'bn2.running_var' holds NaN"),
        "unknown kind": (lambda p: rewrite(packed_file, p, metadata=edit_layers(
            lambda layers: layers["fc1"].update(kind="lut"))), "unknown kind 'lut'"),
        "rows": (lambda p: rewrite(packed_file, p, metadata=edit_layers(
            lambda layers: layers["fc1"].update(rows=7))), "does not match rows=7"),
        "value bits": (lambda p: rewrite(packed_file, p, metadata=edit_layers(
            lambda layers: layers["conv2"].update(value_bits=16))), "expected float16"),
        "dtype record": (lambda p: rewrite(packed_file, p, metadata=edit_layers(
            lambda layers: layers["conv2"]["dtypes"].update(alpha="float64"))),
            "records tensor dtypes"),
        "misplaced": (lambda p: rewrite(packed_file, p, metadata=edit_layers(
            lambda layers: layers.update(bn1=layers.pop("fc1")))), "BatchNorm2d there"),
        "unknown model": (lambda p: rewrite(packed_file, p, metadata=edit_arch(
            lambda a: a.update(name="gpt5"))), "unknown model 'gpt5'"),
        "huge model": (lambda p: rewrite(packed_file, p, metadata=edit_arch(
            lambda a: a["kwargs"].update(num_classes=10**12))), "larger than"),
        "wider model": (lambda p: rewrite(packed_file, p, metadata=edit_arch(
            lambda a: a["kwargs"].update(num_classes=11))), "'fc3.weight' is float32"),
        "bad kwargs": (lambda p: rewrite(packed_file, p, metadata=edit_arch(
            lambda a: a["kwargs"].update(depth=3))), "cannot build the architecture"),
    }
    for label, (make, message) in cases.items():
        path = tmp_path / f"{label}.safetensors"
        make(path)
        assert message in load_error(path), label
    assert "no packed model at" in load_error(tmp_path / "absent.safetensors")
    assert "is not a file" in load_error(tmp_path)


def test_loader_checks_the_bitstream_padding(tmp_path):
    model = prepare(apb.models.create("mlp", in_features=64, hidden=[29, 13, 11]),
                    APBConfig(fp_fraction=0.1), (8, 64))
    path = tmp_path / "mlp.safetensors"
    save_packed(apb.pack_(model), path)
    x = torch.randn(3, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_packed(path)(x), model(x), rtol=0, atol=0)
    arrays = st_load(path.read_bytes())
    assert (29 * 13) % 8 != 0
    bad = rewrite(path, tmp_path / "bad.safetensors",
                  tensors=set_item("fc2.sign_bits", -1, arrays["fc2.sign_bits"][-1] | 0x80))
    assert "nonzero padding bits" in load_error(bad)


def corruptions(data: bytes, rng: random.Random):
    """Byte flips anywhere, truncations, header edits and extensions of a packed file."""
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    for i in range(300):
        kind = i % 6
        if kind in (0, 1):
            out = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(len(out)) if kind == 0 else rng.randrange(8 + n, len(out))
                out[at] ^= rng.randint(1, 255)
            yield bytes(out)
        elif kind == 2:
            yield data[:rng.randrange(len(data))]
        elif kind == 3:
            yield data + rng.randbytes(rng.randint(1, 64))
        else:
            edited = json.loads(json.dumps(header))
            meta = edited["__metadata__"]
            doc_key = rng.choice(["layers", "architecture", None])
            if doc_key is None:  # the safetensors table itself
                name = rng.choice([k for k in edited if k != "__metadata__"])
                entry = edited[name]
                field = rng.choice(["dtype", "shape", "data_offsets"])
                entry[field] = mutate(entry[field], rng)
            else:
                doc = json.loads(meta[doc_key])
                mutate_in_place(doc, rng)
                meta[doc_key] = json.dumps(doc)
            yield join(edited, data[8 + n:])


def mutate(value, rng: random.Random):
    choices = [0, -1, 1, 2, 3, 7, 16, 255, 2**31, 2**40, 10**30, 1.5, None, "x", "uint8",
               "float16", True, [], [1], [0, 0], {}]
    if isinstance(value, list) and value and rng.random() < 0.5:
        value = list(value)
        value[rng.randrange(len(value))] = mutate(value[0], rng)
        return value
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
        return value + rng.choice([-1, 1, 8, -8, 64])
    return rng.choice(choices)


def mutate_in_place(doc, rng: random.Random) -> None:
    """Change, delete or replace one random leaf of a JSON document."""
    node = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return
        key = rng.choice(keys)
        if isinstance(node[key], (dict, list)) and node[key] and rng.random() < 0.7:
            node = node[key]
            continue
        if isinstance(node, dict) and rng.random() < 0.2:
            del node[key]
        else:
            node[key] = mutate(node[key], rng)
        return


def test_random_corruptions_fail_cleanly(packed_file, tmp_path):
    """Every corrupted file either loads into a model that runs, or raises
    PackedFormatError; anything else (another exception, a crash) fails the test."""
    rng = random.Random(1234)
    x = torch.randn(2, 1, 12, 12)
    path = tmp_path / "corrupt.safetensors"
    outcomes = {"loaded": 0, "refused": 0}
    for data in corruptions(packed_file.read_bytes(), rng):
        path.write_bytes(data)
        try:
            model = load_packed(path)
        except PackedFormatError:
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        with torch.no_grad():
            assert model(x).shape == (2, 10)
    assert outcomes["refused"] > 200
