"""Timing helpers shared by the benchmarks: medians of wall time after warm-up, on a
fixed number of threads for torch and apb's kernels alike."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs after warm-up."""
    return time_interleaved({"fn": fn}, repeats, warmup)["fn"]


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int,
                     warmup: int = 2) -> dict[str, float]:
    """Median wall time in milliseconds of each ``fns[name]()``, over ``repeats`` rounds
    that run every function once each, after ``warmup`` such rounds.

    Interleaving puts every implementation under the same conditions: on a machine whose
    load changes during the run, a slow stretch hits all of them, not only the one being
    timed then.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            elapsed = (time.perf_counter() - t0) * 1e3
            if round_ >= warmup:
                samples[name].append(elapsed)
    return {name: statistics.median(s) for name, s in samples.items()}


@contextlib.contextmanager
def thread_count(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` threads in torch and in apb's kernels."""
    from apb.kernels import get_num_threads, set_num_threads

    saved = torch.get_num_threads(), get_num_threads()
    torch.set_num_threads(threads)
    set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        set_num_threads(saved[1])
