"""``kill -9`` at several points of a real training run: after resuming, ``last.pt`` and
``best.pt`` load, agree with each other (``best.pt`` is the epoch ``last.pt`` records as
the best) and with an uninterrupted run, and no temporary file is left (issue 19).

One driver process imports apb once and forks a child per kill point; each child trains
and SIGKILLs itself at its point (inside ``save_checkpoint``: after the temporary file is
written but before it is renamed, or between ``last.pt`` and ``best.pt``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import apb
from apb.train import TrainConfig, load_checkpoint, train

POINTS = {
    "epoch 0, after last.pt (best.pt never written)": ("after-last", 0),
    "epoch 1, during last.pt (before its rename)": ("mid", "last.pt"),
    "a best epoch >= 1, between last.pt and best.pt": ("after-last", 1),
    "a best epoch >= 1, during best.pt (before its rename)": ("mid", "best.pt"),
}

CONFIG = {"model": "mlp", "model_options": {"hidden": [24]}, "dataset": "digits",
          "method": "apb", "method_options": {"fp_fraction": 0.05}, "epochs": 3,
          "batch_size": 64, "train_samples": 400, "test_samples": 200, "progress": False,
          "lr": 3e-3}

DRIVER = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    import apb.train.trainer as trainer
    import apb.io
    from apb.train import TrainConfig, train
    config, points = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    real_save, real_replace = trainer.save_checkpoint, os.replace

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    for out_dir, (kind, where) in points.items():
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)
            continue
        torch.set_num_threads(1)

        def save(state, path, kind=kind, where=where):
            name = os.path.basename(path)
            best_now = state["best_epoch"] == state["epoch"] - 1
            if kind == "mid" and name == where and state["epoch"] >= 2 and (
                    name == "last.pt" or best_now):
                def replace(src, dst):
                    die()
                apb.io.os.replace = replace
            real_save(state, path)
            if kind == "after-last" and name == "last.pt" and best_now and (
                    state["epoch"] - 1 >= where):
                die()

        trainer.save_checkpoint = save
        train(TrainConfig(**config, out_dir=out_dir))
        os._exit(3)  # never killed: the point was not reached
""")


@pytest.fixture(scope="module")
def one_thread():
    """The killed children train with one thread; so do the runs here, so that resuming is
    bit-exact (float sums depend on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("crash")
    train(TrainConfig(**CONFIG, out_dir=str(root / "straight")))
    dirs = {label: root / f"killed{i}" for i, label in enumerate(POINTS)}
    env = {**os.environ, "PYTHONPATH": str(Path(apb.__file__).parent.parent),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, json.dumps(CONFIG),
         json.dumps({str(dirs[label]): POINTS[label] for label in POINTS})],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, dirs


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("label", list(POINTS))
def test_killed_run_resumes_to_consistent_checkpoints(runs, label):
    root, dirs = runs
    out = dirs[label]
    killed = load_checkpoint(out / "last.pt")  # the kill left a loadable last.pt
    assert killed["epoch"] < CONFIG["epochs"], "the run was not killed"
    kind, where = POINTS[label]
    if kind == "mid":
        assert list(out.glob(f".{where}.*.tmp")), "the kill left no temporary file"
    if kind == "after-last":  # the case: best.pt behind the best last.pt records
        best_before = (load_checkpoint(out / "best.pt")["best_epoch"]
                       if (out / "best.pt").exists() else None)
        assert best_before != killed["best_epoch"]
    train(TrainConfig(**CONFIG, out_dir=str(out), resume=True))
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    last, best = load_checkpoint(out / "last.pt"), load_checkpoint(out / "best.pt")
    assert best["epoch"] == last["best_epoch"] + 1
    assert best["best_test_acc"] == last["best_test_acc"]
    assert best["history"][-1]["test_acc"] == last["best_test_acc"]
    straight_last = load_checkpoint(root / "straight" / "last.pt")
    straight_best = load_checkpoint(root / "straight" / "best.pt")
    assert _same_tensors(last["model_state"], straight_last["model_state"])
    assert _same_tensors(best["model_state"], straight_best["model_state"])
    assert [r["test_acc"] for r in last["history"]] == [
        r["test_acc"] for r in straight_last["history"]]
