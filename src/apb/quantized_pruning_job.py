"""The job behind ``apb prune-quantized``: filter-prune a trained binary / DoReFa checkpoint
to a size budget, with Bayesian-optimised per-layer ratios and, at the same budget and with
the same fine-tuning, uniform ratios for comparison.

For each seed it runs :class:`apb.methods.quantized_pruning.QuantizedPruner` twice (``bo``
and ``uniform``), measures test accuracy and model bytes (the :mod:`apb.summary`
accounting), writes the first seed's ``bo`` network as a checkpoint that ``apb summary``,
``apb eval`` and ``apb pack`` read, and optionally a JSON report::

    {"budget_bytes": ..., "base_bytes": ..., "results": [{"ratios": "bo" | "uniform", "seed",
     "test_acc", "model_bytes", "params", "per_layer_ratio", "channels", ...}], ...}

Every input is checked, and the budget solved, before anything is written.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

JOB_SKIP = ("checkpoint", "output", "budget_bytes", "budget_ratio")


@dataclass
class QuantizedPruningJob:
    """Attributes:
    checkpoint: a binary (bnn) or DoReFa checkpoint written by apb train.
    output: where to write the pruned checkpoint (the first seed's Bayesian-optimised one).
    budget_bytes: the size budget in model bytes (apb summary's accounting).
    budget_ratio: the size budget as a reduction: at most (1 - r) times the unpruned bytes.
    trials: Bayesian-optimisation trials per seed (the first is the uniform ratios).
    dataset: the data to prune, fine-tune and test on (its training split feeds the proxy).
    data_dir: where the dataset's files are (not needed for mnist5k, digits).
    json: also write the results as JSON here.
    seeds: runs per ratio choice, seeds first_seed, first_seed + 1, ...
    first_seed: the first seed.
    criterion: filter saliency: variance, taylor, bn_scale, latent_l1 or random.
    sampler: gp (optuna GPSampler) or tpe (optuna TPESampler).
    max_ratio: no group loses more than this fraction of its channels.
    min_channels: every group keeps at least this many channels.
    val_samples: training samples held out for the proxy (never the test set).
    proxy_batches: training batches re-estimating BatchNorm in each trial.
    proxy_steps: fine-tuning steps in each trial before that (0: BatchNorm only).
    saliency_batches: training batches for the data-driven criteria (variance, taylor).
    batch_size: samples per training batch.
    finetune_epochs: fine-tuning epochs after pruning, the same for both ratio choices.
    lr: peak learning rate of the fine-tuning (a tenth of the usual training rate).
    progress: show progress bars (on a terminal).
    """

    checkpoint: str = ""
    output: str = ""
    budget_bytes: int | None = None
    budget_ratio: float | None = None
    trials: int = 40
    dataset: str = ""
    data_dir: str | None = None
    json: str | None = None
    seeds: int = 3
    first_seed: int = 0
    criterion: str = "bn_scale"
    sampler: str = "gp"
    max_ratio: float = 0.9
    min_channels: int = 1
    val_samples: int = 500
    proxy_batches: int = 8
    proxy_steps: int = 0
    saliency_batches: int = 8
    batch_size: int = 128
    finetune_epochs: int = 2
    lr: float = 1e-4
    progress: bool = True


def pruning_config(job: QuantizedPruningJob, seed: int):
    """The :class:`QuantizedPruningConfig` of ``job`` for one seed (validated)."""
    from .methods.quantized_pruning import QuantizedPruningConfig

    if (job.budget_bytes is None) == (job.budget_ratio is None):
        raise ValueError("give exactly one budget: --budget-bytes B or --budget-ratio r")
    return QuantizedPruningConfig(
        budget_ratio=job.budget_ratio, budget_bytes=job.budget_bytes, criterion=job.criterion,
        trials=job.trials, sampler=job.sampler, max_ratio=job.max_ratio,
        min_channels=job.min_channels, val_samples=job.val_samples,
        proxy_batches=job.proxy_batches, proxy_steps=job.proxy_steps,
        saliency_batches=job.saliency_batches, batch_size=job.batch_size,
        finetune_epochs=job.finetune_epochs, lr=job.lr, seed=seed,
    )


def run_quantized_pruning_job(job: QuantizedPruningJob, log=print) -> dict:
    """Run ``job``; returns the JSON report (also written to ``job.json`` when set)."""
    import json
    from pathlib import Path

    from . import data
    from .io import atomic_write_text
    from .methods.quantized_pruning import QuantizedPruner
    from .train import build_model_from_checkpoint, evaluate, pruned_state, save_checkpoint
    from .train.build import build_model
    from .train.checkpoint import load_model_state
    from .train.metrics import jsonable

    config = pruning_config(job, job.first_seed)  # every option checked before any file
    if not job.output:
        raise ValueError("give the output checkpoint with -o FILE")
    if not job.dataset:
        raise ValueError("give the dataset with --dataset (e.g. mnist5k)")
    if job.seeds < 1 or job.first_seed < 0:
        raise ValueError("--seeds must be at least 1 and --first-seed at least 0")
    for path in (job.output, job.json):
        if path and Path(path).is_dir():
            raise IsADirectoryError(f"{path} is a directory; give a file name")
    started = time.perf_counter()
    model, ckpt = build_model_from_checkpoint(job.checkpoint)
    if ckpt["method"]["name"] not in ("bnn", "dorefa"):
        raise ValueError(f"{job.checkpoint} was trained with method {ckpt['method']['name']!r}; "
                         "apb prune-quantized takes a binary (bnn) or DoReFa checkpoint")
    if not hasattr(model, "width_kwargs"):
        raise ValueError(f"the architecture {ckpt['model']['name']!r} does not record its "
                         "channel widths, so a pruned copy could not be rebuilt from a checkpoint")
    train_config = ckpt["train_config"]
    same = job.dataset == train_config["dataset"]
    split = data.load(job.dataset, job.data_dir or (train_config.get("data_dir") if same else None),
                      **((train_config.get("data_options") or {}) if same else {}))
    if tuple(getattr(model, "input_shape", split.input_shape)) != tuple(split.input_shape):
        raise ValueError(f"{job.checkpoint} takes inputs of shape {tuple(model.input_shape)}, "
                         f"but {job.dataset} has {tuple(split.input_shape)}")
    pruner = QuantizedPruner(model, split.train, config)  # raises on a budget out of reach
    base_acc, _ = evaluate(model, split.test, 256)
    log(f"{job.checkpoint}: {pruner.base_bytes:,} bytes, test acc {base_acc:.4f}; budget "
        f"{pruner.budget_bytes:,} bytes; {len(pruner.groups)} channel groups: "
        + ", ".join(f"{g.name} ({g.size})" for g in pruner.groups))
    show = job.progress and sys.stderr.isatty()
    results, first_bo = [], None
    for seed in range(job.first_seed, job.first_seed + job.seeds):
        for ratios in ("uniform", "bo"):
            pruned, report = pruner.run(ratios, seed=seed, progress=show)
            test_acc, _ = evaluate(pruned, split.test, 256)
            entry = {"ratios": ratios, "seed": seed, "test_acc": test_acc,
                     "model_bytes": report.model_bytes,
                     "per_layer_ratio": report.per_layer_ratio, "params": report.params,
                     "channels": report.channels, "val_acc": report.val_acc,
                     "proxy_val_acc": report.proxy_val_acc, "seconds": report.seconds}
            if ratios == "bo":
                entry["trials"] = report.trials
                if first_bo is None:
                    first_bo = (pruned, entry)
            results.append(entry)
            log(f"  seed {seed} {ratios:<7} test acc {test_acc:.4f}  {report.model_bytes:,} "
                f"bytes  {report.params:,} params  channels "
                + " ".join(f"{k}:{v[0]}/{v[1]}" for k, v in report.channels.items())
                + f"  ({report.seconds:.1f} s)")
    result = jsonable({
        "budget_bytes": pruner.budget_bytes, "base_bytes": pruner.base_bytes,
        "base_params": pruner.base_params, "base_test_acc": base_acc,
        "min_bytes": pruner.min_bytes, "groups": {g.name: g.size for g in pruner.groups},
        "dataset": job.dataset, "source": str(job.checkpoint), "method": ckpt["method"],
        "config": config.to_dict(), "results": results, "mean": _means(results),
        "seconds": round(time.perf_counter() - started, 3),
    })
    pruned, entry = first_bo
    rebuilt, _ = build_model(pruned.apb_architecture["name"], pruned.apb_architecture["kwargs"],
                             ckpt["method"]["name"], ckpt["method"]["config"])
    state = pruned_state(ckpt, pruned, jsonable({**entry, "budget_bytes": pruner.budget_bytes,
                                                 "base_bytes": pruner.base_bytes,
                                                 "source": str(job.checkpoint)}))
    load_model_state(rebuilt, state, "the pruned model")  # it must rebuild from its record
    save_checkpoint(state, job.output)
    if job.json:
        atomic_write_text(job.json, json.dumps(result, indent=2) + "\n")
    log(summary_table(result))
    log(f"wrote {job.output} (seed {entry['seed']}, bo ratios)")
    return result


def _means(results: list[dict]) -> dict:
    out = {}
    for ratios in ("bo", "uniform"):
        rows = [r for r in results if r["ratios"] == ratios]
        out[ratios] = {
            "test_acc": statistics.fmean(r["test_acc"] for r in rows),
            "test_acc_std": statistics.pstdev(r["test_acc"] for r in rows),
            "model_bytes": statistics.fmean(r["model_bytes"] for r in rows),
            "params": statistics.fmean(r["params"] for r in rows),
        }
    return out


def summary_table(result: dict) -> str:
    """The per-run results and the means, as a table."""
    import io

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"prune-quantized: budget {result['budget_bytes']:,} bytes "
                    f"(unpruned {result['base_bytes']:,}, test acc "
                    f"{result['base_test_acc']:.4f})")
    for col in ("ratios", "seed", "test acc", "model bytes", "params", "channels kept"):
        t.add_column(col, justify="left" if col in ("ratios", "channels kept") else "right")
    for r in result["results"]:
        t.add_row(r["ratios"], str(r["seed"]), f"{r['test_acc']:.4f}", f"{r['model_bytes']:,}",
                  f"{r['params']:,}", " ".join(f"{k}:{v[0]}/{v[1]}"
                                               for k, v in r["channels"].items()))
    for ratios, m in result["mean"].items():
        t.add_row(f"{ratios} mean", "", f"{m['test_acc']:.4f} ± {m['test_acc_std']:.4f}",
                  f"{m['model_bytes']:,.0f}", f"{m['params']:,.0f}", "")
    buf = io.StringIO()
    Console(file=buf, width=140, force_terminal=False).print(t)
    return buf.getvalue()
