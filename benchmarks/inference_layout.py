"""What ``apb.pack.optimize_for_inference_`` changes outside the packed layers, timed on
the shapes of the zoo's stems and pools, one thread: a full-precision stem convolution
with NCHW weights against channels-last weights, and max-pooling by torch's NCHW kernel,
channels-last, and :class:`apb.pack.FastMaxPool2d` (strided maxima on NCHW).

    PYTHONPATH=src python benchmarks/inference_layout.py

Medians of interleaved rounds (this machine's speed drifts), ms per call.
"""

from __future__ import annotations

import statistics
import time
from functools import partial

import torch
import torch.nn.functional as F

from apb.pack import FastMaxPool2d

CONVS = [  # (batch, in, out, kernel, stride, side): ResNet-18, VGG-small / ResNet-20 stems
    (1, 3, 64, 7, 2, 224), (64, 3, 64, 7, 2, 224), (1, 3, 128, 3, 1, 32), (1, 3, 16, 3, 1, 32),
]
POOLS = [  # (batch, channels, side, kernel, stride, padding)
    (1, 64, 112, 3, 2, 1), (64, 64, 112, 3, 2, 1), (1, 128, 32, 2, 2, 0),
    (1, 256, 16, 2, 2, 0), (64, 128, 32, 2, 2, 0),
]
CL = torch.channels_last


def median_ms(fns: dict, rounds: int = 7, reps: int = 5) -> dict:
    times: dict = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - t0) / reps * 1e3)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        print("stem convolution           NCHW ms  channels-last weights ms")
        for b, cin, cout, k, s, side in CONVS:
            x = torch.randn(b, cin, side, side, generator=g)
            w = torch.randn(cout, cin, k, k, generator=g)
            w_cl = w.contiguous(memory_format=CL)
            ms = median_ms({"nchw": partial(F.conv2d, x, w, None, s, k // 2),
                            "cl": partial(F.conv2d, x, w_cl, None, s, k // 2)},
                           rounds=3 if b > 1 else 7, reps=1 if b > 1 else 5)
            print(f"b{b} {cin}->{cout} {k}x{k}/{s} {side}px {ms['nchw']:>12.3f} {ms['cl']:>12.3f}")
        print("max-pool                   NCHW ms  channels-last ms  FastMaxPool2d ms")
        for b, c, side, k, s, p in POOLS:
            x = torch.randn(b, c, side, side, generator=g)
            x_cl = x.contiguous(memory_format=CL)
            fast = FastMaxPool2d(k, s, p)
            assert torch.equal(fast(x), F.max_pool2d(x, k, s, p))
            ms = median_ms({"nchw": partial(F.max_pool2d, x, k, s, p),
                            "cl": partial(F.max_pool2d, x_cl, k, s, p),
                            "fast": partial(fast, x)},
                           rounds=3 if b > 1 else 7, reps=1 if b > 1 else 5)
            print(f"b{b} {c}x{side}x{side} k{k} s{s} {ms['nchw']:>11.3f} {ms['cl']:>12.3f} "
                  f"{ms['fast']:>12.3f}")


if __name__ == "__main__":
    main()
