"""Integrity of packed and XOR-encoded files: a sha256 over every metadata entry and every
tensor, checked on load, so that no edit that would change the model loads silently; the
value checks behind it; old (version 1) files, and checked files relabelled version 1,
refused unless the caller trusts them; the memory budget of a load (issue 19)."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from _hostile import LEGACY, bases, edit_json, read, write
from apb.jobs.repack import repack_file
from apb.pack import PackedFormatError, load_packed
from apb.pack.header import FORMAT_VERSION, UncheckedFileWarning, content_digest
from apb.pack.limits import MAX_BYTES_ENV, budget
from apb.pack.xor import FORMAT_VERSION as XOR_VERSION
from apb.pack.xor import XorFormatError, decode_file, encode_file, load_xor, recorded_encoding

X = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return bases(tmp_path_factory.mktemp("integrity"))


def refused(path: Path, loader=load_packed, error=PackedFormatError) -> str:
    with pytest.raises(error) as info:
        loader(path)
    return str(info.value)


def test_new_files_carry_a_checksum_of_everything(files):
    for key in ("pruned", "apb"):
        md, ts = read(files[key])
        assert md["format_version"] == str(FORMAT_VERSION) == "2"
        assert md["sha256"] == content_digest(md, ts)
    md, ts = read(files["xor"])
    assert md["format_version"] == str(XOR_VERSION) == "2"
    assert md["sha256"] == content_digest(md, ts)


def test_the_digest_is_an_independent_sha256_of_the_fields():
    """content_digest against a hand-built byte string hashed with hashlib."""
    import hashlib

    md = {"b": "2", "a": "1", "sha256": "ignored"}
    ts = {"t": np.array([1.5, -2.0], dtype=np.float32)}

    def field(b: bytes) -> bytes:
        return len(b).to_bytes(8, "little") + b

    raw = (field(b"a") + field(b"1") + field(b"b") + field(b"2") + field(b"t")
           + field(b"<f4[2]") + (8).to_bytes(8, "little") + ts["t"].tobytes())
    assert content_digest(md, ts) == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("edit", [
    "activation", "act_bits", "writer", "tensor value", "tensor dropped", "sha256 removed"])
def test_unsigned_edits_of_a_packed_file_are_refused(files, tmp_path, edit):
    md, ts = read(files["apb"])
    if edit == "activation":
        edit_json(md, "architecture", lambda a: a["kwargs"].update(activation="hardtanh"))
    elif edit == "act_bits":
        edit_json(md, "layers", lambda doc: doc["fc2"].update(act_bits=1))
    elif edit == "writer":
        md["writer"] = "someone else"
    elif edit == "tensor value":
        ts["bn1.running_mean"] = ts["bn1.running_mean"] + 1
    elif edit == "tensor dropped":
        del ts["classifier.bias"]
    else:
        del md["sha256"]
    path = write(tmp_path / "e.safetensors", md, ts, sign=False)
    assert "sha256" in refused(path)


def test_random_bit_flips_in_the_tensors_never_load(files, tmp_path):
    """The issue's probe: 18 of 42 data-bit flips used to load with other predictions."""
    data = files["apb"].read_bytes()
    n = int.from_bytes(data[:8], "little")
    rng = random.Random(42)
    path = tmp_path / "flip.safetensors"
    for _ in range(42):
        out = bytearray(data)
        out[rng.randrange(8 + n, len(out))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(out))
        with pytest.raises(PackedFormatError):
            load_packed(path)


