"""``apb compare``: every method on one model and dataset, same training budget, several seeds.

Three phases:

1. training runs, one per distinct trained model and seed, ``jobs`` at a time in separate
   processes (the ``fp`` model is trained once per seed and shared by ``fp`` and every
   post-training method);
2. post-training steps on those models: OBC / post-training APB (``apb ptq``), filter
   pruning + fine-tuning of the binary model (quantized pruning);
3. in this process, alone on the machine, the CPU latency of each method's first-seed
   model at batch 1 and 64: the packed model (bitwise kernels) where the method has a
   packed form, otherwise the dense PyTorch fp32 model it is stored as.

Accuracy is on the dataset's test split after the last epoch (no model is picked by its
test accuracy); bits per weight and model bytes follow :mod:`apb.memory`.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from .. import data
from ..bench.timing import thread_count, time_ms
from ..io import atomic_write_text
from ..jobs.common import check_outputs, write_json
from ..jobs.evaluate import load_for_inference
from ..jobs.prune_quantized import QuantizedPruningJob, run_quantized_pruning_job
from ..jobs.ptq import PTQJob, run_ptq_job
from ..kernels import active_isa
from ..pack import PackedRuntime, PackError, optimize_for_inference_, pack_, packed_layers
from ..prune import QuantizedPruningConfig
from ..train import TrainConfig, train
from ..train.pool import run_in_processes
from .report import keep_hand_written, markdown_table, plot_pareto, report_markdown
from .spec import MethodSpec, parse_methods

DEFAULT_METHODS = (
    "fp,bnn,dorefa2,magnitude@0.9,magnitude@0.9+bnn,quantized-pruning@0.25,obc-compound,"
    "apb-ptq,apb@0.01,apb@0.02,apb@0.05"
)


@dataclass
class CompareConfig:
    """Attributes (the ``apb compare`` flags):
    model, dataset, data_dir: what to train on (``apb.models`` / ``apb.data`` names).
    model_options: extra keyword arguments of the model builder, as for ``apb train``
        (e.g. ``{"hidden": [64, 64, 64]}`` for a narrow ``mlp``).
    train_samples, test_samples: use this many evenly spaced samples of each split only (a
        quick run); None uses all of them.
    methods: comma-separated method names (see :mod:`apb.compare.spec`).
    seeds: runs per method (mean ± std over them).
    epochs: the training budget of every trained method.
    act_bits: precision of the compressed layers' inputs for the trained compressed methods
        (32, 2 or 1); post-training methods keep full-precision activations.
    batch_size, lr, scale_lr: the shared training recipe (Adam, cosine schedule).
    finetune_epochs: of the ``epochs`` of quantized pruning, those spent fine-tuning after
        the filters are removed (the binary network trains for the rest).
    trials: Bayesian-optimisation trials of quantized pruning.
    calib: calibration samples of the post-training methods.
    latency: measure CPU latency at batch 1 and 64 (phase 3).
    latency_repeats: timed runs per measurement (median reported).
    jobs: training runs at a time, each in its own process with one thread.
    out: folder for the checkpoints of every run.
    json, plot, markdown: where to write the report, the Pareto plot and a markdown page
        (command, machine, table, plot, how each method fares against APB) (defaults:
        ``<out>/compare.json``, none, none); what an existing page holds from the line
        ``KEEP_MARKER`` of :mod:`apb.compare.report` on is kept.
    progress: progress bars (only when runs go one at a time).
    """

    model: str = "lenet5"
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist5k"
    data_dir: str | None = None
    train_samples: int | None = None
    test_samples: int | None = None
    methods: str = DEFAULT_METHODS
    seeds: int = 3
    epochs: int = 15
    act_bits: int = 32
    batch_size: int = 64
    lr: float = 2e-3
    scale_lr: float = 1e-3
    finetune_epochs: int = 3
    trials: int = 30
    calib: int = 1024
    latency: bool = True
    latency_repeats: int = 30
    jobs: int = field(default_factory=lambda: max(1, min(2, os.cpu_count() or 1)))
    out: str = "runs/compare"
    json: str | None = None
    plot: str | None = None
    markdown: str | None = None
    progress: bool = True

    def validate(self) -> list[MethodSpec]:
        """Check every field; returns the parsed methods."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, "
                                 f"got {value}")
        for name in ("seeds", "epochs", "jobs", "batch_size", "trials", "calib",
                     "latency_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        if self.act_bits not in (1, 2, 32):
            raise ValueError(f"--act-bits must be 1, 2 or 32, got {self.act_bits}")
        if self.lr <= 0 or self.scale_lr <= 0:
            raise ValueError("--lr and --scale-lr must be positive")
        specs = parse_methods(self.methods, self.act_bits)
        if any(s.kind == "quantized-pruning" for s in specs) and not (
            0 < self.finetune_epochs < self.epochs
        ):
            raise ValueError(f"--finetune-epochs must lie in 1..{self.epochs - 1} (it is part "
                             f"of the {self.epochs}-epoch budget), got {self.finetune_epochs}")
        check_outputs(self.json, self.plot, self.markdown)
        return specs


# -- phase 1: training --------------------------------------------------------------------
@dataclass(frozen=True)
class _Training:
    label: str
    method: str
    options: tuple
    epochs: int


def _trainings(specs: list[MethodSpec], config: CompareConfig) -> dict[tuple, _Training]:
    """The distinct training runs the methods need (per seed), keyed by ``training_key``."""
    runs: dict[tuple, _Training] = {}
    for spec in specs:
        if spec.training_key in runs:
            continue
        if spec.kind == "ptq":
            label = "fp"
        elif spec.kind == "quantized-pruning":
            label = f"{spec.train_method}-before-pruning"
        else:
            label = spec.label
        epochs = config.epochs - (config.finetune_epochs if spec.kind == "quantized-pruning"
                                  else 0)
        runs[spec.training_key] = _Training(label, spec.train_method,
                                            tuple(sorted(spec.method_options.items())), epochs)
    return runs


def _run_dir(config: CompareConfig, label: str, seed: int) -> Path:
    safe = label.replace("/", "-").replace("+", "_").replace("@", "_at_")
    return Path(config.out) / safe / f"seed{seed}"


def _train_run(config: CompareConfig, run: _Training, seed: int, progress: bool) -> dict:
    tc = TrainConfig(
        model=config.model, model_options=dict(config.model_options), dataset=config.dataset,
        data_dir=config.data_dir, method=run.method, method_options=dict(run.options),
        activation="hardtanh" if config.act_bits == 1 and run.method != "fp" else "relu",
        epochs=run.epochs, batch_size=config.batch_size, optimizer="adam", lr=config.lr,
        scale_lr=config.scale_lr, seed=seed, out_dir=str(_run_dir(config, run.label, seed)),
        train_samples=config.train_samples, test_samples=config.test_samples,
        overwrite=True, progress=progress,
    )
    result = train(tc)
    return {"label": run.label, "seed": seed, "test_acc": result.final_test_acc,
            "checkpoint": result.last_checkpoint, **_memory(result.stats)}


def _memory(stats: dict) -> dict:
    return {"bits_per_weight": float(stats["bits_per_weight"]),
            "model_bytes": int(stats["model_bytes"])}


# -- phase 2: post-training steps ---------------------------------------------------------
def _post_training_run(config: CompareConfig, spec: MethodSpec, source: str, seed: int,
                       progress: bool) -> dict:
    out = _run_dir(config, spec.label, seed)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = str(out / "compressed.pt")
    if spec.kind == "ptq":
        job = PTQJob(checkpoint=source, method=spec.ptq_method, target=spec.ptq_target,
                     output=checkpoint, calib=config.calib, data_dir=config.data_dir,
                     test_samples=config.test_samples, progress=progress)
        result = run_ptq_job(job, log=lambda *_: None)
        return {"label": spec.label, "seed": seed, "test_acc": result["test_acc"],
                "checkpoint": checkpoint, **_memory(result)}
    return _quantized_pruning(config, spec, source, seed, checkpoint, progress)


def _quantized_pruning(config: CompareConfig, spec: MethodSpec, source: str, seed: int,
                       checkpoint: str, progress: bool) -> dict:
    """Filter pruning of the binary model ``source`` with Bayesian-optimised per-layer
    ratios under the size budget, then ``finetune_epochs`` of fine-tuning (the rest of the
    training budget); the method's own defaults otherwise (criterion, fine-tuning rate)."""
    job = QuantizedPruningJob(
        checkpoint=source, output=checkpoint, dataset=config.dataset, data_dir=config.data_dir,
        seeds=1, first_seed=seed, ratios=("bo",), train_samples=config.train_samples,
        test_samples=config.test_samples, progress=progress,
        pruning=QuantizedPruningConfig(budget_ratio=spec.budget_ratio, trials=config.trials,
                                       finetune_epochs=config.finetune_epochs,
                                       batch_size=config.batch_size),
    )
    (run,) = run_quantized_pruning_job(job, log=lambda *_: None)["results"]
    return {"label": spec.label, "seed": seed, "test_acc": run["test_acc"],
            "checkpoint": checkpoint, **_memory(run)}


# -- phase 3: latency ---------------------------------------------------------------------
def measure_latency(checkpoint: str, input_shape: tuple[int, ...], repeats: int,
                    batches: tuple[int, ...] = (1, 64)) -> dict:
    """``{"latency_ms_b1", "latency_ms_b64", "runs_on"}`` of a checkpoint on one thread: the
    packed model when every compressed layer has a packed form, else the dense model; either
    prepared by :func:`apb.pack.optimize_for_inference_` (BatchNorms folded, full-precision
    convolutions channels-last, fast max-pooling) and run by :class:`apb.pack.PackedRuntime`."""
    model, _, _ = load_for_inference(checkpoint)
    try:
        pack_(model.eval())
    except PackError:
        pass  # no packed form: it runs as the dense model its layers compute with
    model = PackedRuntime(optimize_for_inference_(model))
    runs_on = "packed" if any(True for _ in packed_layers(model)) else "torch_fp32"
    result: dict = {"runs_on": runs_on}
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode(), thread_count(1):
        for b in batches:
            x = torch.randn((b, *input_shape), generator=gen)
            result[f"latency_ms_b{b}"] = round(time_ms(lambda x=x: model(x), repeats, 3), 4)
    return result


# -- the whole comparison -----------------------------------------------------------------
def environment() -> dict:
    """Where the numbers were measured: CPU, cores, kernels' instruction set, versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "isa": active_isa(),
            "torch": torch.__version__.split("+")[0]}


def run_compare(config: CompareConfig, log=print, command: str | None = None) -> dict:
    """Run the comparison; returns (and writes) the report. ``command`` is recorded in it."""
    specs = config.validate()
    split = data.load(config.dataset, config.data_dir)  # fail now, not in a worker
    input_shape = tuple(split.input_shape)
    t0 = time.time()
    seeds = range(config.seeds)
    trainings = _trainings(specs, config)
    log(f"apb compare: {config.model} on {config.dataset}, {len(specs)} methods x "
        f"{config.seeds} seed(s), {config.epochs} epochs each, {len(trainings)} trained "
        f"model(s) per seed, {config.jobs} run(s) at a time")

    trained: dict[tuple[str, int], dict] = {}

    def record(run: dict) -> None:
        trained[run["label"], run["seed"]] = run
        log(f"  {run['label']:>26} seed {run['seed']}: test acc {run['test_acc']:.4f}  "
            f"{run['bits_per_weight']:.3f} bits/w  {run['model_bytes']:,} B  "
            f"({time.time() - t0:.0f} s)")

    serial = config.jobs <= 1
    run_in_processes(_train_run, [(config, r, s, config.progress and serial)
                                  for r in trainings.values() for s in seeds],
                     config.jobs, record)
    post = [(config, spec, trained[trainings[spec.training_key].label, s]["checkpoint"], s,
             config.progress and serial)
            for spec in specs if spec.kind != "train" for s in seeds]
    run_in_processes(_post_training_run, post, config.jobs, record)

    results = []
    for spec in specs:
        label = spec.label if spec.kind != "train" else trainings[spec.training_key].label
        runs = [trained[label, s] for s in seeds]
        accs = [r["test_acc"] for r in runs]
        row = {
            "method": spec.label,
            "test_acc_mean": statistics.fmean(accs),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "test_accs": accs,
            "bits_per_weight": statistics.fmean(r["bits_per_weight"] for r in runs),
            "model_bytes": round(statistics.fmean(r["model_bytes"] for r in runs)),
            "model_bytes_per_seed": [r["model_bytes"] for r in runs],
            "latency_ms_b1": None, "latency_ms_b64": None, "runs_on": None,
            "checkpoint": runs[0]["checkpoint"],
        }
        results.append(row)
    if config.latency:
        log("latency (one thread, median of "
            f"{config.latency_repeats} runs, first seed's model):")
        for row in results:
            row.update(measure_latency(row["checkpoint"], input_shape, config.latency_repeats))
            log(f"  {row['method']:>26}: {row['latency_ms_b1']:.3f} ms (b1)  "
                f"{row['latency_ms_b64']:.3f} ms (b64)  [{row['runs_on']}]")

    report = {
        "model": config.model, "model_options": config.model_options,
        "dataset": config.dataset, "seeds": config.seeds,
        "epochs": config.epochs, "act_bits": config.act_bits,
        "seconds": round(time.time() - t0, 1), "command": command,
        "environment": environment(), "config": asdict(config), "results": results,
    }
    json_path = Path(config.json) if config.json else Path(config.out) / "compare.json"
    write_json(json_path, report)
    if config.plot:
        plot_pareto(report, config.plot)
    if config.markdown:
        plot = config.plot and os.path.relpath(config.plot, Path(config.markdown).parent)
        page = Path(config.markdown)
        previous = page.read_text(encoding="utf-8") if page.exists() else None
        atomic_write_text(page, keep_hand_written(report_markdown(report, plot) + "\n",
                                                  previous))
    log(markdown_table(report))
    log(f"report written to {json_path}" + (f", plot to {config.plot}" if config.plot else ""))
    return report
