"""How much faster a packed zoo model runs on two threads than on one, timed in
interleaved rounds in one process (the machine's speed drifts between separate runs).

    PYTHONPATH=src python benchmarks/model_threads.py --models resnet18,vgg_small --rounds 9

Each round times ``--per-round`` forwards of the packed APB model (built as ``apb bench
model`` builds it) on one thread and on two, in alternating order, and the same for the
fp32 peer; the table gives median ms and the median over rounds of the per-round speed-up
(one-thread time over two-thread time) with its range. Run it with OMP_WAIT_POLICY=active
for steady two-thread times (docs/performance.md, "Two threads: the worker must not fall
asleep").
"""

from __future__ import annotations

import argparse
import statistics

import torch

import apb
from apb.bench.model_peers import build_apb, build_fp32, input_shape
from apb.bench.timing import time_ms, wait_policy_note


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    apb.set_num_threads(n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,vgg_small")
    parser.add_argument("--act-bits", type=int, default=2, choices=[1, 2])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--per-round", type=int, default=5)
    args = parser.parse_args()
    note = wait_policy_note(2)
    if note:
        print(note)
    print(f"batch {args.batch}, {args.act_bits}-bit activations, {args.rounds} rounds of "
          f"{args.per_round} forwards; speed-up = 1-thread ms / 2-thread ms")
    print(f"{'model':<10} {'impl':<6} {'1 thread ms':>12} {'2 threads ms':>13} "
          f"{'speed-up':>9} {'range':>12}")
    for name in args.models.split(","):
        x = torch.randn(args.batch, *input_shape(name), generator=torch.Generator().manual_seed(0))
        impls = {"apb": build_apb(name, args.act_bits)[0], "fp32": build_fp32(name, args.act_bits)}
        for label, model in impls.items():
            times = {1: [], 2: []}
            with torch.inference_mode():
                for r in range(args.rounds):
                    for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                        set_threads(n)
                        times[n].append(time_ms(lambda m=model, x=x: m(x), args.per_round, 1))
            ratios = [a / b for a, b in zip(times[1], times[2])]
            print(f"{name:<10} {label:<6} {statistics.median(times[1]):>12.3f} "
                  f"{statistics.median(times[2]):>13.3f} {statistics.median(ratios):>8.2f}x "
                  f"{min(ratios):>5.2f}-{max(ratios):.2f}")
    set_threads(1)


if __name__ == "__main__":
    main()
