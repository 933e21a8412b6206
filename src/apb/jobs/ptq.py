"""The job behind ``apb ptq``: compress a trained full-precision checkpoint after training.

Reads the checkpoint, takes ``calib`` evenly spaced training samples of its dataset as the
calibration set, runs :func:`apb.methods.ptq_`, measures test accuracy and memory (the
:mod:`apb.summary` accounting), and writes a checkpoint that ``apb summary`` (and the
training checkpoint loader) reads, plus an optional JSON report with ``method``,
``test_acc``, ``bits_per_weight``, ``model_bytes`` and ``seconds``.

Targets (``--target``), one or more ``key=value`` separated by commas:
``sparsity=0.5``, ``nm=2:4``, ``bits=4``, ``bits_per_weight=1.6``, ``fp_fraction=0.02``,
``model_bytes=20000``, ``bops_reduction=16``; or the short forms ``0.5`` / ``2:4``
(obc-prune), ``4`` (obc-quant), ``0.5,4`` / ``2:4,4`` (obc-compound), ``1.6`` (apb-ptq,
apb-naive: bits per weight).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass

from torch.utils.data import DataLoader

from ..data import evenly_spaced_subset
from ..methods import APBPTQConfig, OBCConfig, post_training_method, ptq_
from ..summary import summary
from ..train import evaluate, jsonable, post_training_state, save_checkpoint
from .common import check_outputs, load_trained, write_json

METHODS = ("obc-prune", "obc-quant", "obc-compound", "apb-ptq", "apb-naive")
TARGET_KEYS = {
    "sparsity": float, "nm": str, "bits": int, "bits_per_weight": float, "fp_fraction": float,
    "model_bytes": int, "bops_reduction": float,
}
OBC_KEYS = ("sparsity", "nm", "bits", "bits_per_weight", "model_bytes", "bops_reduction")
APB_KEYS = ("bits_per_weight", "fp_fraction")


@dataclass
class PTQJob:
    """Attributes:
    checkpoint: a full-precision checkpoint written by apb train (best.pt / last.pt);
        or, with hf, nothing.
    hf: a local Hugging Face model directory (config.json + model.safetensors, or a
        sentence-transformers directory) to compress instead of a checkpoint; the output is
        then a packed model file (apb.jobs.transformer).
    method: obc-prune, obc-quant, obc-compound, apb-ptq or apb-naive (the band rule on the
        trained weights, no compensation: the baseline of apb-ptq).
    target: what to reach, e.g. sparsity=0.5, nm=2:4, bits=4, bits_per_weight=1.6,
        model_bytes=20000, bops_reduction=16 (see apb.jobs.ptq); short forms 0.5, 2:4, 4,
        0.5,4 and 1.6 mean the method's usual target.
    output: where to write the compressed checkpoint (with hf: the packed .safetensors).
    json: also write the result as JSON here.
    calib: calibration samples, evenly spaced over the training split (default 1024); with
        hf, the first texts of texts (default 512).
    texts: with hf: a text file, one text per line, or python-docs (sentences of Python's
        reference documentation, shipped with Python); the first calib texts calibrate,
        the eval_texts after them measure fidelity.
    eval_texts: with hf: how many texts after the calibration ones measure fidelity.
    max_length: with hf: tokens per text at most.
    layers: with hf: which nn.Linear layers to compress, a regular expression searched in
        their module names.
    dataset: calibration and test data (default: the checkpoint's dataset).
    data_dir: where the dataset's files are (default: the checkpoint's).
    test_samples: measure test accuracy on this many evenly spaced test samples only (as
        ``apb train --test-samples`` does); None uses all of them.
    scope: layer (every layer meets the target) or model (the model as a whole does; each
        layer's level from the global step).
    per_channel: apb-ptq / apb-naive: one alpha per output channel instead of per layer.
    symmetric: obc-quant / obc-compound: symmetric grids (else with zero points).
    value_bits: apb-ptq / apb-naive: storage of the full-precision values, 32 or 16.
    group_size: obc-quant: one grid per group of this many input columns (bits accounted);
        None: one per row.
    dampening: lambda of the dampened Hessian H + lambda*mean(diag H)*I.
    solver: auto (exact OBC loop for small layers, lazy batches above), exact or lazy.
    block_size: columns per block of the solvers.
    act_order: lazy solver: visit the columns by descending Hessian diagonal.
    bias_correction: layers with a bias: solve with the centered Hessian and refit the bias
        (docs/ptq.md).
    sequential: compress layer by layer, each fitted to the full-precision output from the
        inputs the already compressed layers give it (default: on for apb-ptq, off for obc).
    batchnorm: BatchNorm statistics afterwards: shift (trained statistics moved by the
        change compression makes on the calibration samples), reestimate (re-estimated on
        the calibration samples) or keep.
    batch_size: samples per forward pass.
    progress: show a progress bar per layer.
    """

    checkpoint: str = ""
    method: str = "obc-prune"
    target: str = ""
    output: str = ""
    json: str | None = None
    calib: int | None = None
    hf: str | None = None
    texts: str = "python-docs"
    eval_texts: int = 512
    max_length: int = 128
    layers: str = r"^encoder\."
    dataset: str | None = None
    data_dir: str | None = None
    test_samples: int | None = None
    scope: str = "layer"
    per_channel: bool = False
    symmetric: bool = True
    value_bits: int = 32
    group_size: int | None = None
    dampening: float = 0.01
    solver: str = "auto"
    block_size: int = 128
    act_order: bool = True
    bias_correction: bool = False
    sequential: bool | None = None
    batchnorm: str = "shift"
    batch_size: int = 128
    progress: bool = True


def parse_target(method: str, text: str) -> dict:
    """``--target`` as config fields (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown ptq method {method!r}; methods: {', '.join(METHODS)}")
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError("--target is empty; e.g. sparsity=0.5, bits=4 or bits_per_weight=1.6")
    fields: dict = {}
    bare = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            bare.append(item)
            continue
        key = key.strip().replace("-", "_")
        if key not in TARGET_KEYS:
            raise ValueError(f"unknown target {key!r}; targets: {', '.join(TARGET_KEYS)}")
        fields[key] = _number(TARGET_KEYS[key], value.strip(), key)
    for i, item in enumerate(bare):
        key = _short_key(method, item, i, len(bare))
        if key in fields:
            raise ValueError(f"target {key} given twice in {text!r}")
        fields[key] = _number(TARGET_KEYS[key], item, key)
    allowed = APB_KEYS if method.startswith("apb") else OBC_KEYS
    wrong = [k for k in fields if k not in allowed]
    if wrong:
        raise ValueError(f"{method} takes targets {', '.join(allowed)}, not {', '.join(wrong)}")
    return fields


def _short_key(method: str, item: str, index: int, count: int) -> str:
    if method.startswith("apb") and count == 1:
        return "bits_per_weight"
    if method == "obc-prune" and count == 1:
        return "nm" if ":" in item else "sparsity"
    if method == "obc-quant" and count == 1:
        return "bits"
    if method == "obc-compound" and count == 2:
        return ("nm" if ":" in item else "sparsity") if index == 0 else "bits"
    raise ValueError(f"cannot read the short target {item!r} for {method}; write key=value "
                     f"(e.g. sparsity=0.5,bits=4)")


def _number(kind: type, value: str, key: str):
    if kind is str:
        return value
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"target {key} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {value!r}") from None


def ptq_config(job: PTQJob):
    """The :func:`apb.methods.ptq_` configuration the job asks for (validated)."""
    fields = parse_target(job.method, job.target)
    common = {"dampening": job.dampening, "batchnorm": job.batchnorm, "solver": job.solver,
              "block_size": job.block_size, "act_order": job.act_order,
              "bias_correction": job.bias_correction}
    if job.sequential is not None:
        common["sequential"] = job.sequential
    if job.method.startswith("apb"):
        if job.group_size is not None:
            raise ValueError("--group-size is an obc-quant option (grids per group of columns)")
        config = APBPTQConfig(**fields, **common, budget_scope=job.scope,
                              per_channel=job.per_channel, value_bits=job.value_bits,
                              compensate=job.method == "apb-ptq")
    else:
        if job.value_bits != 32:
            raise ValueError("--value-bits is an apb-ptq / apb-naive option")
        config = OBCConfig(mode=job.method.removeprefix("obc-"), **fields, **common,
                           scope=job.scope, symmetric=job.symmetric, group_size=job.group_size)
    config.validate()
    return config


def run_ptq_job(job: PTQJob, log=print) -> dict:
    """Run ``job``; returns the JSON report (also written to ``job.json`` when set)."""
    config = ptq_config(job)  # every option checked before any file is read or written
    if not job.output:
        raise ValueError("give the output checkpoint with -o FILE")
    check_outputs(job.output, job.json)
    calib_count = 1024 if job.calib is None else job.calib
    if calib_count < 1 or job.batch_size < 1:
        raise ValueError("--calib and --batch-size must be at least 1")
    started = time.perf_counter()
    model, ckpt, split = load_trained(job.checkpoint, job.dataset, job.data_dir)
    if ckpt["method"]["name"] != "fp":
        raise ValueError(f"{job.checkpoint} was trained with method "
                         f"{ckpt['method']['name']!r}; apb ptq compresses a full-precision "
                         "(method 'fp') checkpoint")
    dataset = job.dataset or ckpt["train_config"]["dataset"]
    if calib_count > len(split.train):
        raise ValueError(f"--calib {calib_count} exceeds the {len(split.train)} training "
                         f"samples of {dataset}")
    calib = DataLoader(evenly_spaced_subset(split.train, calib_count), batch_size=job.batch_size)
    test_set = evenly_spaced_subset(split.test, job.test_samples)
    fp_acc, _ = evaluate(model, test_set, job.batch_size)
    compressed = copy.deepcopy(model)
    report = ptq_(compressed, config, calib,
                  progress=job.progress and sys.stderr.isatty())
    test_acc, _ = evaluate(compressed, test_set, job.batch_size)
    s = summary(compressed)
    seconds = round(time.perf_counter() - started, 3)
    result = {
        "method": job.method, "test_acc": test_acc, "bits_per_weight": s.bits_per_weight,
        "model_bytes": s.model_bytes, "seconds": seconds,
        "fp_test_acc": fp_acc, "target": job.target, "scope": job.scope, "calib": calib_count,
        "dataset": dataset, "fp_fraction": s.fp_fraction, "source": str(job.checkpoint),
        "config": config.to_dict(), "report": report.to_dict(),
    }
    result = jsonable(result)
    stats = {"bits_per_weight": s.bits_per_weight, "fp_fraction": s.fp_fraction,
             "model_bytes": s.model_bytes}
    method = post_training_method(config).checkpoint_method()
    save_checkpoint(post_training_state(ckpt, compressed, method, result, jsonable(stats)),
                    job.output)
    if job.json:
        write_json(job.json, result)
    for layer in report.layers:
        err = "" if layer.relative_error is None else f"  relative error {layer.relative_error:.4g}"
        log(f"  {layer.name:<24} {layer.level:<28}{err}  {layer.seconds:.2f} s")
    log(f"{job.method} {job.target}: test acc {test_acc:.4f} (fp {fp_acc:.4f}), "
        f"{s.bits_per_weight:.3f} bits/weight, {s.model_bytes:,} bytes, {seconds:.1f} s; "
        f"wrote {job.output}")
    return result
