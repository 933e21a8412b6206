"""GEMM benchmark: apb's bitwise kernels against the libraries a user would pick instead.

Every implementation computes the product of an ``M × K`` weight matrix and ``K × N``
activations (a convolution as im2col GEMM: M output channels, K = C·kh·kw, N positions),
all measured in one process, on the same number of threads, in interleaved rounds
(:func:`run_gemm_benchmark`). Peers (docs/design.md §8): PyTorch fp32 (``torch.mm``, MKL/oneDNN sgemm),
PyTorch int8 quantized linear on the fbgemm and onednn engines, ONNX Runtime int8
``MatMulInteger`` (MLAS). The roofline is one core's XOR+popcount rate on L1 data, the
best of the loops :func:`apb.kernels.xor_popcount_rooflines` measures (each is reported).

``apb_layer`` is not a kernel alone but the whole packed layer of that shape, as a
model runs it: float activations in, quantized and bit-packed, the ``1x2`` product, a
2 % CSR correction and the epilogue, float outputs out (the peers get their operands
ready-made).

One bit-op is one bit of each operand multiplied (XOR/AND) and counted; a binary GEMM of
shape (M, K, N) with P activation bit-planes does ``P·M·K·N`` bit-ops.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import warnings
from collections.abc import Callable, Iterator

import numpy as np
import torch
from rich.table import Table

from ..console import table_text
from ..io import write_figure
from ..kernels import active_isa, bgemm_1x1, bgemm_1x2, bgemm_2x2, xor_popcount_rooflines
from ..pack import PackedAPBConv2d
from ..pack.bits import pack_bits
from ..pack.csr import csr_index_dtype, csr_indptr_dtype
from .timing import interleaved_ms, thread_count

RESNET18_SHAPES = [
    (64, 576, 2916), (128, 576, 2916), (128, 1152, 676), (256, 1152, 676),
    (256, 2304, 144), (512, 2304, 144), (512, 4608, 25),
]
"""ResNet-18's 3×3 convolutions as (M, K, N) GEMMs (the shapes of the APB paper)."""

SWEEP_SHAPES = [(s, s, s) for s in (64, 128, 256, 512, 1024, 2048)]
SHAPE_SETS = {"resnet18": RESNET18_SHAPES, "sweep": SWEEP_SHAPES}

Shape = tuple[int, int, int]
Setup = Callable[[int, int, int, np.random.Generator], Callable[[], object]]


# -- peers -------------------------------------------------------------------------------
def _torch_fp32(M, K, N, rng):
    w = torch.from_numpy(rng.standard_normal((M, K), dtype=np.float32))
    x = torch.from_numpy(rng.standard_normal((K, N), dtype=np.float32))
    return lambda: torch.mm(w, x)


@contextlib.contextmanager
def _quantized_engine(name: str) -> Iterator[None]:
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _torch_int8(engine: str) -> Setup:
    def setup(M, K, N, rng):
        if engine not in torch.backends.quantized.supported_engines:
            raise RuntimeError(f"this torch build has no {engine} quantized engine")
        w = torch.from_numpy(rng.standard_normal((M, K), dtype=np.float32))
        x = torch.from_numpy(rng.random((N, K), dtype=np.float32))
        with _quantized_engine(engine), warnings.catch_warnings():
            # The peer is the eager quantized linear users still run; its tensor creation
            # functions warn about a future deprecation, which is not ours to report.
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
            wq = torch.quantize_per_tensor(w, 0.02, 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(wq, None)
            xq = torch.quantize_per_tensor(x, 1 / 255, 0, torch.quint8)

        def run():
            with _quantized_engine(engine):
                return torch.ops.quantized.linear(xq, packed, 0.5, 64)

        return run

    return setup


def _ort_int8(threads: int) -> Setup:
    def setup(M, K, N, rng):
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        # 7-bit weights: MLAS's u8s8 path on AVX2 without VNNI adds byte products pairwise
        # in saturating int16 (vpmaddubsw), so full-range int8 weights give wrong sums;
        # ONNX Runtime's quantizer uses this reduced range for that reason.
        b = rng.integers(-64, 64, size=(K, M), dtype=np.int8)
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "gemm",
            [helper.make_tensor_value_info("A", TensorProto.UINT8, [N, K])],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, [N, M])],
            initializer=[numpy_helper.from_array(b, "B")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle workers sleep instead of spinning: in a process that times other
        # implementations on the same cores right after, spinning ones take the cores
        # from them (two threads on two cores: apb 2.3x slower behind them).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"],
        )
        a = rng.integers(0, 256, size=(N, K), dtype=np.uint8)
        return lambda: session.run(None, {"A": a})

    return setup


