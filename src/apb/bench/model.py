"""Model benchmark: a packed APB network against the same architecture in torch fp32,
torch int8 and ONNX Runtime int8, every zoo model, measured in one process on the same
threads (the implementations: :mod:`apb.bench.model_peers`).

Timing: for each model the four implementations run in interleaved rounds
(:func:`apb.bench.timing.interleaved_ms`: in round ``r`` each runs one untimed forward,
then ``per_round`` timed ones, in an order rotated by one every round). A machine whose
speed drifts (this one is shared) slows a whole round alike, so apb's speed-up over a
peer is the median over rounds of that round's ratio, reported with its spread
(min–max and quartiles); each implementation's time is the median of its per-round
medians. Timing each model in its own block instead made the ratios swing from 1.48× to
2.24× between runs. The untimed forward opening each turn is what the interleaving costs:
without it the first timed forward would start from the caches the previous model filled.

Fidelity (:func:`packed_fidelity`): on the benchmark input the packed logits are
compared with the eval-mode training model's, with the activation codes the two models
compute. With 2-bit activations every sample whose codes all agree must match to
``1e-5`` relative (max absolute difference over max absolute logit); samples where float
rounding put an activation on the other side of a rounding threshold are counted, not
hidden. With 1-bit activations the report gives the fraction of binarized activations
whose sign differs beside the logit error.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from rich.table import Table
from torch import nn

from .. import models
from ..console import table_text
from ..io import write_figure
from ..kernels import active_isa
from ..pack import PackedRuntime
from .model_peers import (
    INT8_ENGINE,
    build_apb,
    build_fp32,
    build_int8,
    build_ort_int8,
    calibration_inputs,
    fastest_layout,
    input_shape,
    torch_runner,
)
from .timing import interleaved_ms, ratio_spread, thread_count

ACT_BITS = (1, 2)
IMPLS = ("torch_fp32", "torch_int8", "ort_int8", "apb")
PEERS = IMPLS[:-1]
COLORS = {"torch_int8": "tab:blue", "ort_int8": "tab:green", "apb": "tab:orange"}
EXACT_TOLERANCE = 1e-5
"""Largest relative logit error of the packed model at 2-bit activations."""


def parse_models(text: str) -> list[str]:
    """``"all"`` or a comma list of zoo names, in the given order, without repeats."""
    available = models.available()
    names = available if text.strip() == "all" else [
        n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ValueError(f"unknown model(s) {', '.join(unknown) or repr(text)}; choose "
                         f"'all' or a comma list of {', '.join(available)}")
    return list(dict.fromkeys(names))


def packed_fidelity(packed: nn.Module, training: nn.Module, x: torch.Tensor,
                    act_bits: int) -> dict:
    """The packed logits against the training model's on the batch ``x``::

        {"max_rel_error", "argmax_agreement", "code_flip_fraction", "flipped_samples",
         "max_rel_error_unflipped", "ok"} (+ "sign_flip_fraction" at 1-bit activations)

    A code flip is an activation that the two models quantize differently: every layer
    with an activation quantizer (same name in both) has its quantizer applied to each
    model's input to it, and the outputs compared. Both models compute the same codes
    up to float rounding (folded BatchNorms sum in another order), so a flip needs an
    input within rounding of a threshold: rare per activation (none at batch 1 in the
    zoo here), but a batch of 64 ResNet-18 images has 10⁸ of them. One flipped code moves
    every output it feeds by a quantization step times a weight, and the later layers
    carry that on. ``max_rel_error_unflipped`` is over the samples without any flip;
    ``ok``: it is within :data:`EXACT_TOLERANCE` (``None`` at 1-bit activations, where
    random-weight binary networks amplify the sum-order differences themselves)."""
    quantizers = {name: m.act_quantizer for name, m in training.named_modules()
                  if getattr(m, "act_quantizer", None) is not None}
    with torch.no_grad():
        got = packed(x)  # what is timed: a PackedRuntime runs its plan
    # The codes come from the packed layers' inputs, seen by hooks on the model itself
    # (a runtime's plan, built before them, would not run them).
    packed_model = packed.model if isinstance(packed, PackedRuntime) else packed
    packed_layers = dict(packed_model.named_modules())
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in quantizers}
    hooks = [model.register_forward_pre_hook(
                 lambda _, args, name=name: inputs[name].append(args[0]))
             for name in quantizers for model in (training.get_submodule(name),
                                                  packed_layers[name])]
    try:
        with torch.no_grad():  # the quantizers' autograd functions refuse inference tensors
            want, _ = training(x), packed_model(x)
            flips = [q(a) != q(b) for name, q in quantizers.items()
                     for a, b in [inputs[name]]]
    finally:
        for hook in hooks:
            hook.remove()
    per_sample = sum((f.flatten(1).sum(1) for f in flips), torch.zeros(len(x)))
    clean = per_sample == 0
    scale = want.abs().max()
    total = sum(f.numel() for f in flips)
    report = {
        "max_rel_error": float((got - want).abs().max() / scale),
        "argmax_agreement": float((got.argmax(1) == want.argmax(1)).float().mean()),
        "code_flip_fraction": float(per_sample.sum()) / total if total else 0.0,
        "flipped_samples": int((~clean).sum()),
        "max_rel_error_unflipped": (float((got[clean] - want[clean]).abs().max() / scale)
                                    if clean.any() else None),
    }
    exact = report["max_rel_error_unflipped"]
    report["ok"] = (exact is not None and exact <= EXACT_TOLERANCE) if act_bits > 1 else None
    if act_bits == 1:
        report["sign_flip_fraction"] = report["code_flip_fraction"]
    return report


@contextlib.contextmanager
def _quantized_engine_restored() -> Iterator[None]:
    previous = torch.backends.quantized.engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _measure(name: str, act_bits: int, batch: int, threads: int, rounds: int,
             per_round: int, fp_fraction: float, seed: int, folder: Path,
             say: Callable[[str], None]) -> dict:
    calibration = calibration_inputs(name, seed=seed)
    x = torch.randn(batch, *input_shape(name), generator=torch.Generator().manual_seed(seed))
    say(f"{name}: building the packed APB model")
    packed, training = build_apb(name, act_bits, fp_fraction, seed, calibration)
    fidelity = packed_fidelity(packed, training, x, act_bits)
    say(f"{name}: building the torch fp32 and int8 models, ONNX Runtime int8")
    fp32 = build_fp32(name, act_bits, seed)
    def ort_int8():  # exported with VGG-Small's BatchNorms after its pools, as ORT likes
        forward = build_ort_int8(build_fp32(name, act_bits, seed, across_max_pools=False),
                                 calibration, threads, folder)
        return lambda: forward(x)

    builders = {"torch_int8": lambda: torch_runner(
                    build_int8(name, act_bits, seed, calibration), x),
                "ort_int8": ort_int8}
    runners, errors = {}, {}
    for impl, build in builders.items():
        try:
            runners[impl] = build()
        except Exception as err:  # a peer that cannot take this model: say why, go on
            errors[impl] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    layout, layout_ms = fastest_layout(fp32, x, rounds=min(rounds, 5))
    runners = {"torch_fp32": torch_runner(fp32, x, layout), **runners,
               "apb": torch_runner(packed, x)}
    with torch.inference_mode():
        want = fp32(x)
        peer_error = {impl: float((torch.as_tensor(runners[impl]()) - want).abs().max()
                                  / want.abs().max()) for impl in ("torch_int8", "ort_int8")
                      if impl in runners}
    say(f"{name}: {rounds} interleaved rounds of {per_round} forwards each")
    times = interleaved_ms({impl: runners[impl] for impl in IMPLS if impl in runners},
                           rounds, per_round, warmup=1, settle=1)
    plan = packed.extra_repr() if isinstance(packed, PackedRuntime) else "no plan"
    return {"times": times, "layout": layout, "layout_ms": layout_ms, "errors": errors,
            "fidelity": fidelity, "peer_rel_error": peer_error, "plan": plan}


def run_model_benchmark(names: list[str], act_bits: int = 2, batch: int = 1,
                        threads: int = 1, rounds: int = 10, per_round: int = 3,
                        fp_fraction: float = 0.02, seed: int = 0,
                        progress: Callable[[str], None] | None = None) -> dict:
    """Build the four implementations of every model in ``names`` and time them; the JSON
    report as a dict::

        {"threads", "batch", "act_bits", "results": [{"model", "impl", "ms"}],
         "speedups": [{"model", "vs", "median", "min", "max", "q1", "q3"}],
         "round_ms": {model: {impl: [...]}}, "fidelity": {model: {...}},
         "peer_rel_error": {model: {impl: ...}}, "layouts": {model: {...}},
         "apb_plan": {model: what PackedRuntime planned, e.g. "plan: 20 apb_conv2d, ..."},
         "unavailable": [{"model", "impl", "error"}], "rounds", "per_round",
         "fp_fraction", "int8_engine", "isa"}

    ``speedups`` are apb's over each peer (peer ms / apb ms per round, summarised over
    rounds); ``peer_rel_error`` is each int8 peer's logit error against torch fp32.
    """
    unknown = [n for n in names if n not in models.available()]
    if unknown or not names:
        raise ValueError(f"unknown model(s) {unknown}; choose from {models.available()}")
    if act_bits not in ACT_BITS:
        raise ValueError(f"act_bits must be 1 or 2 for the packed model, got {act_bits}")
    if batch < 1 or threads < 1 or rounds < 1 or per_round < 1:
        raise ValueError(f"need batch >= 1, threads >= 1, rounds >= 1 and per_round >= 1; "
                         f"got {batch}, {threads}, {rounds}, {per_round}")
    if not 0.0 <= fp_fraction < 1.0:
        raise ValueError(f"fp_fraction must be in [0, 1), got {fp_fraction}")
    say = progress or (lambda _: None)
    report = {"threads": threads, "batch": batch, "act_bits": act_bits, "results": [],
              "speedups": [], "round_ms": {}, "fidelity": {}, "peer_rel_error": {},
              "layouts": {}, "apb_plan": {}, "unavailable": [], "rounds": rounds, "per_round": per_round,
              "fp_fraction": fp_fraction, "int8_engine": INT8_ENGINE, "isa": active_isa()}
    with thread_count(threads), _quantized_engine_restored():
        for name in names:
            with tempfile.TemporaryDirectory() as folder:
                m = _measure(name, act_bits, batch, threads, rounds, per_round,
                             fp_fraction, seed, Path(folder), say)
            times = m["times"]
            report["results"] += [{"model": name, "impl": impl,
                                   "ms": statistics.median(times[impl])}
                                  for impl in IMPLS if impl in times]
            report["speedups"] += [{"model": name, "vs": peer,
                                    **ratio_spread(times[peer], times["apb"])}
                                   for peer in PEERS if peer in times]
            report["round_ms"][name] = times
            report["fidelity"][name] = m["fidelity"]
            report["peer_rel_error"][name] = m["peer_rel_error"]
            report["layouts"][name] = {"torch_fp32": m["layout"],
                                       "probe_ms": m["layout_ms"]}
            report["apb_plan"][name] = m["plan"]
            report["unavailable"] += [{"model": name, "impl": impl, "error": error}
                                      for impl, error in m["errors"].items()]
    return report


def report_table(report: dict) -> str:
    """Median ms per model and implementation, apb's speed-up over each peer (median over
    rounds, min–max beneath), and the packed model's fidelity."""
    ms = {(r["model"], r["impl"]): r["ms"] for r in report["results"]}
    up = {(s["model"], s["vs"]): s for s in report["speedups"]}
    t = Table(title=f"batch {report['batch']}, {report['threads']} thread(s), apb with "
                    f"{report['act_bits']}-bit activations and {report['fp_fraction']:.0%} fp "
                    f"weights; {report['rounds']} interleaved rounds (isa {report['isa']})")
    t.add_column("model")
    for impl in IMPLS:
        t.add_column(f"{impl} ms", justify="right")
    for peer in PEERS:
        t.add_column(f"apb vs {peer}", justify="right")
    t.add_column("apb logits", justify="right")
    for name in report["fidelity"]:
        cells = [f"{ms[name, impl]:.2f}" if (name, impl) in ms else "n/a" for impl in IMPLS]
        for peer in PEERS:
            s = up.get((name, peer))
            cells.append(f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})" if s else "n/a")
        t.add_row(name, *cells, _fidelity_text(report["fidelity"][name]))
    notes = ["torch_fp32 layout: " + ", ".join(
        f"{n} {v['torch_fp32']}" for n, v in report["layouts"].items())]
    notes += [f"{u['model']} {u['impl']} unavailable: {u['error']}"
              for u in report["unavailable"]]
    return table_text(t, width=200) + "\n".join(notes) + "\n"


