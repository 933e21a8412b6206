"""The main job: fp, BNN and APB LeNet-5 models on the real MNIST-5k digits, several seeds.

Activations stay full precision by default: the three methods then differ only in how the
weights are stored, which is the comparison APB is about (binary weights with a few
full-precision ones vs all binary vs all full precision). ``act_bits=2`` or ``1`` quantizes
the inputs of the compressed layers of BNN and APB too (the fp row stays full precision).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from rich.table import Table

from ..console import table_text
from ..io import atomic_write_text
from ..train import TrainConfig, train
from ..train.pool import run_in_processes

DEMO_METHODS = ("fp", "bnn", "apb")


@dataclass
class DemoConfig:
    """Attributes:
    out: folder for checkpoints (``<out>/<method>/best.pt`` is the first seed's).
    json: where to write the results as JSON (None: ``<out>/demo.json``).
    seeds: runs per method; the test set has 1,000 images, so one run's ±0.6 point is noise.
    epochs: training epochs per run.
    act_bits: precision of the compressed layers' inputs for BNN and APB (32, 2 or 1).
    apb_bits_per_weight: APB's budget in bits per weight of the compressed layers.
    jobs: training runs at a time, each in its own process (default: one per core, at most 2).
    progress: show progress bars (only when runs go one at a time).
    """

    out: str = "runs/demo"
    json: str | None = None
    seeds: int = 3
    epochs: int = 15
    act_bits: int = 32
    apb_bits_per_weight: float = 1.5
    jobs: int = field(default_factory=lambda: max(1, min(2, os.cpu_count() or 1)))
    progress: bool = True
    methods: tuple[str, ...] = field(default=DEMO_METHODS)

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, "
                                 f"got {value}")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {self.seeds}")
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {self.jobs}")
        if self.act_bits not in (1, 2, 32):
            raise ValueError(f"--act-bits must be 1, 2 or 32, got {self.act_bits}")
        if self.apb_bits_per_weight <= 1.0:
            raise ValueError(
                f"--apb-bits-per-weight must exceed 1 (every weight keeps its sign bit), "
                f"got {self.apb_bits_per_weight}"
            )


def method_options(method: str, config: DemoConfig) -> dict:
    if method == "fp":
        return {}
    options = {"act_bits": config.act_bits}
    if method == "apb":
        options.update(bits_per_weight=config.apb_bits_per_weight, budget_scope="model")
    return options


def _train_one(config: DemoConfig, method: str, seed: int, progress: bool) -> dict:
    """One training run of the demo; returns what the table needs (picklable)."""
    out = Path(config.out)
    run_dir = out / method if seed == 0 else out / method / f"seed{seed}"
    tc = TrainConfig(
        model="lenet5", dataset="mnist5k", method=method,
        method_options=method_options(method, config),
        activation="hardtanh" if config.act_bits == 1 else "relu",
        epochs=config.epochs, batch_size=64, optimizer="adam", lr=2e-3,
        scale_lr=1e-3, seed=seed, out_dir=str(run_dir), overwrite=True, progress=progress,
    )
    result = train(tc)
    return {"method": method, "seed": seed, "test_acc": result.final_test_acc,
            "stats": result.stats}


def run_demo(config: DemoConfig, log=print) -> dict:
    """Train every method with every seed; return (and write) the results table."""
    config.validate()
    out = Path(config.out)
    act_label = {32: "full precision", 2: "2-bit", 1: "1-bit"}[config.act_bits]
    runs = [(m, s) for m in config.methods for s in range(config.seeds)]
    jobs = min(config.jobs, len(runs))
    log(f"apb demo: LeNet-5 on mnist5k (4,000 train / 1,000 test real MNIST digits), "
        f"{config.seeds} seed(s) x {len(config.methods)} methods, {config.epochs} epochs each, "
        f"{jobs} run(s) at a time; activations of BNN/APB layers: {act_label}")
    t0 = time.time()
    done: dict[tuple[str, int], dict] = {}

    def record(run: dict) -> None:
        done[run["method"], run["seed"]] = run
        log(f"  {run['method']:>4} seed {run['seed']}: test acc {run['test_acc']:.4f}  "
            f"bits/weight {run['stats']['bits_per_weight']:.3f}  ({time.time() - t0:.0f} s)")

    # Separate processes when jobs > 1; each run is seeded, so the table does not depend
    # on the order in which runs finish.
    run_in_processes(_train_one, [(config, m, s, config.progress and jobs <= 1) for m, s in runs],
                     jobs, record)

    results = []
    for method in config.methods:
        accs = [done[method, s]["test_acc"] for s in range(config.seeds)]
        stats = done[method, 0]["stats"]  # the run whose checkpoint is kept at <method>/
        results.append({
            "method": method,
            "test_acc": statistics.fmean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "test_accs": accs,
            "bits_per_weight": stats["bits_per_weight"],
            "fp_fraction": stats["fp_fraction"],
            "model_bytes": stats["model_bytes"],
            "checkpoint": str(out / method / "best.pt"),
        })
    report = {
        "dataset": "mnist5k", "model": "lenet5", "act_bits": config.act_bits,
        "epochs": config.epochs, "seeds": config.seeds, "seconds": round(time.time() - t0, 1),
        "results": results,
    }
    json_path = Path(config.json) if config.json else out / "demo.json"
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    log(results_table(report))
    log(f"results written to {json_path}")
    return report


def results_table(report: dict) -> str:
    t = Table(title=f"apb demo: {report['model']} on {report['dataset']}, "
                    f"mean ± std over {report['seeds']} seed(s)")
    for c in ("method", "test acc", "bits/weight", "fp fraction", "model bytes"):
        t.add_column(c, justify="left" if c == "method" else "right")
    for r in report["results"]:
        t.add_row(
            r["method"], f"{100 * r['test_acc']:.2f} ± {100 * r['test_acc_std']:.2f} %",
            f"{r['bits_per_weight']:.3f}", f"{r['fp_fraction']:.4f}", f"{r['model_bytes']:,}",
        )
    return table_text(t, width=100).rstrip() + (
        "\nbits/weight and fp fraction are over the compressed layers (conv2, fc1, fc2); "
        "conv1 and the classifier stay full precision.")
