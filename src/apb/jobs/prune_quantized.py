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
from dataclasses import dataclass, field, replace

from rich.table import Table
from torch import nn

from ..console import table_text
from ..data import evenly_spaced_subset
from ..prune import QuantizedPruner, QuantizedPruningConfig
from ..train import build_model, evaluate, jsonable, load_model_state, pruned_state, save_checkpoint
from .common import check_outputs, load_trained, write_json

RATIO_CHOICES = ("uniform", "bo")


@dataclass
class QuantizedPruningJob:
    """Attributes:
    checkpoint: a binary (bnn) or DoReFa checkpoint written by apb train.
    output: where to write the pruned checkpoint (the first seed's Bayesian-optimised one).
    dataset: the data to prune, fine-tune and test on (its training split feeds the proxy).
    data_dir: where the dataset's files are (not needed for mnist5k, digits).
    json: also write the results as JSON here.
    seeds: runs per ratio choice, seeds first_seed, first_seed + 1, ...
    first_seed: the first seed.
    ratios: the ratio choices to run, among uniform and bo (the checkpoint written is a bo one
        when bo runs, else the first seed's uniform one).
    train_samples, test_samples: use this many evenly spaced samples of each split only;
        None uses all of them.
    progress: show progress bars (on a terminal).
    pruning: what and how to prune (budget, criterion, trials, fine-tuning; its seed is
        each run's).
    """

    checkpoint: str = ""
    output: str = ""
    dataset: str = ""
    data_dir: str | None = None
    json: str | None = None
    seeds: int = 3
    first_seed: int = 0
    ratios: tuple[str, ...] = RATIO_CHOICES
    train_samples: int | None = None
    test_samples: int | None = None
    progress: bool = True
    pruning: QuantizedPruningConfig = field(default_factory=QuantizedPruningConfig)

    def validate(self) -> None:
        if not isinstance(self.pruning, QuantizedPruningConfig):
            raise TypeError(f"pruning must be a QuantizedPruningConfig, got "
                            f"{type(self.pruning).__name__}")
        self.pruning.validate()
        if not self.output:
            raise ValueError("give the output checkpoint with -o FILE")
        if not self.dataset:
            raise ValueError("give the dataset with --dataset (e.g. mnist5k)")
        if self.seeds < 1 or self.first_seed < 0:
            raise ValueError("--seeds must be at least 1 and --first-seed at least 0")
        if not self.ratios or any(r not in RATIO_CHOICES for r in self.ratios):
            raise ValueError(f"ratios must be some of {', '.join(RATIO_CHOICES)}, got "
                             f"{self.ratios!r}")


def load_quantized(checkpoint: str, dataset: str, data_dir: str | None = None):
    """``(model, checkpoint dict, split)`` of a binary / DoReFa checkpoint whose architecture
    records its channel widths (so that a pruned copy can be rebuilt from a checkpoint)."""
    model, ckpt, split = load_trained(checkpoint, dataset, data_dir)
    if ckpt["method"]["name"] not in ("bnn", "dorefa"):
        raise ValueError(f"{checkpoint} was trained with method {ckpt['method']['name']!r}; "
                         "apb prune-quantized takes a binary (bnn) or DoReFa checkpoint")
    if not hasattr(model, "width_kwargs"):
        raise ValueError(f"the architecture {ckpt['model']['name']!r} does not record its "
                         "channel widths, so a pruned copy could not be rebuilt from a checkpoint")
    return model, ckpt, split


def save_pruned(ckpt: dict, pruned: nn.Module, record: dict, output: str) -> None:
    """Write ``pruned`` as a checkpoint of the smaller architecture, after checking that the
    architecture it records rebuilds and takes its state."""
    arch = pruned.apb_architecture
    rebuilt, _ = build_model(arch["name"], arch["kwargs"], ckpt["method"]["name"],
                             ckpt["method"]["config"])
    state = pruned_state(ckpt, pruned, jsonable(record))
    load_model_state(rebuilt, state, "the pruned model")
    save_checkpoint(state, output)


def run_quantized_pruning_job(job: QuantizedPruningJob, log=print) -> dict:
    """Run ``job``; returns the JSON report (also written to ``job.json`` when set)."""
    job.validate()  # every option checked before any file is read or written
    check_outputs(job.output, job.json)
    started = time.perf_counter()
    model, ckpt, split = load_quantized(job.checkpoint, job.dataset, job.data_dir)
    config = replace(job.pruning, seed=job.first_seed)
    train_set = evenly_spaced_subset(split.train, job.train_samples)
    test_set = evenly_spaced_subset(split.test, job.test_samples)
    pruner = QuantizedPruner(model, train_set, config)  # raises on a budget out of reach
    base_acc, _ = evaluate(model, test_set, 256)
    log(f"{job.checkpoint}: {pruner.base_bytes:,} bytes, test acc {base_acc:.4f}; budget "
        f"{pruner.budget_bytes:,} bytes; {len(pruner.groups)} channel groups: "
        + ", ".join(f"{g.name} ({g.size})" for g in pruner.groups))
    show = job.progress and sys.stderr.isatty()
    results, kept = [], None
    for seed in range(job.first_seed, job.first_seed + job.seeds):
        for ratios in job.ratios:
            pruned, report = pruner.run(ratios, seed=seed, progress=show)
            test_acc, _ = evaluate(pruned, test_set, 256)
            entry = {"ratios": ratios, "seed": seed, "test_acc": test_acc,
                     "model_bytes": report.model_bytes, "bits_per_weight": report.bits_per_weight,
                     "per_layer_ratio": report.per_layer_ratio, "params": report.params,
                     "channels": report.channels, "val_acc": report.val_acc,
                     "proxy_val_acc": report.proxy_val_acc, "seconds": report.seconds}
            if ratios == "bo":
                entry["trials"] = report.trials
            if kept is None or (ratios == "bo" and kept[1]["ratios"] != "bo"):
                kept = (pruned, entry)
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
        "config": config.to_dict(), "results": results, "mean": _means(results, job.ratios),
        "seconds": round(time.perf_counter() - started, 3),
    })
    pruned, entry = kept
    save_pruned(ckpt, pruned, {**entry, "budget_bytes": pruner.budget_bytes,
                               "base_bytes": pruner.base_bytes, "source": str(job.checkpoint)},
                job.output)
    if job.json:
        write_json(job.json, result)
    log(summary_table(result))
    log(f"wrote {job.output} (seed {entry['seed']}, {entry['ratios']} ratios)")
    return result


def _means(results: list[dict], choices: tuple[str, ...]) -> dict:
    out = {}
    for ratios in choices:
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
    return table_text(t, width=140)
