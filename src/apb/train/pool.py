"""Independent jobs (training runs) in separate processes, one thread each."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch


def _one_thread() -> None:
    # One process per core: the small models these jobs train gain nothing from a second
    # thread, and two processes with two threads each would fight over the cores.
    torch.set_num_threads(1)


def run_in_processes(fn: Callable[..., Any], tasks: Iterable[tuple], jobs: int,
                     on_result: Callable[[Any], None]) -> None:
    """Call ``fn(*task)`` for every task, ``jobs`` at a time, and ``on_result`` with each
    result as it arrives (in completion order; callers key results by their task).

    ``jobs <= 1`` runs the tasks in this process, in order. Otherwise the workers are
    spawned, not forked, so no OpenMP or autograd state crosses over; ``fn`` and the tasks
    must be picklable. The first task that raises stops the lot and re-raises here.
    """
    tasks = list(tasks)
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            on_result(fn(*task))
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=ctx,
                             initializer=_one_thread) as pool:
        futures = [pool.submit(fn, *task) for task in tasks]
        try:
            for future in as_completed(futures):
                on_result(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise
