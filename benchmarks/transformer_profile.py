"""Where an encoder forward's time goes: torch.profiler over the implementations of
``apb bench transformer`` (the packed model with int8 inputs, torch fp32, torch dynamic
int8), operators grouped into Linear layers, attention, LayerNorm / GELU, the rest, and
the time outside every operator (Python: the model's own code, the packed layers' checks).

    PYTHONPATH=src python benchmarks/transformer_profile.py --hf DIR --seq 16,128

One thread, batch 1, ``--forwards`` profiled forwards after three warm-up ones; each
table's total is the median wall time of those forwards outside the profiler. Self CPU
time is wall time spent inside each operator, so on a loaded machine it grows with the
load; compare rows of one run.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import apb
from apb.bench.timing import time_ms
from apb.bench.transformer import build_impls, fixed_length_batch
from apb.data.texts import python_docs_sentences
from apb.methods import APBPTQConfig

GROUPS = {
    "Linear layers": ("apb::", "quantized::linear", "aten::addmm", "aten::linear", "aten::mm",
                      "aten::quantize_per_tensor", "aten::_weight_int8pack_mm"),
    "attention": ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product",
                  "aten::bmm", "aten::matmul", "aten::softmax", "aten::_softmax",
                  "aten::baddbmm"),
    "LayerNorm / GELU": ("aten::layer_norm", "aten::native_layer_norm", "aten::gelu"),
}


def group_of(name: str) -> str:
    for group, prefixes in GROUPS.items():
        if name.startswith(prefixes):
            return group
    return "other operators"


def profile_groups(run, forwards: int) -> tuple[dict[str, float], list[tuple[str, int, float]]]:
    """``({group: ms per forward}, [(operator, calls, ms per forward)])``; the group
    ``outside operators`` is the median wall time minus every operator's self time."""
    wall = time_ms(run, forwards, warmup=3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(forwards):
            run()
    groups: dict[str, float] = {}
    ops = []
    for e in prof.key_averages():
        ms = e.self_cpu_time_total / forwards / 1e3
        groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + ms
        ops.append((e.key, e.count // forwards, ms))
    inside = sum(groups.values())
    scale = min(1.0, wall / inside) if inside else 1.0  # the profiler's own overhead
    groups = {g: ms * scale for g, ms in groups.items()}
    groups["outside operators (Python)"] = max(0.0, wall - inside * scale)
    return groups, sorted(ops, key=lambda o: -o[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf", required=True, metavar="DIR")
    parser.add_argument("--seq", default="16,128")
    parser.add_argument("--forwards", type=int, default=20)
    parser.add_argument("--rows", type=int, default=10, help="top operators listed")
    args = parser.parse_args()
    torch.set_num_threads(1)
    apb.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        impls, _, _, local = build_impls(args.hf, 1, APBPTQConfig(bits_per_weight=1.6), 128,
                                         Path(tmp), lambda _: None)
    names = ("apb", "torch_int8_dynamic", "torch_fp32")
    for seq in (int(s) for s in args.seq.split(",")):
        inputs = fixed_length_batch(local.tokenizer, python_docs_sentences()[:200], seq)
        tables = {n: profile_groups(lambda f=impls[n], x=inputs: f(x), args.forwards)
                  for n in names}
        print(f"\nseq {seq}, ms per forward (share of the total)")
        print(f"{'':<28}" + "".join(f"{n:>24}" for n in names))
        rows = list(GROUPS) + ["other operators", "outside operators (Python)"]
        totals = {n: sum(tables[n][0].values()) for n in names}
        for row in rows:
            cells = "".join(f"{tables[n][0].get(row, 0.0):>14.2f} ({tables[n][0].get(row, 0.0) / totals[n]:>5.1%})"
                            for n in names)
            print(f"{row:<28}{cells}")
        print(f"{'total':<28}" + "".join(f"{totals[n]:>24.2f}" for n in names))
        for n in names:
            print(f"\n  top operators, {n}:")
            for key, calls, ms in tables[n][1][:args.rows]:
                print(f"    {key:<44} {calls:>5} {ms:>8.3f} ms")


if __name__ == "__main__":
    main()
