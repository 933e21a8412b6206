"""Where a packed model's batch-1 time goes: torch.profiler over the models of
``apb bench model``, the top operators by self CPU time per forward.

    PYTHONPATH=src python benchmarks/model_profile.py --model resnet18 --act-bits 2

Profiles the packed APB model (BatchNorms folded) and, with ``--fp32``, the fp32 peer,
on one thread at batch ``--batch``, ``--forwards`` forwards after three warm-up ones. The packed kernels show
up as ``apb::*`` operators (one per kernel call: activation packing, binary GEMM, sparse
correction with the epilogue); the rest are torch's own (the fp32 stem convolution,
max-pool, ReLU, residual adds, classifier). Self CPU time is wall time spent inside each
operator, so on a loaded machine it grows with the load; compare rows of one run.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

import apb
import apb.models
from apb.bench.model_peers import build_apb, build_fp32, input_shape


def profile_table(model: torch.nn.Module, x: torch.Tensor, forwards: int, rows: int) -> str:
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(forwards):
                model(x)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) / forwards / 1e3
    lines = [f"{'operator':<34} {'calls':>6} {'ms/forward':>11} {'share':>7}"]
    for e in events[:rows]:
        ms = e.self_cpu_time_total / forwards / 1e3
        lines.append(f"{e.key:<34} {e.count // forwards:>6} {ms:>11.2f} {ms / total:>7.1%}")
    lines.append(f"{'total (all operators)':<34} {'':>6} {total:>11.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=apb.models.available())
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--act-bits", type=int, default=2, choices=[1, 2])
    parser.add_argument("--forwards", type=int, default=20)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--fp32", action="store_true", help="also profile the fp32 peer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    apb.set_num_threads(1)
    x = torch.randn(args.batch, *input_shape(args.model),
                    generator=torch.Generator().manual_seed(0))
    packed, _ = build_apb(args.model, args.act_bits)
    print(f"packed APB {args.model}, {args.act_bits}-bit activations:")
    print(profile_table(packed, x, args.forwards, args.rows))
    if args.fp32:
        print(f"\ntorch fp32 {args.model}:")
        print(profile_table(build_fp32(args.model, args.act_bits), x, args.forwards, args.rows))


if __name__ == "__main__":
    main()
