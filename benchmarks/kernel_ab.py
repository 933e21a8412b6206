"""Two builds of the extension, kernel by kernel, in one process: the binary GEMM
``bgemm_1x2`` on ResNet-20's (batch 1 and 64) and ResNet-18's convolution GEMMs and the
hwc activation packer ``im2col_pack_codes`` on ResNet-20's and ResNet-18's layer inputs
(2-bit codes), one thread. Each call is timed with the current build and with ``--old`` (an earlier
``apb._C``, copied aside before a change) in interleaved rounds; the table gives medians
of the per-round ratios old/new, and checks that both builds return the same words.

    PYTHONPATH=src python benchmarks/kernel_ab.py --old /tmp/old/_C.cpython-311-x86_64-linux-gnu.so

``--isa avx2`` runs both builds on another instruction set; ``--only im2col`` times only
the calls whose name contains the text.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from sparse_conv_shapes import load_extension, time_call

from apb.bench.gemm import RESNET18_SHAPES
from apb.kernels import direct

IM2COL_SHAPES = [  # (batch, channels, height, width, kernel, stride, padding)
    (1, 16, 32, 32, 3, 1, 1), (1, 32, 16, 16, 3, 1, 1), (1, 16, 32, 32, 3, 2, 1),
    (1, 32, 16, 16, 3, 2, 1), (1, 64, 8, 8, 3, 1, 1), (1, 16, 32, 32, 1, 2, 0),
    (1, 32, 16, 16, 1, 2, 0), (1, 64, 56, 56, 3, 1, 1), (1, 256, 14, 14, 3, 1, 1),
    (64, 16, 32, 32, 3, 1, 1), (64, 32, 16, 16, 3, 1, 1), (64, 64, 8, 8, 3, 1, 1),
    (64, 128, 32, 32, 3, 1, 1), (64, 256, 16, 16, 3, 1, 1),  # VGG-Small's, batch 64
]
# ResNet-20's convolutions as GEMMs at batch 1 (M, K = C*kh*kw, N = OH*OW): the 3 x 3
# layers of its three stages (stride 1 and the strided first layer), the 1 x 1 strided
# shortcuts; then the same at batch 64.
RESNET20_SHAPES = [
    (16, 144, 1024), (32, 144, 256), (32, 288, 256), (64, 288, 64), (64, 576, 64),
    (32, 16, 256), (64, 32, 64),
]
RESNET20_BATCH64 = [(m, k, 64 * n) for m, k, n in RESNET20_SHAPES[:5]]


def cases(rng: np.random.Generator):
    for m, k, n in RESNET20_SHAPES + RESNET20_BATCH64 + RESNET18_SHAPES:
        words = (k + 63) // 64
        w = rng.integers(0, 2**64 - 1, size=(m, words), dtype=np.uint64, endpoint=True)
        x = rng.integers(0, 2**64 - 1, size=(2, n, words), dtype=np.uint64, endpoint=True)
        yield f"bgemm_1x2 M{m} K{k} N{n}", direct.bgemm_1x2, (w, x)
    for b, c, h, w_, k, s, p in IM2COL_SHAPES:
        x = (rng.random((b, c, h, w_), dtype=np.float32) * 1.2 - 0.1)
        yield (f"im2col b{b} C{c} {h}x{w_} k{k} s{s}", direct.im2col_pack_codes,
               (x, 1.0, 2, (k, k), (s, s), (p, p), (1, 1), "hwc"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="path of an older apb._C build")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--isa", help="instruction set for both builds (default: the best)")
    parser.add_argument("--only", default="", help="time only the calls whose name has this")
    args = parser.parse_args()
    old = load_extension(args.old)
    new = direct.extension()
    for module in (old, new):
        module.set_num_threads(1)
        if args.isa:
            module.set_isa(args.isa)
    print(f"{'call':32} {'new ms':>8} {'old ms':>8} {'old/new':>7}  same")
    totals: dict[str, list[float]] = {}
    for name, fn, call_args in cases(np.random.default_rng(0)):
        if args.only not in name:
            continue
        runs = {"new": [], "old": [], "ratio": []}
        for _ in range(args.rounds):
            timed = {}
            for label, module in (("new", new), ("old", old)):
                timed[label] = time_call(module, fn, call_args, args.reps)
                runs[label].append(timed[label][0])
            runs["ratio"].append(timed["old"][0] / timed["new"][0])
        same = np.array_equal(np.asarray(timed["new"][1]), np.asarray(timed["old"][1]))
        med = {key: statistics.median(v) for key, v in runs.items()}
        kind = name.split()[0]
        totals.setdefault(kind, [0.0, 0.0])
        totals[kind][0] += med["new"]
        totals[kind][1] += med["old"]
        print(f"{name:32} {med['new']:8.4f} {med['old']:8.4f} {med['ratio']:7.2f}  {same}")
    for kind, (new_ms, old_ms) in totals.items():
        print(f"{kind + ' total':32} {new_ms:8.4f} {old_ms:8.4f} {old_ms / new_ms:7.2f}")


if __name__ == "__main__":
    main()
