"""Three measurements behind docs/performance.md (model benchmark), each the median wall
time of 200 calls (50 for the models) on one thread:

    PYTHONPATH=src python benchmarks/model_micro.py

1. The cost of calling one kernel through ``torch.library.custom_op`` against an op
   defined with ``torch.library.Library`` (what ``apb.pack.ops`` uses), for the same tiny
   ``bgemm_1x1``: the difference is the per-call dispatch overhead.
2. torch's max-pool (ResNet-18's stem, 3x3/2 over 64x112x112) on an NCHW tensor and on a
   channels-last one.
3. The fp32 ResNet-18 (BatchNorms folded) in NCHW and in channels-last.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from apb import _C
from apb.bench.model_peers import build_fp32
from apb.bench.timing import time_ms


def median_ms(fn, repeats: int = 200, warmup: int = 5) -> float:
    return time_ms(fn, repeats, warmup)


def dispatch() -> None:
    lib = torch.library.Library("apb_micro", "DEF")
    lib.define("b11(Tensor w, Tensor x, int k) -> Tensor")

    def impl(w, x, k):
        return torch.from_numpy(_C.bgemm_1x1(w.numpy(), x.numpy(), k))

    lib.impl("b11", impl, "CPU")

    @torch.library.custom_op("apb_micro::b11c", mutates_args=())
    def b11c(w: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
        return impl(w, x, k)

    w = torch.zeros(4, 1, dtype=torch.uint64)
    x = torch.zeros(4, 1, dtype=torch.uint64)
    print(f"tiny bgemm_1x1: direct {median_ms(lambda: impl(w, x, 64)) * 1e3:.1f} us, "
          f"Library op {median_ms(lambda: torch.ops.apb_micro.b11(w, x, 64)) * 1e3:.1f} us, "
          f"custom_op {median_ms(lambda: torch.ops.apb_micro.b11c(w, x, 64)) * 1e3:.1f} us")


def max_pool() -> None:
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 64, 112, 112),
                                                                  dtype=np.float32))
    xc = x.contiguous(memory_format=torch.channels_last)
    pool = torch.nn.MaxPool2d(3, 2, 1)
    with torch.inference_mode():
        nchw = median_ms(lambda: pool(x))
        cl = median_ms(lambda: pool(xc))
        both = median_ms(lambda: pool(x.contiguous(memory_format=torch.channels_last))
                         .contiguous())
    print(f"max-pool 64x112x112: NCHW {nchw:.2f} ms, channels-last {cl:.2f} ms, "
          f"channels-last with both conversions {both:.2f} ms")


def fp32_layouts() -> None:
    model = build_fp32("resnet18", 2)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 224, 224)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        a = median_ms(lambda: model(x), 50)
        b = median_ms(lambda: cl(xc), 50)
    print(f"fp32 ResNet-18 (BatchNorms folded): NCHW {a:.2f} ms, channels-last {b:.2f} ms")


if __name__ == "__main__":
    torch.set_num_threads(1)
    dispatch()
    max_pool()
    fp32_layouts()
