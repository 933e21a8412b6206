"""Which instruction set and how many threads the kernels use.

The extension holds one implementation per instruction set and picks one at run time:
the best the CPU supports, unless the ``APB_ISA`` environment variable (read once, at
the first kernel call) or :func:`set_isa` chooses another. Asking for an instruction
set the CPU lacks raises an error; it never falls back silently.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator

from apb.kernels._ext import extension

ISA_NAMES = ("scalar", "avx2", "avx512")
"""Every instruction set apb has kernels for, least to most capable."""
MAX_THREADS = 1 << 16
"""The most threads :func:`set_num_threads` accepts."""


def active_isa() -> str:
    """The instruction set the kernels run with: 'scalar', 'avx2' or 'avx512'.

    Raises:
        ValueError: ``APB_ISA`` names no instruction set.
        RuntimeError: ``APB_ISA`` names one this CPU lacks.
    """
    return extension().active_isa()


def available_isas() -> list[str]:
    """The instruction sets this CPU (and this build) can run, 'scalar' first."""
    return list(extension().available_isas())


def set_isa(name: str) -> None:
    """Run every kernel with instruction set ``name`` from now on (process-wide).

    Raises:
        ValueError: ``name`` is not one of :data:`ISA_NAMES`.
        RuntimeError: this CPU lacks it; :func:`available_isas` lists what it has.
    """
    if not isinstance(name, str) or name not in ISA_NAMES:
        raise ValueError(f"set_isa: expected one of {', '.join(ISA_NAMES)}, got {name!r}")
    extension().set_isa(name)


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Run the kernels with ``name`` inside a ``with`` block, then restore the previous
    choice (for tests and benchmarks that compare instruction sets)."""
    previous = active_isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def set_num_threads(n: int) -> None:
    """Let apb's kernels use ``1 <= n <= MAX_THREADS`` threads (process-wide; torch's own
    thread pool is not touched). Without OpenMP in the build the kernels stay
    single-threaded."""
    if isinstance(n, bool):
        raise TypeError("set_num_threads: n must be an int >= 1, got bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads: n must be an int >= 1, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    if n > MAX_THREADS:
        raise ValueError(f"set_num_threads: n must be at most {MAX_THREADS} (a thread count), "
                         f"got {n}")
    extension().set_num_threads(n)


def get_num_threads() -> int:
    """Threads apb's kernels may use (1 when built without OpenMP)."""
    return extension().get_num_threads()


def result_memory() -> dict:
    """The counters of the pool that recycles the kernels' large results (blocks of at
    least ``min_bytes``, 1 MiB; up to ``max_bytes``, 512 MiB, kept): ``kept_bytes`` and
    ``kept_blocks`` held for reuse now, ``reused`` results served from kept blocks and
    ``allocated`` large results that were not, since the process started. Recycling spares
    a batch-64 forward the page faults of fetching its tens of MB per layer from the
    kernel again (docs/performance.md, "Batch 64 and the allocator")."""
    stats = dict(extension().result_pool_stats())
    stats["min_bytes"] = int(extension().result_pool_min_bytes)
    stats["max_bytes"] = int(extension().result_pool_max_bytes)
    return stats


def empty_result_cache() -> int:
    """Free the large result blocks kept for reuse (:func:`result_memory`); the bytes
    freed. Arrays still in use are not affected: their blocks return to the pool, or are
    freed, when they die."""
    return int(extension().empty_result_pool())
