"""Hostile and careless inputs for the fuzz suite (tests/test_hostile_files.py): small files
whose headers ask for huge allocations, edited files re-signed as an attacker would, data
folders that lie, and outputs that cannot be written.

Each generator writes its input under a folder and returns the ``apb`` command line that
reads it; every one must end with exit status 2 and one line on stderr, quickly and in
bounded memory.
"""

from __future__ import annotations

import json
import pickle
import random
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

import apb
import apb.models
from apb.methods import APBConfig, PruneQuantConfig
from apb.nn import compressed_layers
from apb.pack.header import content_digest
from apb.pack.layer_tensors import expected_tensors
from apb.pack.xor import encode_file

LEGACY = Path(__file__).parent / "data" / "legacy-e22d813"


# -- reading and writing safetensors --------------------------------------------------------
def read(path: Path) -> tuple[dict, dict]:
    data = Path(path).read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    return dict(json.loads(data[8:8 + n])["__metadata__"]), dict(st_load(data))


def write(path: Path, metadata: dict, arrays: dict, sign: bool = True) -> Path:
    """Write a safetensors file; ``sign``: recompute its sha256 as a forger would."""
    metadata = dict(metadata)
    if sign and "sha256" in metadata:
        metadata["sha256"] = content_digest(metadata, arrays)
    Path(path).write_bytes(st_save(arrays, metadata=metadata))
    return Path(path)


def edit_json(metadata: dict, key: str, fn) -> None:
    doc = json.loads(metadata[key])
    fn(doc)
    metadata[key] = json.dumps(doc)


# -- legitimate bases -------------------------------------------------------------------------
def packed_mlp(path: Path, config, hidden=(32, 32), seed: int = 0) -> Path:
    """A small MLP for 8x8 digits, compressed with ``config``, trained to the end (pruning
    and quantizing), packed and saved."""
    torch.manual_seed(seed)
    model = apb.models.create("mlp", in_features=64, hidden=list(hidden))
    apb.compress_(model, config)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(16, 64))
    for _, layer in compressed_layers(model):
        if hasattr(layer.weight_quantizer, "set_progress"):
            layer.weight_quantizer.set_progress(1.0, layer.weight)
    apb.pack.save_packed(apb.pack_(model.eval()), path)
    return Path(path)


