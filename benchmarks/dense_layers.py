"""apb's float32 kernels against torch's on the zoo's full-precision layers: each
candidate :class:`~apb.pack.TunedConv2d` / :class:`~apb.pack.TunedLinear` times, in
interleaved rounds in one process (median µs and apb's speed-up over each torch
algorithm as the median of the per-round ratios, with its range). One thread.

    PYTHONPATH=src python benchmarks/dense_layers.py --rounds 9
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from apb.kernels import direct, set_num_threads

# (name, batch, in channels, side, out channels, kernel, padding): the zoo's stride-1 stems.
CONVS = [
    ("lenet5 conv1", 1, 1, 28, 6, 5, 2), ("lenet5 conv1", 64, 1, 28, 6, 5, 2),
    ("resnet20 conv1", 1, 3, 32, 16, 3, 1), ("resnet20 conv1", 64, 3, 32, 16, 3, 1),
    ("vgg_small conv1", 1, 3, 32, 128, 3, 1), ("vgg_small conv1", 64, 3, 32, 128, 3, 1),
]
# (name, rows, in features, out features): the zoo's full-precision Linear layers.
LINEARS = [
    ("mlp fc1", 1, 784, 256), ("mlp fc1", 64, 784, 256), ("mlp classifier", 1, 256, 10),
    ("lenet5 fc3", 1, 84, 10), ("resnet18 fc", 1, 512, 1000), ("resnet18 fc", 64, 512, 1000),
]


def interleaved(candidates: dict, rounds: int, budget_s: float = 0.03) -> dict[str, list[float]]:
    """Per-round median µs of each candidate, the candidates in a rotated order."""
    for run in candidates.values():
        run()
    start = time.perf_counter()
    next(iter(candidates.values()))()
    calls = max(3, int(budget_s / max(time.perf_counter() - start, 1e-7)))
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run, samples = candidates[name], []
            for _ in range(calls):
                t0 = time.perf_counter()
                run()
                samples.append(time.perf_counter() - t0)
            times[name].append(float(np.median(samples)) * 1e6)
    return times


def report(label: str, times: dict[str, list[float]]) -> None:
    apb = np.array(times["apb"])
    parts = [f"{label:34s} apb {np.median(apb):9.1f} µs"]
    for name, t in times.items():
        if name == "apb":
            continue
        ratios = np.array(t) / apb
        parts.append(f"{name} {np.median(t):9.1f} µs ({np.median(ratios):.2f}x, "
                     f"{ratios.min():.2f}-{ratios.max():.2f})")
    print("   ".join(parts), flush=True)


def conv_candidates(x: np.ndarray, w: np.ndarray, bias: np.ndarray, k: int, p: int) -> dict:
    xt, wt, bt = (torch.from_numpy(a) for a in (x, w, bias))
    return {
        "apb": lambda: direct.dense_conv2d(x, w, bias, (p, p)),
        "onednn": lambda: F.conv2d(xt, wt, bt, padding=p),
        "im2col": lambda: torch.ops.aten._slow_conv2d_forward(xt, wt, (k, k), bt, (1, 1),
                                                              (p, p)),
    }


def linear_candidates(x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> dict:
    packed = direct.dense_linear_pack(w)
    xt, wt, bt = (torch.from_numpy(a) for a in (x, w, bias))
    return {"apb": lambda: direct.dense_linear(x, packed, w.shape[0], bias),
            "F.linear": lambda: F.linear(xt, wt, bt)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    set_num_threads(1)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for name, b, c, side, co, k, p in CONVS:
            x = rng.standard_normal((b, c, side, side), dtype=np.float32)
            w = rng.standard_normal((co, c, k, k), dtype=np.float32)
            bias = rng.standard_normal(co, dtype=np.float32)
            report(f"{name} batch {b}", interleaved(conv_candidates(x, w, bias, k, p),
                                                    args.rounds))
        for name, m, k, n in LINEARS:
            x = rng.standard_normal((m, k), dtype=np.float32)
            w = rng.standard_normal((n, k), dtype=np.float32)
            bias = rng.standard_normal(n, dtype=np.float32)
            report(f"{name} batch {m}", interleaved(linear_candidates(x, w, bias), args.rounds))


if __name__ == "__main__":
    main()
