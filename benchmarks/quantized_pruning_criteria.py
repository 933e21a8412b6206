"""Compare the filter-saliency criteria of quantized pruning on one trained checkpoint.

    PYTHONPATH=src python benchmarks/quantized_pruning_criteria.py CKPT --dataset mnist5k \\
        --budgets 0.1,0.25,0.4 --seeds 3 --json criteria.json

For every criterion (``apb.prune.filter_saliency.CRITERIA``) and seed, the network is pruned
with the uniform ratios of each budget (the same channel counts for every criterion: only
which channels go differs) and measured twice: right after BatchNorm re-estimation (what the
criterion alone decides) on the held-out validation part of the training split and on the
test split, and, at the budget ``--finetune-budget``, after the same fine-tuning. Prints a
table of means over the seeds and writes every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from apb import data
from apb.prune.filter_saliency import CRITERIA
from apb.prune.quantized_pruning import QuantizedPruner, QuantizedPruningConfig
from apb.train import build_model_from_checkpoint, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--budgets", default="0.1,0.25,0.4", help="size reductions")
    parser.add_argument("--finetune-budget", type=float, default=0.25)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=QuantizedPruningConfig.lr)
    parser.add_argument("--criteria", default=",".join(CRITERIA))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model, _ = build_model_from_checkpoint(args.checkpoint)
    split = data.load(args.dataset)
    budgets = [float(b) for b in args.budgets.split(",")]
    rows = []
    for criterion in args.criteria.split(","):
        for seed in range(args.seeds):
            for budget in budgets:
                config = QuantizedPruningConfig(budget_ratio=budget, criterion=criterion,
                                                seed=seed, lr=args.lr,
                                                finetune_epochs=args.finetune_epochs)
                pruner = QuantizedPruner(model, split.train, config)
                pruned = pruner.prune(pruner.uniform_ratios())
                val_acc, _ = pruner.proxy(pruned, seed)  # BatchNorm re-estimated in place
                row = {"criterion": criterion, "seed": seed, "budget_ratio": budget,
                       "model_bytes": pruner.bytes_for(pruner.counts(pruner.uniform_ratios())),
                       "val_acc_bn": val_acc, "test_acc_bn": evaluate(pruned, split.test)[0]}
                if budget == args.finetune_budget:
                    tuned = pruner.prune(pruner.uniform_ratios())
                    torch.manual_seed(seed)
                    pruner.finetune(tuned, seed)
                    row["test_acc_finetuned"] = evaluate(tuned, split.test)[0]
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\nmeans over {args.seeds} seeds (uniform ratios)")
    print(f"{'criterion':<10} {'budget':>6} {'val acc (BN)':>13} {'test acc (BN)':>14} "
          f"{'test acc (fine-tuned)':>22}")
    for criterion in args.criteria.split(","):
        for budget in budgets:
            sel = [r for r in rows if r["criterion"] == criterion and r["budget_ratio"] == budget]
            tuned = [r["test_acc_finetuned"] for r in sel if "test_acc_finetuned" in r]
            print(f"{criterion:<10} {budget:>6} "
                  f"{statistics.fmean(r['val_acc_bn'] for r in sel):>13.4f} "
                  f"{statistics.fmean(r['test_acc_bn'] for r in sel):>14.4f} "
                  + (f"{statistics.fmean(tuned):>16.4f} ± {statistics.pstdev(tuned):.4f}"
                     if tuned else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"checkpoint": args.checkpoint, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