# -- apb ---------------------------------------------------------------------------------
def _random_bits(rng, *shape) -> np.ndarray:
    return rng.integers(0, 2**63, size=shape, dtype=np.int64).view(np.uint64)


def _apb_1x1(M, K, N, rng):
    w, x = _random_bits(rng, M, (K + 63) // 64), _random_bits(rng, N, (K + 63) // 64)
    return lambda: bgemm_1x1(w, x, K)


def _apb_1x2(M, K, N, rng):
    w, x = _random_bits(rng, M, (K + 63) // 64), _random_bits(rng, 2, N, (K + 63) // 64)
    return lambda: bgemm_1x2(w, x, K)


def _apb_2x2(M, K, N, rng):
    w, x = _random_bits(rng, 2, M, (K + 63) // 64), _random_bits(rng, 2, N, (K + 63) // 64)
    return lambda: bgemm_2x2(w, x, K)


LAYER_FP_FRACTION = 0.02
"""Share of full-precision weights (CSR nonzeros) in the ``apb_layer`` benchmark."""


def conv_of_gemm(M: int, K: int, N: int) -> dict:
    """The convolution whose im2col GEMM is ``(M, K, N)``: 3x3, stride 1, no padding over
    a ``(√N + 2)²`` input of ``K/9`` channels when ``K`` is a multiple of 9 and ``N`` a
    square (the ResNet-18 shapes: 2916 = 54², from 56x56 inputs), else 1x1 over a
    ``1 x N`` input of ``K`` channels. Keys: ``channels, kernel, height, width``."""
    side = math.isqrt(N)
    if K % 9 == 0 and side * side == N:
        return {"channels": K // 9, "kernel": 3, "height": side + 2, "width": side + 2}
    return {"channels": K, "kernel": 1, "height": 1, "width": N}


def _apb_layer(M, K, N, rng):
    """The whole packed APB convolution of that GEMM shape (``PackedAPBConv2d`` forward,
    as a model runs it): 2-bit activations quantized and bit-packed (im2col fused in),
    the ``1x2`` popcount product, and the CSR correction with 2 % nonzeros computed as a
    direct sparse convolution together with the epilogue."""
    conv = conv_of_gemm(M, K, N)
    fp = rng.random((M, K)) < LAYER_FP_FRACTION
    rows, cols = np.nonzero(fp)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=M))])
    csr = (torch.from_numpy(indptr).to(csr_indptr_dtype(len(cols))),
           torch.from_numpy(cols).to(csr_index_dtype(K)),
           torch.from_numpy(rng.standard_normal(len(cols), dtype=np.float32)))
    layer = PackedAPBConv2d(
        conv["channels"], M, conv["kernel"],
        sign_bits=pack_bits(torch.from_numpy(rng.random((M, K)) < 0.5)),
        alpha=torch.tensor([0.05]), csr=csr, act_bits=2, act_scale=torch.tensor([1.0]),
    )
    x = torch.from_numpy(rng.random((1, conv["channels"], conv["height"], conv["width"]),
                                    dtype=np.float32))

    def run():
        with torch.inference_mode():
            return layer(x)

    return run


def bit_ops(impl: str, shape: Shape) -> int | None:
    """Bit-operations an apb kernel performs on ``shape`` (None for the peers)."""
    M, K, N = shape
    planes = {"apb_1x1": 1, "apb_1x2": 2, "apb_2x2": 4}.get(impl)
    return None if planes is None else planes * M * K * N


def implementations(threads: int) -> dict[str, Setup]:
    return {
        "torch_fp32": _torch_fp32,
        "torch_int8_fbgemm": _torch_int8("fbgemm"),
        "torch_int8_onednn": _torch_int8("onednn"),
        "ort_int8": _ort_int8(threads),
        "apb_1x1": _apb_1x1,
        "apb_1x2": _apb_1x2,
        "apb_2x2": _apb_2x2,
        "apb_layer": _apb_layer,
    }


