"""Timing helpers shared by the benchmarks: medians of wall time after warm-up, on a
fixed number of threads for torch and apb's kernels alike."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch

from ..kernels import get_num_threads, set_num_threads


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` consecutive runs after
    ``warmup`` untimed ones (so that caches hold what ``fn`` itself uses, as when it runs
    alone)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


@contextlib.contextmanager
def thread_count(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` threads in torch and in apb's kernels."""
    saved = torch.get_num_threads(), get_num_threads()
    torch.set_num_threads(threads)
    set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        set_num_threads(saved[1])
