"""How much faster a packed zoo model runs on two threads than on one, timed in
interleaved rounds in one process (the machine's speed drifts between separate runs).

    PYTHONPATH=src python benchmarks/model_threads.py --models resnet18,vgg_small --rounds 9
    PYTHONPATH=src python benchmarks/model_threads.py --models vgg_small --rounds 40 \\
        --show-rounds --handoff build/libcore_handoff.so

Each round times ``--per-round`` forwards of the packed APB model (built as ``apb bench
model`` builds it) and of its fp32 peer, each on one thread and on two, in alternating
order; the table gives median ms and the median over rounds of the per-round speed-up
(one-thread time over two-thread time) with its range. ``--show-rounds`` prints every
round's two speed-ups (on a shared machine the two-thread gain of the packed model,
made of many short parallel regions, comes and goes in runs of rounds: docs/
performance.md, "Two threads"); ``--handoff`` adds the round trip of a cache line
between CPUs 0 and 1 measured just before the round, by benchmarks/core_handoff.cpp
(its header says how to build it).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time

import torch

import apb
from apb.bench.model_peers import build_apb, build_fp32, input_shape
from apb.bench.timing import time_ms


def set_threads(n: int) -> None:
    torch.set_num_threads(n)
    apb.set_num_threads(n)


def handoff_probe(path: str | None):
    """``() -> ns``: the mean CPU 0 <-> CPU 1 round trip over 20,000 hand-offs, after the
    idle OpenMP worker has had time to stop spinning; or None without a library."""
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    lib.apb_core_handoff_ns.restype = ctypes.c_double
    lib.apb_core_handoff_ns.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]

    def probe() -> float:
        time.sleep(0.02)
        return lib.apb_core_handoff_ns(20000, 0, 1)
    return probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,vgg_small")
    parser.add_argument("--act-bits", type=int, default=2, choices=[1, 2])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--show-rounds", action="store_true",
                        help="print every round's speed-ups")
    parser.add_argument("--handoff", metavar="LIB",
                        help="build/libcore_handoff.so: also print the CPU 0 <-> 1 round trip")
    args = parser.parse_args()
    probe = handoff_probe(args.handoff)
    print(f"batch {args.batch}, {args.act_bits}-bit activations, {args.rounds} rounds of "
          f"{args.per_round} forwards; speed-up = 1-thread ms / 2-thread ms")
    summary = [f"{'model':<10} {'impl':<6} {'1 thread ms':>12} {'2 threads ms':>13} "
               f"{'speed-up':>9} {'range':>12}"]
    for name in args.models.split(","):
        x = torch.randn(args.batch, *input_shape(name), generator=torch.Generator().manual_seed(0))
        impls = {"apb": build_apb(name, args.act_bits)[0], "fp32": build_fp32(name, args.act_bits)}
        times = {(label, n): [] for label in impls for n in (1, 2)}
        start = time.perf_counter()
        with torch.inference_mode():
            for r in range(args.rounds):
                handoff = probe() if probe is not None else None
                for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                    set_threads(n)
                    for label, model in impls.items():
                        times[label, n].append(
                            time_ms(lambda m=model, x=x: m(x), args.per_round, 1))
                if args.show_rounds:
                    gains = "  ".join(f"{label} {times[label, 1][-1] / times[label, 2][-1]:.2f}x"
                                      for label in impls)
                    extra = f"  round trip {handoff:.0f} ns" if handoff is not None else ""
                    print(f"{name} round {r:>3} at {time.perf_counter() - start:6.1f} s: "
                          f"{gains}{extra}")
        for label in impls:
            ratios = [a / b for a, b in zip(times[label, 1], times[label, 2])]
            summary.append(f"{name:<10} {label:<6} {statistics.median(times[label, 1]):>12.3f} "
                           f"{statistics.median(times[label, 2]):>13.3f} "
                           f"{statistics.median(ratios):>8.2f}x "
                           f"{min(ratios):>5.2f}-{max(ratios):.2f}")
    set_threads(1)
    print("\n".join(summary))


if __name__ == "__main__":
    main()
