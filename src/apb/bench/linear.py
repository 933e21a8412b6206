"""Transformer Linear layers with full-precision activations: apb's ``linear_1xf`` against
the libraries a user would pick instead, in one process, on the same threads.

Each shape is ``(N, K, M)``: N tokens through a ``K -> M`` Linear layer (``y = x Wᵀ + b``,
``x [N, K]``, ``y [N, M]``). Implementations:

- ``torch_fp32``: ``torch.nn.functional.linear`` (oneDNN/MKL sgemm);
- ``torch_int8_dynamic``: ``torch.ao.quantization.quantize_dynamic`` of an ``nn.Linear``
  (fbgemm: int8 weights per tensor, activations quantized per call);
- ``ort_int8``: ONNX Runtime, a float ``MatMul`` + ``Add`` graph quantized by
  ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, ``DynamicQuantizeLinear`` +
  ``MatMulInteger``);
- ``apb``: :func:`apb.kernels.direct.linear_1xf` on a layer of random signs, a per-layer
  ``α``, 2 % full-precision corrections (CSR, uint16 or int32 indices, float32 values)
  and a bias, the call a packed Linear layer makes per forward (exact tables: the int8
  codes of each token are the only approximation);
- ``apb_int8_tables``: the same with ``table_bits=8`` (each token's table values rounded
  to int8, T-MAC's tables; one more rounding).

Timing: for every shape, the implementations run in interleaved rounds (each round times
each implementation once, as the mean of enough calls to last about ``target_ms``), so
that load from other processes falls on all of them alike; a shape's time is the median
over rounds, and a speed-up is the median over rounds of the per-round ratio.

Two limits, measured on this machine in the same run: the memory bandwidth (bytes per
second of a sum over a buffer larger than the last-level cache; apb's N = 1 share is its
weight bytes, panel + CSR + α + bias, streamed per second) and one core's lookup rate
of ``linear_1xf``'s microkernel on L1 data (:func:`apb.kernels.linear_1xf_lookup_rate`;
apb's share for large N is its lookups, ``M·ceil(K/4)·N``, per second and thread).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from rich.table import Table

from ..console import table_text
from ..io import write_figure
from ..kernels import active_isa, direct, linear_1xf_kernel, linear_1xf_lookup_rate, pack_signs
from .ort import dynamic_int8_session
from .timing import thread_count

LAYERS = [(384, 384), (384, 1536), (1536, 384), (768, 768), (768, 3072), (3072, 768),
          (4096, 4096), (4096, 11008)]
"""``(K, M)`` of the Linear layers: MiniLM (384), BERT-base (768), LLaMA-7B (4096)."""

TOKENS = [1, 4, 16, 64, 128, 512]
IMPLS = ["torch_fp32", "torch_int8_dynamic", "ort_int8", "apb", "apb_int8_tables"]
APB_IMPLS = {"apb": 16, "apb_int8_tables": 8}
"""apb's rows and their ``table_bits``."""
FP_FRACTION = 0.02
"""Share of full-precision weights (CSR nonzeros) of the apb layer."""

Shape = tuple[int, int, int]
Setup = Callable[[int, int, int, np.random.Generator, int], Callable[[], object]]


# -- implementations ---------------------------------------------------------------------
def _torch_fp32(N, K, M, rng, threads):
    w = torch.from_numpy(rng.standard_normal((M, K), dtype=np.float32))
    b = torch.from_numpy(rng.standard_normal(M, dtype=np.float32))
    x = torch.from_numpy(rng.standard_normal((N, K), dtype=np.float32))
    return lambda: torch.nn.functional.linear(x, w, b)


def _torch_int8_dynamic(N, K, M, rng, threads):
    layer = torch.nn.Linear(K, M)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.standard_normal((M, K), dtype=np.float32)))
    with warnings.catch_warnings():  # torch.ao's deprecation notice is not ours to report
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(layer), {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.from_numpy(rng.standard_normal((N, K), dtype=np.float32))

    def run():
        with torch.inference_mode():
            return model(x)

    return run


def _ort_int8(N, K, M, rng, threads):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = rng.standard_normal((K, M), dtype=np.float32)
    b = rng.standard_normal(M, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["Y"])],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", K])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", M])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "fp32.onnx")
        onnx.save(model, src)
        session = dynamic_int8_session(src, threads)  # the session holds the model in memory
    x = rng.standard_normal((N, K), dtype=np.float32)
    return lambda: session.run(None, {"X": x})


def apb_layer(K: int, M: int, rng: np.random.Generator) -> dict:
    """The arrays of a random apb Linear layer ``K -> M``: ``panel``, ``alpha`` (per layer),
    CSR ``indptr``/``indices``/``values`` with :data:`FP_FRACTION` nonzeros, ``bias``."""
    signs = pack_signs(rng.standard_normal((M, K), dtype=np.float32))
    fp = rng.random((M, K)) < FP_FRACTION
    rows, cols = np.nonzero(fp)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=M))]).astype(np.int32)
    return {
        "panel": direct.linear_1xf_pack(signs, K),
        "alpha": np.array([0.05], np.float32),
        "indptr": indptr,
        "indices": cols.astype(np.uint16 if K <= 65536 else np.int32),
        "values": rng.standard_normal(len(cols), dtype=np.float32) * np.float32(0.1),
        "bias": rng.standard_normal(M, dtype=np.float32),
    }


