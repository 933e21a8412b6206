"""1 -> 2 thread speed-up of apb's linear_1xf, in interleaved rounds (docs/performance.md).

    PYTHONPATH=src python benchmarks/linear_threads.py [--rounds 9]

For each shape, one round times the layer on 1 thread, then on 2, each as the mean of
enough calls to last ~50 ms; the speed-up is the median over rounds of the per-round ratio.
"""

import argparse
import statistics
import time

import numpy as np

from apb import kernels
from apb.bench.linear import apb_layer
from apb.kernels import direct

SHAPES = [(n, k, m) for n in (64, 128, 512)
          for k, m in [(768, 3072), (3072, 768), (4096, 4096), (4096, 11008)]]


def mean_ms(fn, calls):
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) * 1e3 / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    print(f"isa {kernels.active_isa()}, kernels {kernels.linear_1xf_kernel(16)}/{kernels.linear_1xf_kernel(8)}")
    for table_bits in (16, 8):
        for n, k, m in SHAPES:
            rng = np.random.default_rng(0)
            layer = apb_layer(k, m, rng)
            x = rng.standard_normal((n, k), dtype=np.float32)
            call = (x, layer["panel"], layer["alpha"], m, layer["indptr"], layer["indices"],
                    layer["values"], layer["bias"], table_bits)

            def fn(call=call):
                return direct.linear_1xf(*call)

            kernels.set_num_threads(1)
            once = mean_ms(fn, 1)
            calls = max(1, int(50 / max(once, 1e-3)))
            ratios, ms = [], {1: [], 2: []}
            for _ in range(args.rounds):
                for threads in (1, 2):
                    kernels.set_num_threads(threads)
                    ms[threads].append(mean_ms(fn, calls))
                ratios.append(ms[1][-1] / ms[2][-1])
            print(f"table_bits {table_bits:2d}  N={n:4d} {k:5d}->{m:5d}: 1 thread "
                  f"{statistics.median(ms[1]):8.3f} ms, 2 threads {statistics.median(ms[2]):8.3f} ms, "
                  f"speed-up {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