def bases(folder: Path) -> dict[str, Path]:
    """``{"pruned", "apb", "xor"}``: a pruned + 2-bit MLP, an APB MLP, and the pruned one
    XOR-encoded."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"pruned": packed_mlp(folder / "pruned.safetensors",
                                PruneQuantConfig(sparsity=0.9, bits=2, keep_first=False)),
           "apb": packed_mlp(folder / "apb.safetensors", APBConfig(fp_fraction=0.1))}
    out["xor"] = folder / "pruned.xor.safetensors"
    encode_file(out["pruned"], out["xor"])
    return out


# -- hostile packed files -----------------------------------------------------------------------
def huge_layer(metadata: dict, arrays: dict, layer: str, k: int) -> None:
    """Make ``layer`` (the MLP's first) take ``k`` inputs with every weight pruned (nnz = 0,
    so the file stores nothing for them), and the architecture agree."""
    edit_json(metadata, "architecture", lambda a: a["kwargs"].update(
        in_features=k, input_shape=[k, 1, 1]))

    def layers(doc):
        cfg = doc[layer]
        cfg.update(K=k, weight_shape=[cfg["rows"], k], nnz=0)
        cfg["dtypes"] = {n: d for n, (_, d) in expected_tensors(cfg).items()}
    edit_json(metadata, "layers", layers)
    for key in ("kept_codes", "keep_bits", "csr_indices", "csr_indptr"):
        arrays.pop(f"{layer}.{key}", None)


def packed_cases(base: dict[str, Path], d: Path) -> dict[str, list[str]]:
    cases = {}
    ev = ["--dataset", "digits"]

    md, ts = read(base["pruned"])
    huge_layer(md, ts, "fc1", 1 << 24)  # 32 x 16.7M pruned weights from a ~20 KB file
    cases["packed: nnz=0 layer, K=2^24"] = ["eval", str(write(d / "k24.st", md, ts)), *ev]
    md, ts = read(base["pruned"])
    huge_layer(md, ts, "fc1", 3_000_000)  # just over the default budget
    cases["packed: nnz=0 layer, K=3e6"] = ["eval", str(write(d / "k3m.st", md, ts)), *ev]
    md, ts = read(base["pruned"])
    edit_json(md, "architecture", lambda a: a["kwargs"].update(hidden=[1] * 100_000))
    cases["packed: mlp(hidden=[1]*100000)"] = ["eval", str(write(d / "deep.st", md, ts)), *ev]
    md, ts = read(base["pruned"])
    edit_json(md, "architecture", lambda a: a["kwargs"].update(num_classes=4_000_000_000))
    cases["packed: num_classes=4e9"] = ["eval", str(write(d / "wide.st", md, ts)), *ev]
    md, ts = read(base["pruned"])
    md["junk"] = "x" * (20 << 20)
    cases["packed: 20 MB header"] = ["eval", str(write(d / "bighdr.st", md, ts)), *ev]
    data = bytearray(base["pruned"].read_bytes())
    data[:8] = struct.pack("<Q", 1 << 40)
    (d / "hdrlen.st").write_bytes(bytes(data))
    cases["packed: header length 2^40"] = ["eval", str(d / "hdrlen.st"), *ev]
    md, ts = read(base["pruned"])
    edit_json(md, "layers", lambda doc: doc.update(
        {f"ghost{i}": dict(doc["fc1"]) for i in range(20_000)}))
    cases["packed: 20000 layer entries"] = ["eval", str(write(d / "many.st", md, ts)), *ev]
    md, ts = read(base["apb"])
    ts["bn1.running_var"] = -np.abs(ts["bn1.running_var"])
    cases["packed: negative running_var"] = ["eval", str(write(d / "var.st", md, ts)), *ev]
    md, ts = read(base["apb"])
    ts["fc2.alpha"] = -ts["fc2.alpha"]
    cases["packed: alpha < 0"] = ["eval", str(write(d / "alpha.st", md, ts)), *ev]
    md, ts = read(base["apb"])
    md["format_version"] = "\u0662"  # ARABIC-INDIC DIGIT TWO: str.isdigit() says yes
    cases["packed: non-ASCII format_version"] = ["eval", str(write(d / "ver.st", md, ts)), *ev]
    md, ts = read(base["apb"])
    edit_json(md, "layers", lambda doc: doc["fc2"].update(method="bnn"))
    cases["packed: bnn method with a CSR part"] = ["eval", str(write(d / "m.st", md, ts)), *ev]
    md, ts = read(base["apb"])
    edit_json(md, "architecture", lambda a: a["kwargs"].update(activation="hardtanh"))
    cases["packed: unsigned edit"] = ["eval", str(write(d / "u.st", md, ts, sign=False)), *ev]
    return cases


# -- hostile XOR files ------------------------------------------------------------------------
def xor_cases(base: dict[str, Path], d: Path) -> dict[str, list[str]]:
    cases = {}
    md, ts = read(base["xor"])
    packed_md = json.loads(md["packed_metadata"])
    huge_layer(packed_md, {}, "fc1", 1 << 24)
    md["packed_metadata"] = json.dumps(packed_md)
    cases["xor: embedded K=2^24"] = ["xor-decode", str(write(d / "x24.st", md, ts)),
                                     "-o", str(d / "out.safetensors")]
    md, ts = read(base["xor"])
    packed_md = json.loads(md["packed_metadata"])
    edit_json(packed_md, "layers", lambda doc: doc["fc1"].update(rows=100_000, weight_shape=[
        100_000, doc["fc1"]["K"]]))
    md["packed_metadata"] = json.dumps(packed_md)
    cases["xor: embedded rows=1e5"] = ["xor-decode", str(write(d / "xrows.st", md, ts)),
                                       "-o", str(d / "out.safetensors")]
    md, ts = read(base["xor"])
    packed_md = json.loads(md["packed_metadata"])
    edit_json(packed_md, "layers", lambda doc: doc["fc1"].update(act_bits=1))
    md["packed_metadata"] = json.dumps(packed_md)
    cases["xor: unsigned act_bits edit"] = ["xor-decode", str(write(d / "xa.st", md, ts,
                                                                    sign=False)),
                                            "-o", str(d / "out.safetensors")]
    return cases


# -- hostile checkpoints ------------------------------------------------------------------------
def checkpoint_cases(d: Path) -> dict[str, list[str]]:
    cases = {}
    ckpt = torch.load(LEGACY / "fp.pt", weights_only=True)
    wide = dict(ckpt, model={"name": "mlp", "kwargs": dict(ckpt["model"]["kwargs"],
                                                             hidden=[4_000_000, 32])})
    torch.save(wide, d / "wide.pt")
    cases["checkpoint: width 4e6"] = ["summary", str(d / "wide.pt")]
    deep = dict(ckpt, model={"name": "mlp", "kwargs": dict(ckpt["model"]["kwargs"],
                                                             hidden=[1] * 100_000)})
    torch.save(deep, d / "deep.pt")
    cases["checkpoint: hidden=[1]*100000"] = ["summary", str(d / "deep.pt")]
    with zipfile.ZipFile(d / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/data.pkl", pickle.dumps({"format": "apb.train.checkpoint"}))
        with z.open("bomb/data/0", "w", force_zip64=True) as f:
            block = bytes(1 << 20)
            for _ in range(128):  # 128 MiB of zeros, a few hundred KB compressed
                f.write(block)
    cases["checkpoint: zip bomb"] = ["summary", str(d / "bomb.pt")]
    legacy = pickle.dumps({"format": "apb.train.checkpoint"}, protocol=2)
    (d / "legacy.pt").write_bytes(legacy + struct.pack("<Q", 1 << 62))
    cases["checkpoint: legacy pickle"] = ["summary", str(d / "legacy.pt")]
    return cases


# -- data folders -------------------------------------------------------------------------------
def cifar_dir(d: Path, labels=None, meta=None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    images = np.zeros((2, 3072), np.uint8)
    for name in [*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]:
        batch = {b"data": images, b"labels": labels if labels is not None else [0, 1]}
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    if meta is not None:
        (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": meta}, protocol=2))
    return d


def data_cases(base: dict[str, Path], d: Path) -> dict[str, list[str]]:
    model = str(base["apb"])
    cases = {"cifar: label 2^70": ["eval", model, "--dataset", "cifar10", "--data-dir",
                                   str(cifar_dir(d / "c1", labels=[0, 2**70]))],
             "cifar: batches.meta not UTF-8": [
                 "eval", model, "--dataset", "cifar10", "--data-dir",
                 str(cifar_dir(d / "c2", meta=[b"\xff\xfe"] + [b"x"] * 9))]}
    root, outside = d / "images", d / "elsewhere"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"\x89PNG not really")
    (root / "train" / "a" / "x.png").symlink_to(outside / "secret.png")
    (root / "val" / "b").symlink_to(outside, target_is_directory=True)
    cases["imagefolder: symlink out of data_dir"] = ["eval", model, "--dataset", "imagefolder",
                                                     "--data-dir", str(root)]
    return cases


# -- outputs and values -------------------------------------------------------------------------
def output_cases(base: dict[str, Path], d: Path) -> dict[str, list[str]]:
    blocker = d / "a-file"
    blocker.write_text("not a directory")
    bad = str(blocker / "out")
    fp, bnn, apb_ckpt = (str(LEGACY / n) for n in ("fp.pt", "bnn.pt", "apb.pt"))
    return {
        "output: pack": ["pack", apb_ckpt, "-o", bad],
        "output: xor-encode": ["xor-encode", str(base["pruned"]), "-o", bad],
        "output: xor-decode": ["xor-decode", str(base["xor"]), "-o", bad],
        "output: eval --json": ["eval", str(base["apb"]), "--dataset", "digits", "--json", bad],
        "output: summary --json": ["summary", str(base["apb"]), "--json", bad],
        "output: plot-weights": ["plot-weights", apb_ckpt, "-o", bad + ".png"],
        "output: ptq": ["ptq", fp, "--method", "apb-ptq", "--target", "1.6", "-o", bad],
        "output: prune-quantized": ["prune-quantized", bnn, "--budget-ratio", "0.25",
                                    "--dataset", "digits", "-o", bad],
        "output: train --out-dir": ["train", "--model", "mlp", "--dataset", "digits",
                                    "--epochs", "1", "--out-dir", bad],
        "value: --bits-per-weight nan": ["train", "--method", "apb", "--bits-per-weight", "nan",
                                         "--out-dir", str(d / "run")],
        "value: --bits-per-weight inf": ["train", "--method", "apb", "--bits-per-weight", "inf",
                                         "--out-dir", str(d / "run")],
        "value: demo --apb-bits-per-weight nan": ["demo", "--apb-bits-per-weight", "nan",
                                                  "--out", str(d / "demo")],
    }


def random_header_cases(base: dict[str, Path], d: Path, count: int, seed: int
                        ) -> dict[str, list[str]]:
    """``count`` re-signed packed files whose layer entries or architecture kwargs got one
    random large or odd value."""
    rng = random.Random(seed)
    values = [0, -1, 2**31, 2**40, 10**6, 3_000_000, 1 << 24, 10**30, 1.5, None, "x", [],
              [1] * 300, {"a": [[[[[1]]]]]}]
    cases = {}
    for i in range(count):
        md, ts = read(base[rng.choice(["pruned", "apb"])])
        if rng.random() < 0.5:
            key = rng.choice(["num_classes", "in_features", "hidden", "activation"])
            value = rng.choice(values)
            edit_json(md, "architecture", lambda a, k=key, v=value: a["kwargs"].update({k: v}))
        else:
            layer = rng.choice(["fc1", "fc2", "classifier"])
            field = rng.choice(["rows", "K", "nnz", "weight_bits", "act_bits", "alpha_count"])
            value = rng.choice(values)
            edit_json(md, "layers", lambda doc, lay=layer, f=field, v=value: doc.get(
                lay, doc[next(iter(doc))]).update({f: v}))
        cases[f"random header {i}"] = ["summary", str(write(d / f"r{i}.st", md, ts))]
    return cases
