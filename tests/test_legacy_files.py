"""Files written before the package was reorganised still load and compute the same.

``tests/data/legacy-e22d813`` holds what release e22d813 wrote for a small MLP on digits
(``hidden=[32, 32]``, 3 epochs): training checkpoints of ``apb``, ``bnn`` and ``fp``, the
``apb`` model packed and XOR-encoded, an ``apb-ptq`` checkpoint and a filter-pruned ``bnn``
checkpoint; ``expected.json`` is what that release's ``apb eval --dataset digits`` printed
for each. The commands that made them::

    apb train --model mlp --dataset digits --model-options '{"hidden": [32, 32]}' \
        --epochs 3 --batch-size 64 --method apb --fp-fraction 0.05   (and bnn, fp)
    apb pack apb/last.pt -o apb.safetensors
    apb xor-encode apb.safetensors -o apb.xor.safetensors
    apb ptq fp/last.pt --method apb-ptq --target 1.6 --calib 128 -o apb_ptq.pt
    apb prune-quantized bnn/last.pt --budget-ratio 0.25 --trials 2 --seeds 1 \
        --finetune-epochs 1 --dataset digits --val-samples 200 -o pruned.pt

The packed and XOR files are of format version 1, without a checksum: they are refused
unless the caller trusts them (``allow_unverified=True``), and ``apb repack`` converts them
into checked files of the current version that compute the same predictions.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest

from apb import cli, data
from apb.jobs.evaluate import evaluate_file
from apb.pack import FORMAT_VERSION, PackedFormatError, UncheckedFileWarning, load_packed
from apb.pack.xor import FORMAT_VERSION as XOR_VERSION
from apb.pack.xor import XorFormatError, decode_file, load_xor, recorded_encoding
from apb.train import build_model_from_checkpoint, load_checkpoint, predict

LEGACY = Path(__file__).parent / "data" / "legacy-e22d813"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())
CHECKPOINTS = sorted(name for name in EXPECTED if name.endswith(".pt"))
PACKED = EXPECTED["apb.safetensors"]  # the XOR file holds this packed model too
REFUSED = r"format version 1\) was written by an older apb without a checksum.*apb repack IN OUT"


def digits_predictions(model) -> tuple[float, str]:
    predictions, accuracy = predict(model, data.load("digits").test)
    return accuracy, hashlib.sha256(predictions.tobytes()).hexdigest()


def header(path: Path) -> dict[str, str]:
    raw = path.read_bytes()
    return json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])["__metadata__"]


def run(argv, capsys) -> tuple[int, str, list[str]]:
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_old_checkpoint_evaluates_as_it_did(name):
    assert evaluate_file(LEGACY / name, "digits") == EXPECTED[name]


def test_the_old_files_are_of_format_version_1():
    """What the tests below rely on: the samples really lack a checksum."""
    for name in ("apb.safetensors", "apb.xor.safetensors"):
        md = header(LEGACY / name)
        assert md["format_version"] == "1" and "sha256" not in md


def test_old_packed_and_xor_files_are_refused_by_default(tmp_path):
    with pytest.raises(PackedFormatError, match=REFUSED):
        load_packed(LEGACY / "apb.safetensors")
    with pytest.raises(PackedFormatError, match=REFUSED):
        evaluate_file(LEGACY / "apb.safetensors", "digits")
    with pytest.raises(XorFormatError, match=REFUSED):
        load_xor(LEGACY / "apb.xor.safetensors")
    with pytest.raises(XorFormatError, match=REFUSED):
        decode_file(LEGACY / "apb.xor.safetensors", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("verb", [["summary"], ["eval", "--dataset", "digits"]])
def test_commands_refuse_an_old_file_in_one_line_naming_repack(capsys, verb):
    code, out, err = run([verb[0], LEGACY / "apb.safetensors", *verb[1:]], capsys)
    assert code == 2 and out == "" and len(err) == 1
    assert err[0].startswith(f"apb {verb[0]}: error: ") and "apb repack IN OUT" in err[0]


@pytest.mark.parametrize("name, loader", [("apb.safetensors", load_packed),
                                          ("apb.xor.safetensors", load_xor)])
def test_old_files_load_when_trusted_and_predict_as_they_did(name, loader):
    with pytest.warns(UncheckedFileWarning, match="trusting .* without a checksum"):
        model = loader(LEGACY / name, allow_unverified=True)
    assert digits_predictions(model) == (PACKED["test_acc"], PACKED["predictions_sha256"])


@pytest.mark.parametrize("name, version", [("apb.safetensors", FORMAT_VERSION),
                                           ("apb.xor.safetensors", XOR_VERSION)])
def test_repack_writes_a_checked_file_that_predicts_the_same(tmp_path, capsys, name, version):
    out = tmp_path / name
    code, stdout, err = run(["repack", LEGACY / name, out], capsys)
    assert code == 0 and stdout.startswith(f"repacked {LEGACY / name} -> {out}: ")
    assert len(err) == 1 and err[0].startswith("apb repack: warning: trusting ")
    md = header(out)
    assert md["format_version"] == str(version) == "2" and "sha256" in md
    loader = load_xor if name.endswith(".xor.safetensors") else load_packed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no opt-in and no warning: the file is checked now
        model = loader(out)
    assert digits_predictions(model) == (PACKED["test_acc"], PACKED["predictions_sha256"])
    if loader is load_packed:
        assert evaluate_file(out, "digits") == PACKED
    else:  # encoded again as it was: same seed, same scheme per layer
        assert recorded_encoding(out) == recorded_encoding(LEGACY / name)


@pytest.mark.parametrize("make_input, expected", [
    (lambda d: d / "missing.safetensors", "no packed model at"),
    (lambda d: LEGACY / "fp.pt", "is not an apb packed model"),
])
def test_repack_reports_bad_input_in_one_line(tmp_path, capsys, make_input, expected):
    out = tmp_path / "out.safetensors"
    code, stdout, err = run(["repack", make_input(tmp_path), out], capsys)
    assert code == 2 and stdout == "" and len(err) == 1
    assert err[0].startswith("apb repack: error: ") and expected in err[0]
    assert not out.exists()


@pytest.mark.parametrize("name, method", [("apb.pt", "apb"), ("bnn.pt", "bnn"), ("fp.pt", "fp"),
                                          ("pruned.pt", "bnn")])
def test_old_checkpoint_keeps_its_method_name(name, method):
    ckpt = load_checkpoint(LEGACY / name)
    assert ckpt["method"]["name"] == method
    _, rebuilt_from = build_model_from_checkpoint(LEGACY / name)
    assert rebuilt_from["method"]["name"] == method
