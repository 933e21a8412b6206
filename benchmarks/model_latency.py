"""The packed zoo models' forward latency at batch 1, one thread: the minimum and the
first quartile of ``--forwards`` consecutive forwards (as ``apb bench model`` runs them,
under inference mode), for comparing two source trees run in alternating processes:

    for i in 1 2 3; do for tree in /tmp/old /tmp/new; do
        PYTHONPATH=$tree python benchmarks/model_latency.py; done; done

Short forwards (tens of µs) are where per-call costs show: the minimum over thousands of
forwards is steady on a busy machine where a median of a few is not.
"""

from __future__ import annotations

import argparse
import time

import torch

import apb
from apb.bench.model_peers import build_apb, input_shape, torch_runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,mlp,resnet20")
    parser.add_argument("--act-bits", type=int, default=2, choices=[1, 2])
    parser.add_argument("--forwards", type=int, default=3000,
                        help="forwards per model (a tenth for resnet18 and vgg_small)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    apb.set_num_threads(1)
    cells = []
    for name in args.models.split(","):
        runner = torch_runner(build_apb(name, args.act_bits)[0],
                              torch.randn(1, *input_shape(name)))
        runner()
        runner()
        forwards = args.forwards // 10 if name in ("resnet18", "vgg_small") else args.forwards
        times = []
        for _ in range(max(forwards, 4)):
            start = time.perf_counter()
            runner()
            times.append(time.perf_counter() - start)
        times.sort()
        cells.append(f"{name} min {times[0] * 1e6:.1f} µs, q1 {times[len(times) // 4] * 1e6:.1f}")
    print(" | ".join(cells))


if __name__ == "__main__":
    main()
