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


def interleaved_ms(fns: dict[str, Callable[[], object]], rounds: int, per_round: int = 3,
                   warmup: int = 2, settle: int = 0) -> dict[str, list[float]]:
    """Per implementation, its median wall time (ms) in each of ``rounds`` rounds; within a
    round every implementation runs ``per_round`` timed times in turn, so a machine whose
    speed drifts slows them alike and ratios are taken round by round (:func:`median_ratio`).

    The order rotates (round ``r`` starts with implementation ``r mod n``), so no
    implementation always follows the same one; ``settle`` untimed calls open each turn,
    so that the timed ones find the caches filled with what that implementation uses, as
    when it runs alone, not with what the one before it left."""
    if rounds < 1 or per_round < 1 or warmup < 0 or settle < 0:
        raise ValueError(f"need rounds >= 1, per_round >= 1, warmup >= 0 and settle >= 0, "
                         f"got {rounds}, {per_round}, {warmup}, {settle}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            for _ in range(settle):
                fn()
            samples = []
            for _ in range(per_round):
                t0 = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t0) * 1e3)
            times[name].append(statistics.median(samples))
    return times


def median_ratio(slow: list[float], fast: list[float]) -> float:
    """The median over rounds of ``slow / fast`` (how many times faster ``fast`` is)."""
    return statistics.median(s / f for s, f in zip(slow, fast, strict=True))


def ratio_spread(slow: list[float], fast: list[float]) -> dict[str, float]:
    """The per-round ratios ``slow[r] / fast[r]`` summarised: ``median`` (as
    :func:`median_ratio`), ``min``, ``max`` and the quartiles ``q1``, ``q3`` (inclusive
    method: with one round all five are that round's ratio)."""
    ratios = sorted(s / f for s, f in zip(slow, fast, strict=True))
    if not ratios:
        raise ValueError("no rounds to take ratios of")
    q1, _, q3 = (statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1
                 else ratios * 3)
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1],
            "q1": q1, "q3": q3}


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
