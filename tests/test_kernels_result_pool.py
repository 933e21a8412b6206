"""The pool that recycles the kernels' large results: a dead result's block serves the next
result that fits, a block in use is never handed out twice, results from recycled blocks
are as correct as fresh ones, and empty_result_cache frees what is kept."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from apb import kernels
from oracles.bgemm import bgemm_1x2_ref

pytestmark = pytest.mark.xdist_group("result_pool")  # process-wide counters


def _operands(rng: np.random.Generator, m: int, n: int, k: int):
    words = -(-k // 64)
    w = rng.integers(0, 2**64 - 1, size=(m, words), dtype=np.uint64, endpoint=True)
    x = rng.integers(0, 2**64 - 1, size=(2, n, words), dtype=np.uint64, endpoint=True)
    return w, x


def test_a_dead_result_is_recycled_and_results_stay_exact() -> None:
    rng = np.random.default_rng(0)
    w, x = _operands(rng, 300, 1000, 200)  # 1.2 MB of int32: pooled
    assert 300 * 1000 * 4 >= kernels.result_memory()["min_bytes"]
    kernels.empty_result_cache()
    first = kernels.bgemm_1x2(w, x, 200)
    address = first.__array_interface__["data"][0]
    np.testing.assert_array_equal(first, bgemm_1x2_ref(w, x, 200))
    before = kernels.result_memory()
    del first
    gc.collect()
    kept = kernels.result_memory()
    assert kept["kept_blocks"] == before["kept_blocks"] + 1
    w2, x2 = _operands(rng, 300, 1000, 200)  # other operands, same result size
    second = kernels.bgemm_1x2(w2, x2, 200)
    after = kernels.result_memory()
    assert after["reused"] == kept["reused"] + 1
    assert second.__array_interface__["data"][0] == address  # the very block
    np.testing.assert_array_equal(second, bgemm_1x2_ref(w2, x2, 200))


def test_live_results_never_share_a_block() -> None:
    rng = np.random.default_rng(1)
    w, x = _operands(rng, 300, 1000, 130)
    kernels.empty_result_cache()
    results = [kernels.bgemm_1x2(w, x, 130) for _ in range(4)]
    addresses = {r.__array_interface__["data"][0] for r in results}
    assert len(addresses) == 4
    for r in results:
        np.testing.assert_array_equal(r, results[0])


def test_small_and_much_smaller_results_are_not_served_from_large_blocks() -> None:
    rng = np.random.default_rng(2)
    kernels.empty_result_cache()
    big = kernels.bgemm_1x2(*_operands(rng, 400, 2000, 64), 64)  # 3.2 MB
    del big
    gc.collect()
    before = kernels.result_memory()
    small = kernels.bgemm_1x2(*_operands(rng, 10, 10, 64), 64)  # below min_bytes
    half = kernels.bgemm_1x2(*_operands(rng, 300, 1000, 64), 64)  # 1.2 MB < 3.2 MB / 2
    assert kernels.result_memory()["reused"] == before["reused"]
    assert small.shape == (10, 10) and half.shape == (300, 1000)


def test_empty_result_cache_frees_the_kept_blocks() -> None:
    rng = np.random.default_rng(3)
    result = kernels.bgemm_1x2(*_operands(rng, 300, 1000, 64), 64)
    del result
    gc.collect()
    assert kernels.result_memory()["kept_bytes"] > 0
    freed = kernels.empty_result_cache()
    assert freed > 0
    memory = kernels.result_memory()
    assert memory["kept_bytes"] == 0 and memory["kept_blocks"] == 0
    assert memory["max_bytes"] >= memory["min_bytes"] > 0