# -- the harness -------------------------------------------------------------------------
def run_gemm_benchmark(
    shapes: list[Shape], impls: list[str] | None = None, threads: int = 1, rounds: int = 7,
    per_round: int = 3, seed: int = 0, progress: Callable[[str], None] | None = None,
) -> dict:
    """Measure every implementation on every shape; the JSON report as a dict.

    For each shape the implementations run in interleaved rounds
    (:func:`apb.bench.timing.interleaved_ms`, one settling call per turn): a shared
    machine's drift slows them alike instead of whichever ran last. An implementation's
    time for a shape is the median of its per-round medians."""
    available = implementations(threads)
    impls = list(available) if impls is None else impls
    unknown = [i for i in impls if i not in available]
    if unknown:
        raise ValueError(f"unknown implementation(s) {unknown}; choose from {list(available)}")
    if rounds < 1 or per_round < 1 or threads < 1:
        raise ValueError(f"need rounds >= 1, per_round >= 1 and threads >= 1, got {rounds}, "
                         f"{per_round}, {threads}")
    per_shape: dict[str, list[float]] = {impl: [] for impl in impls}
    errors: dict[str, str] = {}
    with thread_count(threads):
        for shape in shapes:
            if progress:
                progress(f"{shape}: {rounds} interleaved rounds")
            fns = {}
            for impl in impls:
                if impl in errors:
                    continue
                try:
                    fns[impl] = available[impl](*shape, np.random.default_rng(seed))
                except (ImportError, RuntimeError) as err:  # a peer missing on this machine
                    errors[impl] = f"{type(err).__name__}: {err}"
            for impl, ms in interleaved_ms(fns, rounds, per_round, settle=1).items():
                per_shape[impl].append(statistics.median(ms))
        rooflines = xor_popcount_rooflines()
    return {
        "isa": active_isa(), "threads": threads, "shapes": [list(s) for s in shapes],
        "rounds": rounds, "per_round": per_round,
        "roofline_gbitops": max(rooflines.values()), "roofline_methods_gbitops": rooflines,
        "results": [
            {"impl": impl, "total_ms": None if impl in errors else sum(per_shape[impl]),
             "per_shape_ms": [] if impl in errors else per_shape[impl],
             **({"error": errors[impl]} if impl in errors else {})}
            for impl in impls
        ],
    }


def report_table(report: dict) -> str:
    """Milliseconds per shape and in total, with ratios to ONNX Runtime int8 and torch
    fp32, and each apb kernel's share of the popcount roofline."""
    rows = {r["impl"]: r for r in report["results"]}
    shapes = [tuple(s) for s in report["shapes"]]
    base = {k: rows[k]["total_ms"] for k in ("ort_int8", "torch_fp32")
            if k in rows and rows[k]["total_ms"]}
    methods = report.get("roofline_methods_gbitops", {})
    best = f" ({max(methods, key=methods.get)})" if methods else ""
    t = Table(title=f"GEMM, {report['threads']} thread(s), isa {report['isa']}, roofline "
                    f"{report['roofline_gbitops']:.0f} G bit-ops/s per core{best}")
    t.add_column("impl")
    for s in shapes:
        t.add_column("x".join(map(str, s)), justify="right")
    for c in ("total ms", "vs ort_int8", "vs torch_fp32", "% roofline"):
        t.add_column(c, justify="right")
    for impl, r in rows.items():
        if r.get("error"):
            t.add_row(impl, *[""] * len(shapes), "n/a", "", "", r["error"][:40])
            continue
        ratios = [f"{base[k] / r['total_ms']:.2f}x" if k in base else "" for k in
                  ("ort_int8", "torch_fp32")]
        ops = [bit_ops(impl, s) for s in shapes]
        share = ""
        if all(o is not None for o in ops):
            rate = sum(ops) / (r["total_ms"] / 1e3) / 1e9 / report["threads"]
            share = f"{100 * rate / report['roofline_gbitops']:.0f}%"
        t.add_row(impl, *[f"{ms:.3f}" for ms in r["per_shape_ms"]], f"{r['total_ms']:.3f}",
                  *ratios, share)
    return table_text(t, width=200)


def plot_report(report: dict, path: str) -> None:
    """Bar chart of total milliseconds per implementation (log scale), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if r["total_ms"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    colors = ["tab:orange" if r["impl"].startswith("apb") else "tab:gray" for r in rows]
    ax.bar([r["impl"] for r in rows], [r["total_ms"] for r in rows], color=colors)
    ax.set_yscale("log")
    ax.set_ylabel("total ms over the shapes (log)")
    ax.set_title(f"GEMM time, {report['threads']} thread(s), {report['isa']}")
    ax.tick_params(axis="x", rotation=30)
    write_figure(fig, path)
