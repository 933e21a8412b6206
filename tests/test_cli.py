"""The `apb` command: bad input gives one line on stderr, exit 2, and writes nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import apb

APB = [sys.executable, "-m", "apb.cli"]
# The subprocess imports the same apb as this test (installed, or src/ in development).
ENV = {**os.environ, "PYTHONPATH": str(Path(apb.__file__).parent.parent)}


def run(args, cwd):
    return subprocess.run(APB + args, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=ENV)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--model", "nope"], "unknown model 'nope'"),
        (["train", "--method", "nope"], "unknown method 'nope'"),
        (["train", "--dataset", "cifar10", "--data-dir", "missing", "--epochs", "1"],
         "data_batch_1"),
        (["train", "--bits-per-weight", "0.5"], "bits_per_weight must exceed 1"),
        (["train", "--bits-per-weight", "1.0001", "--budget-scope", "model", "--epochs", "1"],
         "below what the binary part alone needs"),
        (["train", "--fp-fraction", "-0.1"], "fp_fraction must lie in [0, 1]"),
        (["train", "--method", "bnn", "--fp-fraction", "0.1"], "has no option"),
        (["train", "--lr", "abc"], "invalid float value"),
        (["summary", "missing.pt"], "no checkpoint at missing.pt"),
        (["demo", "--seeds", "0"], "--seeds must be at least 1"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, args, message):
    before = set(tmp_path.iterdir())
    if args[0] == "train":
        args = [*args, "--out-dir", "run"]
    r = run(args, tmp_path)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr
    assert set(tmp_path.iterdir()) == before  # nothing half-written


def test_corrupt_and_alien_checkpoints(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x02not a checkpoint at all")
    (tmp_path / "text.pt").write_text("hello")
    import torch

    torch.save({"weights": torch.zeros(3)}, tmp_path / "alien.pt")
    for name, message in [("garbage.pt", "corrupt"), ("text.pt", "corrupt"),
                          ("alien.pt", "not an apb training checkpoint")]:
        r = run(["summary", name], tmp_path)
        assert r.returncode == 2
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_train_then_summary_json(tmp_path):
    r = run(["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1",
             "--method", "apb", "--fp-fraction", "0.02", "--no-progress", "--out-dir", "run"],
            tmp_path)
    assert r.returncode == 0, r.stderr
    r = run(["summary", "run/best.pt", "--json", "s.json"], tmp_path)
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert abs(s["fp_fraction"] - 0.02) <= 0.001
    assert s["model_bytes"] == sum(x["bytes"] for x in s["layers"]) + s["other_bytes"]


def test_demo_smoke(tmp_path):
    r = run(["demo", "--seeds", "2", "--epochs", "1", "--out", "d", "--json", "d.json",
             "--no-progress"], tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["dataset"] == "mnist5k" and report["model"] == "lenet5"
    rows = {x["method"]: x for x in report["results"]}
    assert set(rows) == {"fp", "bnn", "apb"}
    for row in rows.values():
        assert (tmp_path / row["checkpoint"]).is_file()
        assert 0.0 < row["test_acc"] <= 1.0 and row["test_acc_std"] >= 0.0
        assert len(row["test_accs"]) == 2
    assert rows["fp"]["bits_per_weight"] == 32.0
    assert rows["bnn"]["fp_fraction"] == 0.0
    assert rows["apb"]["bits_per_weight"] <= 1.5
    assert "apb" in r.stdout and "±" in r.stdout