@pytest.mark.parametrize("edit", ["activation", "act_bits", "seed", "tensor"])
def test_unsigned_edits_of_an_xor_file_are_refused_before_decoding(files, tmp_path, edit):
    """The embedded packed metadata is covered too: an activation or act_bits edit used to
    load silently and change test accuracy from 0.861 to 0.270 / 0.100."""
    md, ts = read(files["xor"])
    packed_md = json.loads(md["packed_metadata"])
    if edit == "activation":
        edit_json(packed_md, "architecture", lambda a: a["kwargs"].update(activation="hardtanh"))
    elif edit == "act_bits":
        edit_json(packed_md, "layers", lambda doc: doc["fc2"].update(act_bits=1))
    elif edit == "seed":
        edit_json(md, "layers", lambda doc: doc["fc2"].update(seed=doc["fc2"].get("seed", 0) + 1))
    else:
        key = next(k for k in ts if k.endswith("xor.inputs"))
        ts[key] = ts[key] ^ np.uint8(1)
    md["packed_metadata"] = json.dumps(packed_md)
    path = write(tmp_path / "e.safetensors", md, ts, sign=False)
    assert "sha256" in refused(path, load_xor, XorFormatError)
    with pytest.raises(XorFormatError, match="sha256"):
        decode_file(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("edit, message", [
    ("running_var", "negative variance"), ("running_mean", "NaN or Inf"),
    ("alpha zero", "alpha holds 0.0"), ("alpha negative", "alpha holds -"),
    ("bnn with CSR", "binary"), ("version digit", "ASCII")])
def test_signed_edits_that_break_the_model_are_refused(files, tmp_path, edit, message):
    """Behind the checksum (re-signed as a forger would), the values are checked too."""
    md, ts = read(files["apb"])
    if edit == "running_var":
        ts["bn2.running_var"] = ts["bn2.running_var"].copy()
        ts["bn2.running_var"][3] = -0.5
    elif edit == "running_mean":
        ts["bn2.running_mean"] = ts["bn2.running_mean"].copy()
        ts["bn2.running_mean"][0] = np.inf
    elif edit == "alpha zero":
        ts["fc2.alpha"] = np.zeros_like(ts["fc2.alpha"])
    elif edit == "alpha negative":
        ts["fc2.alpha"] = -ts["fc2.alpha"]
    elif edit == "bnn with CSR":
        edit_json(md, "layers", lambda doc: doc["fc2"].update(method="bnn"))
    else:
        md["format_version"] = "\u0662"
    path = write(tmp_path / "e.safetensors", md, ts)
    assert message in refused(path)


def test_a_bnn_layer_with_a_zero_scale_still_loads(tmp_path):
    """alpha = mean|w| is 0 for an all-zero row of a binary layer: legitimate, kept."""
    from _hostile import packed_mlp
    from apb.methods import BNNConfig

    path = packed_mlp(tmp_path / "bnn.safetensors", BNNConfig())
    md, ts = read(path)
    ts["fc2.alpha"] = ts["fc2.alpha"].copy()
    ts["fc2.alpha"][0] = 0.0
    model = load_packed(write(tmp_path / "zero.safetensors", md, ts))
    with torch.no_grad():
        assert torch.isfinite(model(X)).all()


REFUSED = "was written by an older apb without a checksum"


def test_version_1_files_are_refused_unless_trusted():
    with pytest.raises(PackedFormatError, match=REFUSED):
        load_packed(LEGACY / "apb.safetensors")
    with pytest.raises(XorFormatError, match=REFUSED):
        load_xor(LEGACY / "apb.xor.safetensors")
    with pytest.warns(UncheckedFileWarning, match="without a checksum"):
        load_packed(LEGACY / "apb.safetensors", allow_unverified=True)
    with pytest.warns(UncheckedFileWarning, match="without a checksum"):
        load_xor(LEGACY / "apb.xor.safetensors", allow_unverified=True)


def test_version_1_refusal_is_one_line_in_the_cli(capsys):
    from apb import cli

    code = cli.main(["summary", str(LEGACY / "apb.safetensors")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("apb summary: error: ")
    assert REFUSED in err[0] and "apb repack IN OUT" in err[0]


def _downgraded(md: dict) -> dict:
    """What stripping the checksum and relabelling a file version 1 does to its metadata."""
    md = dict(md)
    del md["sha256"]
    md["format_version"] = "1"
    return md


@pytest.mark.parametrize("edit", ["none", "tensor value", "activation"])
def test_a_checked_file_relabelled_version_1_is_refused(files, tmp_path, edit):
    """The downgrade: strip a version-2 file's sha256, say version 1, then edit the model.
    Refused by default; only trusting it (allow_unverified) loads the edit, which does
    change the model, so the refusal is what stops it."""
    md, ts = read(files["apb"])
    md = _downgraded(md)
    if edit == "tensor value":
        ts["bn1.running_mean"] = ts["bn1.running_mean"] + 1
    elif edit == "activation":
        edit_json(md, "architecture", lambda a: a["kwargs"].update(activation="hardtanh"))
    path = write(tmp_path / "down.safetensors", md, ts, sign=False)
    assert REFUSED in refused(path)
    with pytest.warns(UncheckedFileWarning):
        forged = load_packed(path, allow_unverified=True)
    with torch.no_grad():
        same = torch.equal(forged(X), load_packed(files["apb"])(X))
    assert same == (edit == "none")


@pytest.mark.parametrize("edit", ["none", "act_bits"])
def test_a_checked_xor_file_relabelled_version_1_is_refused(files, tmp_path, edit):
    md, ts = read(files["xor"])
    md = _downgraded(md)
    if edit == "act_bits":  # the embedded packed metadata has its own sha256: strip it too
        packed_md = _downgraded(json.loads(md["packed_metadata"]))
        edit_json(packed_md, "layers", lambda doc: doc["fc2"].update(act_bits=1))
        md["packed_metadata"] = json.dumps(packed_md)
    path = write(tmp_path / "down.safetensors", md, ts, sign=False)
    assert REFUSED in refused(path, load_xor, XorFormatError)
    with pytest.raises(XorFormatError, match=REFUSED):
        decode_file(path, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.warns(UncheckedFileWarning):
        forged = load_xor(path, allow_unverified=True)
    with torch.no_grad():
        same = torch.equal(forged(X), load_xor(files["xor"])(X))
    assert same == (edit == "none")


def test_memory_budget_is_relative_to_the_file_and_settable(files, tmp_path, monkeypatch):
    assert budget(1000)[0] == 64 << 20
    assert budget(10 << 20)[0] == 640 << 20
    assert budget(1000, max_bytes=5)[0] == 5
    md, ts = read(files["pruned"])
    from _hostile import huge_layer

    huge_layer(md, ts, "fc1", 200_000)  # 6.4M pruned weights, nothing stored for them
    path = write(tmp_path / "big.safetensors", md, ts)
    message = refused(path)
    assert "would need about" in message and MAX_BYTES_ENV in message
    monkeypatch.setenv(MAX_BYTES_ENV, str(2 << 30))  # the user allows it
    model = load_packed(path)
    assert model.fc1.cols == 200_000
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(PackedFormatError, match="not a positive number"):
        load_packed(path)
    monkeypatch.delenv(MAX_BYTES_ENV)
    assert isinstance(load_packed(path, max_bytes=2 << 30), torch.nn.Module)
    with pytest.raises(PackedFormatError, match="max_bytes="):
        load_packed(files["apb"], max_bytes=1000)


def test_valid_files_load_as_before(files):
    """Round trips are unchanged: the packed and the XOR file give one model."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, b = load_packed(files["pruned"]), load_xor(files["xor"])
    with torch.no_grad():
        assert torch.equal(a(X), b(X))


@pytest.mark.parametrize("kind", ["packed", "xor seed 7"])
def test_repack_rewrites_a_current_file_unchanged(files, tmp_path, kind):
    """Repacking goes through the ordinary writers: a file that is already current comes
    back with the same metadata and tensors, an XOR file with its seed and scheme."""
    src = files["pruned"]
    if kind != "packed":
        src = tmp_path / "seeded.xor.safetensors"
        encode_file(files["pruned"], src, seed=7, scheme="xor")
        assert recorded_encoding(src) == (7, "xor")
    done = repack_file(src, tmp_path / "out.safetensors")
    assert done.format_version == 2 and done.kind == ("packed" if kind == "packed"
                                                      else "XOR-encoded")
    (md, ts), (md2, ts2) = read(src), read(tmp_path / "out.safetensors")
    if kind != "packed":  # the embedded packed metadata is JSON, its key order free
        assert json.loads(md2.pop("packed_metadata")) == json.loads(md.pop("packed_metadata"))
        md2.pop("sha256"), md.pop("sha256")
    assert md2 == md and ts2.keys() == ts.keys()
    assert all(np.array_equal(ts2[k], ts[k]) and ts2[k].dtype == ts[k].dtype for k in ts)
