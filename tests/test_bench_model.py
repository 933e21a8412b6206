"""apb bench model: the command builds the three models, times them and writes the
documented JSON (ResNet-20, few rounds: structure only, no timing is asserted); the
packed model computes what was trained; bad arguments are one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import apb
from apb.bench import model as bench_model

APB = [sys.executable, "-m", "apb.cli"]
ENV = {**os.environ, "PYTHONPATH": str(Path(apb.__file__).parent.parent),
       "OMP_NUM_THREADS": "1"}


def run(args, cwd):
    return subprocess.run(APB + args, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=ENV)


@pytest.mark.parametrize("act_bits", [2, 1])
def test_command_writes_the_report(tmp_path, act_bits):
    out = tmp_path / "model.json"
    result = run(["bench", "model", "--model", "resnet20", "--act-bits", str(act_bits),
                  "--repeats", "2", "--json", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["model"] == "resnet20" and report["act_bits"] == act_bits
    assert [r["impl"] for r in report["results"]] == ["torch_fp32", "torch_int8", "apb"]
    assert all(isinstance(r["ms"], float) and r["ms"] > 0 for r in report["results"])
    assert report["threads"] == 1 and report["repeats"] == 2
    assert report["apb_max_rel_error"] < 1e-4
    assert "speed-up vs torch_fp32" in result.stdout and "apb" in result.stdout


def test_models_compute_the_same_architecture():
    """The three models take the same input and give logits of the same shape; the
    packed one matches its training model; the int8 one really is quantized."""
    packed, training = bench_model.build_apb("resnet20", 2)
    fp32 = bench_model.build_fp32("resnet20", 2)
    int8 = bench_model.build_int8("resnet20", 2, calibration_batches=1)
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        outputs = [m(x) for m in (packed, training, fp32, int8)]
    assert all(o.shape == (1, 10) for o in outputs)
    assert float((outputs[0] - outputs[1]).abs().max() / outputs[1].abs().max()) < 1e-4
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8.modules())
    assert any(isinstance(m, apb.pack.PackedAPBConv2d) and m.folded for m in packed.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fp32.modules())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "vgg_small"], "invalid choice"),
        (["--act-bits", "3"], "invalid choice"),
        (["--threads", "0"], "threads >= 1"),
        (["--fp-fraction", "1.5"], "fp_fraction must be in"),
    ],
)
def test_bad_arguments_one_line_exit_2(tmp_path, args, message):
    out = tmp_path / "r.json"
    result = run(["bench", "model", *args, "--json", str(out)], tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()