def _fidelity_text(f: dict) -> str:
    text = f"rel err {f['max_rel_error']:.1e}"
    if "sign_flip_fraction" in f:
        return f"{text}, {f['sign_flip_fraction']:.2%} signs flipped"
    if f["flipped_samples"]:
        rest = f["max_rel_error_unflipped"]
        text += (f" ({f['flipped_samples']} sample(s) with a rounding flip, rest "
                 + (f"{rest:.1e})" if rest is not None else "none)"))
    return text + ("" if f["ok"] else " (over 1e-5!)")


def plot_report(report: dict, path: str) -> None:
    """Each implementation's speed-up over torch fp32 per model (median over rounds of the
    per-round ratio, min–max as error bars, log scale, 1× marked), written atomically."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["fidelity"])
    others = IMPLS[1:]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(others)
    for i, impl in enumerate(others):
        spreads = {n: ratio_spread(t["torch_fp32"], t[impl])
                   for n, t in report["round_ms"].items() if impl in t and "torch_fp32" in t}
        shown = [n for n in names if n in spreads]
        xs = [names.index(n) + (i - (len(others) - 1) / 2) * width for n in shown]
        med = [spreads[n]["median"] for n in shown]
        low = [spreads[n]["median"] - spreads[n]["min"] for n in shown]
        high = [spreads[n]["max"] - spreads[n]["median"] for n in shown]
        ax.bar(xs, med, width, yerr=[low, high], capsize=3, label=impl, color=COLORS[impl])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    times = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}×")
    ax.yaxis.set_major_formatter(times)
    ax.yaxis.set_minor_formatter(times)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("speed-up over torch_fp32 (log)")
    ax.set_title(f"apb with {report['act_bits']}-bit activations, batch {report['batch']}, "
                 f"{report['threads']} thread(s), {report['isa']}")
    ax.legend()
    write_figure(fig, path)
