"""Data-parallel training for real: two CPU processes under torchrun (gloo backend).

Three launches of ``python -m torch.distributed.run --standalone --nproc_per_node=2``: an
uninterrupted 2-epoch run, the same run killed in its second epoch, and its resumption,
which must end bit for bit where the uninterrupted run did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import apb
from apb.nn import scale_parameters
from apb.train import build_model_from_checkpoint, load_checkpoint, read_metrics

WORLD_SIZE = 2
TRAIN_SAMPLES = 1437  # digits training split
CRASHING_ENTRY = """
import sys
import apb.methods
from apb.train.__main__ import main

method_class = type(apb.methods.create("apb"))
original = method_class.on_step

def on_step(self, model, progress):
    if progress >= 0.75:
        raise SystemExit("simulated preemption")
    return original(self, model, progress)

method_class.on_step = on_step
sys.exit(main())
"""


def torchrun(tmp_path: Path, config: dict, *entry: str, resume: bool = False):
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    env = dict(os.environ)
    src = str(Path(apb.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={WORLD_SIZE}", *(entry or ("-m", "apb.train")),
        "--config-json", str(config_path), *(["--resume"] if resume else []),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)


def ddp_config(out_dir: Path) -> dict:
    return {
        "model": "mlp", "model_options": {"hidden": [32, 32]}, "dataset": "digits",
        "method": "apb", "method_options": {"act_bits": 2}, "activation": "hardtanh",
        "epochs": 2, "batch_size": 32, "freeze_scales_epoch": 1, "out_dir": str(out_dir),
        "progress": False,
    }


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    straight = torchrun(root, ddp_config(root / "straight"))
    assert straight.returncode == 0, straight.stderr[-4000:]

    script = root / "crash_in_epoch_1.py"
    script.write_text(CRASHING_ENTRY)
    crashed = torchrun(root, ddp_config(root / "resumed"), str(script))
    assert crashed.returncode != 0
    assert load_checkpoint(root / "resumed" / "last.pt")["epoch"] == 1
    resumed = torchrun(root, ddp_config(root / "resumed"), resume=True)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return root, straight, resumed


def test_ddp_run_shards_the_data_and_learns(ddp_runs):
    root, straight, _ = ddp_runs
    result = json.loads(straight.stdout.strip().splitlines()[-1])  # printed by rank 0 only
    assert len(straight.stdout.strip().splitlines()) == 1
    records = read_metrics(root / "straight" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        # Each rank trains on its own half (DistributedSampler pads 1437 to 2 x 719).
        assert r["samples_per_rank"] == [719, 719]
        assert sum(r["samples_per_rank"]) == TRAIN_SAMPLES + 1
        assert r["step"] == 23 * (r["epoch"] + 1)  # ceil(719 / 32) steps per epoch
    assert records[1]["events"] == ["freeze_scales", "finalize"]
    assert result["final_test_acc"] == records[-1]["test_acc"] > 0.3  # chance is 0.1

    ckpt = load_checkpoint(root / "straight" / "last.pt")
    assert ckpt["world_size"] == WORLD_SIZE and len(ckpt["rng"]) == WORLD_SIZE
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    model, _ = build_model_from_checkpoint(root / "straight" / "last.pt")
    scales = {name: p for name, p in scale_parameters(model)}
    frozen = [p.requires_grad for name, p in scales.items() if not name.endswith("act_scale")]
    assert frozen and not any(frozen)  # α, δ frozen; the activation clips keep learning
    assert any(p.requires_grad for name, p in scales.items() if name.endswith("act_scale"))
    acc, _ = apb.train.evaluate(model, apb.data.load("digits").test)
    # The test set was split between the ranks and summed: the same as one process on all.
    assert acc == pytest.approx(records[-1]["test_acc"])


def test_ddp_resume_is_bit_identical(ddp_runs):
    root, _, resumed = ddp_runs
    a = load_checkpoint(root / "straight" / "last.pt")
    b = load_checkpoint(root / "resumed" / "last.pt")
    # Everything that continues a run: weights, both optimizers and schedulers, every RNG
    # state of every rank, the counters and the best so far (train_config differs in
    # resume/out_dir, history in wall-clock seconds).
    for key in ("model_state", "optimizer_state", "scale_optimizer_state", "scheduler_state",
                "scale_scheduler_state", "rng", "epoch", "global_step", "finalized",
                "best_test_acc", "best_epoch", "world_size", "stats"):
        _assert_same(a[key], b[key], key)
    assert len(a["rng"]) == WORLD_SIZE and a["scheduler_state"] is not None
    assert a["scale_scheduler_state"] is not None and a["global_step"] > 0
    untimed = [[{k: v for k, v in r.items() if k != "seconds"} for r in c["history"]]
               for c in (a, b)]
    _assert_same(untimed[0], untimed[1], "history")
    records = read_metrics(root / "resumed" / "metrics.jsonl")
    assert records[1]["events"] == ["freeze_scales", "finalize"]
    assert [r["test_acc"] for r in records] == [
        r["test_acc"] for r in read_metrics(root / "straight" / "metrics.jsonl")]


def _assert_same(x, y, where):
    """Recursive equality, tensors bit for bit."""
    if isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y), where
    elif isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), f"{where}: keys differ"
        for k in x:
            _assert_same(x[k], y[k], f"{where}/{k}")
    elif isinstance(x, (list, tuple)):
        assert isinstance(y, (list, tuple)) and len(x) == len(y), f"{where}: lengths differ"
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            _assert_same(u, v, f"{where}/{i}")
    else:
        assert x == y, f"{where}: {x!r} != {y!r}"