def apb_weight_bytes(layer: dict) -> int:
    """Bytes a forward of the layer streams besides its input: panel, CSR, α and bias."""
    return sum(int(layer[k].nbytes) for k in ("panel", "indptr", "indices", "values", "alpha", "bias"))


def _apb(table_bits: int) -> Setup:
    def setup(N, K, M, rng, threads):
        layer = apb_layer(K, M, rng)
        x = rng.standard_normal((N, K), dtype=np.float32)
        args = (x, layer["panel"], layer["alpha"], M, layer["indptr"], layer["indices"],
                layer["values"], layer["bias"], table_bits)
        return lambda: direct.linear_1xf(*args)

    return setup


IMPLEMENTATIONS: dict[str, Setup] = {
    "torch_fp32": _torch_fp32,
    "torch_int8_dynamic": _torch_int8_dynamic,
    "ort_int8": _ort_int8,
    "apb": _apb(16),
    "apb_int8_tables": _apb(8),
}


# -- limits ------------------------------------------------------------------------------
def bandwidth_gbytes_per_s(megabytes: int = 256, trials: int = 5) -> float:
    """Bytes read per second by a sum over a float32 buffer of ``megabytes`` (larger than
    the last-level cache), best of ``trials``."""
    buf = np.ones(megabytes * (1 << 20) // 4, dtype=np.float32)
    best = float("inf")
    for _ in range(trials):
        t0 = time.perf_counter()
        np.add.reduce(buf)
        best = min(best, time.perf_counter() - t0)
    return buf.nbytes / best / 1e9


# -- the harness -------------------------------------------------------------------------
def _calls_for(fn: Callable[[], object], target_ms: float) -> int:
    t0 = time.perf_counter()
    fn()
    once = (time.perf_counter() - t0) * 1e3
    return max(1, min(1000, int(target_ms / max(once, 1e-3))))


def _sample_ms(fn: Callable[[], object], calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def run_linear_benchmark(
    layers: list[tuple[int, int]] | None = None, tokens: list[int] | None = None,
    impls: list[str] | None = None, threads: int = 1, rounds: int = 7, target_ms: float = 20.0,
    seed: int = 0, bandwidth_mb: int = 256, progress: Callable[[str], None] | None = None,
) -> dict:
    """Time every implementation on every ``(N, K, M)``; the JSON report as a dict."""
    layers = LAYERS if layers is None else layers
    tokens = TOKENS if tokens is None else tokens
    impls = IMPLS if impls is None else impls
    unknown = [i for i in impls if i not in IMPLEMENTATIONS]
    if unknown:
        raise ValueError(f"unknown implementation(s) {unknown}; choose from {IMPLS}")
    if rounds < 1 or threads < 1 or not layers or not tokens:
        raise ValueError(f"need rounds >= 1, threads >= 1 and some shapes, got {rounds}, {threads}")
    shapes = [(n, k, m) for n in tokens for k, m in layers]
    per_shape: dict[str, list[float | None]] = {i: [] for i in impls}
    mine = [i for i in impls if i in APB_IMPLS]
    # apb's speed-up over every other row, per apb row ("apb" keys the plain one).
    ratios: dict[str, dict[str, list[float | None]]] = {
        a: {i: [] for i in impls if i not in APB_IMPLS} for a in mine}
    errors: dict[str, str] = {}
    with thread_count(threads):
        for shape in shapes:
            if progress:
                progress(f"{shape}")
            fns: dict[str, Callable[[], object]] = {}
            for impl in impls:
                if impl in errors:
                    continue
                try:
                    fns[impl] = IMPLEMENTATIONS[impl](*shape, np.random.default_rng(seed), threads)
                except (ImportError, RuntimeError) as err:  # a peer missing on this machine
                    errors[impl] = f"{type(err).__name__}: {err}"
            calls = {impl: _calls_for(fn, target_ms) for impl, fn in fns.items()}
            samples: dict[str, list[float]] = {impl: [] for impl in fns}
            for _ in range(rounds):
                for impl, fn in fns.items():
                    samples[impl].append(_sample_ms(fn, calls[impl]))
            for impl in impls:
                per_shape[impl].append(statistics.median(samples[impl]) if impl in samples else None)
            for a, peers in ratios.items():
                for impl, values in peers.items():
                    ok = impl in samples and a in samples
                    values.append(statistics.median(
                        [p / q for p, q in zip(samples[impl], samples[a], strict=True)]) if ok else None)
            del fns
        lookups = {APB_IMPLS[a]: linear_1xf_lookup_rate(20, APB_IMPLS[a]) for a in mine}
        kernel_names = {a: linear_1xf_kernel(APB_IMPLS[a]) for a in mine}
        bandwidth = bandwidth_gbytes_per_s(bandwidth_mb)
    shares: dict[str, list[dict]] = {a: [] for a in mine}
    for a in mine:
        for (n, k, m), ms in zip(shapes, per_shape[a], strict=True):
            weight_bytes = apb_weight_bytes(apb_layer(k, m, np.random.default_rng(seed))) if n == 1 else None
            ok = ms is not None
            shares[a].append({
                "bandwidth": weight_bytes / (ms / 1e3) / 1e9 / bandwidth if ok and weight_bytes else None,
                "lookup": m * -(-k // 4) * n / (ms / 1e3) / 1e9 / (lookups[APB_IMPLS[a]] * threads)
                if ok else None,
            })
    return {
        "isa": active_isa(), "threads": threads, "rounds": rounds,
        "shapes": [list(s) for s in shapes],
        "limits": {"bandwidth_gbytes_per_s": bandwidth, "lookup_gops": lookups.get(16),
                   "lookup_gops_int8_tables": lookups.get(8)},
        "kernels": kernel_names,
        "results": [{"impl": i, "per_shape_ms": per_shape[i], **({"error": errors[i]} if i in errors else {})}
                    for i in impls],
        "apb_speedup": ratios,
        "apb_share_of_limit": shares,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _sum_over(report: dict, impl: str, n: int) -> float | None:
    rows = {r["impl"]: r for r in report["results"]}
    values = [ms for s, ms in zip(report["shapes"], rows[impl]["per_shape_ms"], strict=True) if s[0] == n]
    return None if not values or any(v is None for v in values) else sum(values)


def report_table(report: dict) -> str:
    """Per shape: ms of each implementation, each apb row's speed-up over each peer (median
    of the per-round ratios) and its share of the relevant limit; then sums per token count."""
    rows = {r["impl"]: r for r in report["results"]}
    mine = list(report["apb_speedup"])
    peers = [i for i in rows if i not in APB_IMPLS]
    limits = report["limits"]
    title = (f"Linear layers, {report['threads']} thread(s), isa {report['isa']} "
             f"({', '.join(f'{a}: {k}' for a, k in report.get('kernels', {}).items())}), "
             f"bandwidth {limits['bandwidth_gbytes_per_s']:.1f} GB/s")
    if limits.get("lookup_gops"):
        title += f", lookups {limits['lookup_gops']:.1f}"
        if limits.get("lookup_gops_int8_tables"):
            title += f" / {limits['lookup_gops_int8_tables']:.1f} (int8 tables)"
        title += " G/s per core"
    t = Table(title=title)
    columns = [f"{a} vs {p}" for a in mine for p in peers]
    for c in ["N", "K->M", *rows, *columns, *[f"{a} % limit" for a in mine]]:
        t.add_column(c, justify="right")
    for i, (n, k, m) in enumerate(report["shapes"]):
        ms = [rows[r]["per_shape_ms"][i] for r in rows]
        speed = [report["apb_speedup"][a][p][i] for a in mine for p in peers]
        share = []
        for a in mine:
            s = report["apb_share_of_limit"][a][i]
            value = s["bandwidth"] if n == 1 else s["lookup"]
            share.append("" if value is None else f"{100 * value:.0f}% {'bw' if n == 1 else 'lut'}")
        t.add_row(str(n), f"{k}->{m}", *[f"{v:.3f}" if v is not None else "n/a" for v in ms],
                  *[f"{v:.2f}x" if v is not None else "" for v in speed], *share)
    for n in sorted({s[0] for s in report["shapes"]}):
        sums = {r: _sum_over(report, r, n) for r in rows}
        ratio = [f"{sums[p] / sums[a]:.2f}x" if sums.get(p) and sums.get(a) else ""
                 for a in mine for p in peers]
        t.add_row(str(n), "sum", *[f"{v:.3f}" if v is not None else "n/a" for v in sums.values()],
                  *ratio, *[""] * len(mine), style="bold")
    return table_text(t, width=260)


def plot_report(report: dict, path: str) -> None:
    """apb's speed-up over each peer per shape (log scale), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{n}|{k}->{m}" for n, k, m in report["shapes"]]
    fig, ax = plt.subplots(figsize=(max(8, 0.25 * len(labels)), 4.5))
    for a, peers in report["apb_speedup"].items():
        for peer, values in peers.items():
            if any(v is not None for v in values):
                ax.plot(range(len(labels)), [v if v is not None else np.nan for v in values],
                        marker="o" if a == "apb" else "x", ms=3,
                        ls="-" if a == "apb" else "--", label=f"{a} vs {peer}")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("apb speed-up (median of per-round ratios)")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_title(f"apb linear_1xf, {report['threads']} thread(s), {report['isa']}")
    ax.legend(fontsize=8)
    write_figure(fig, path)
