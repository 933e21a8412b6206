"""The AVX-512 lanes kernel (activation columns across the lanes, csrc/bgemm_lanes_avx512.cpp)
against the references, under every instruction set this CPU has: every remainder of its
tiles and both sides of each switch that picks it.

AVX-512 CPUs run it for bgemm_1x1 and bgemm_1x2 with one or two activation planes unless
W > 20 N (W = ceil(K/64) words per row, N activation rows), where the in-place tiles
(N < 16) or the AVX2 table lookup (N >= 16) run instead; bgemm_2x2 with one weight plane
takes it too. Tiles are 16 columns (two planes) or 32 (one plane), a last tile of at most
8 (or 16) columns runs narrower; rows go 4 at a time (8 in the narrow tiles); rows are
packed 4 words at a time (W = 1 has its own path).
"""

from __future__ import annotations

import numpy as np
import pytest

from _isa import require_isa
from apb import kernels
from oracles.bgemm import bgemm_1x1_ref, bgemm_1x2_ref, bgemm_2x2_ref

ISAS = [pytest.param(isa, id=isa) for isa in kernels.ISA_NAMES]

# Columns around every tile edge: 8 (a vector, the narrow tile), 16 (a two-plane tile, the
# one-plane narrow-tile limit), 24, 32 (a one-plane tile), and past one and two tiles.
COLUMNS = [1, 2, 3, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32, 33, 40, 47, 48, 49, 65]
# Rows around the register tiles: 4 and 8 rows and their remainders.
ROWS = [1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13, 17]
# K: one word (K = 16 and 32 are ResNet-20's 1 x 1 shortcuts), 2 to 10 words with and
# without a partial last word (the packer's chunks of 4 words, ResNet-20's 3, 5 and 9).
KS = [1, 16, 63, 64, 65, 127, 144, 200, 256, 257, 288, 320, 576, 600, 640]


def _words(k: int) -> int:
    return -(-k // 64)


def _random(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform words, padding bits included: every kernel must mask them."""
    return rng.integers(0, 2**64 - 1, size=shape, dtype=np.uint64, endpoint=True)


def _check_all(w: np.ndarray, x: np.ndarray, k: int) -> None:
    """bgemm_1x1 (plane 0), bgemm_1x2 with one and two planes, bgemm_2x2 with one weight
    plane, against the references."""
    np.testing.assert_array_equal(kernels.bgemm_1x1(w, x[0], k), bgemm_1x1_ref(w, x[0], k))
    np.testing.assert_array_equal(kernels.bgemm_1x2(w, x[:1], k), bgemm_1x2_ref(w, x[:1], k))
    np.testing.assert_array_equal(kernels.bgemm_1x2(w, x, k), bgemm_1x2_ref(w, x, k))
    np.testing.assert_array_equal(kernels.bgemm_2x2(w[None], x, k), bgemm_2x2_ref(w[None], x, k))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", KS)
def test_every_tile_remainder(isa: str, k: int) -> None:
    require_isa(isa)
    rng = np.random.default_rng(k)
    with kernels.use_isa(isa):
        for n in COLUMNS:
            for m in ROWS:
                _check_all(_random(rng, (m, _words(k))), _random(rng, (2, n, _words(k))), k)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n", [1, 2, 4, 15, 16])
def test_either_side_of_the_in_place_switch(isa: str, n: int) -> None:
    """W = 20 N runs the lanes kernel, W = 20 N + 1 the in-place tiles (N < 16) or the
    table lookup (N = 16), each with a partial last word."""
    require_isa(isa)
    rng = np.random.default_rng(n)
    with kernels.use_isa(isa):
        for words in (20 * n, 20 * n + 1):
            k = 64 * words - 5
            _check_all(_random(rng, (9, words)), _random(rng, (2, n, words)), k)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("m", "k", "n"), [(512, 4608, 16), (100, 1000, 17), (37, 700, 9),
                                           (260, 2304, 40), (64, 576, 300), (16, 144, 1024),
                                           (512, 4608, 49), (256, 2304, 196)])
def test_threads_split_rows_and_tiles(isa: str, threads: int, m: int, k: int, n: int) -> None:
    """Large enough for a thread team: few tiles split their rows among the threads
    (each packs its tile), many tiles are split among them, and tiles that the threads
    cannot share evenly (a 7 x 7 or 14 x 14 image's 49 or 196 columns) are split by
    rows."""
    require_isa(isa)
    rng = np.random.default_rng(m + n)
    w, x = _random(rng, (m, _words(k))), _random(rng, (2, n, _words(k)))
    previous = kernels.get_num_threads()
    kernels.set_num_threads(threads)
    try:
        with kernels.use_isa(isa):
            _check_all(w, x, k)
    finally:
        kernels.set_num_threads(previous)


@pytest.mark.parametrize("isa", ISAS)
def test_all_ones_at_the_largest_counts(isa: str) -> None:
    """Every count at its maximum (all bits set, padding included)."""
    require_isa(isa)
    ones = np.iinfo(np.uint64).max
    with kernels.use_isa(isa):
        for k in (64, 129, 576, 4608):
            w = np.full((9, _words(k)), ones, dtype=np.uint64)
            x = np.full((2, 33, _words(k)), ones, dtype=np.uint64)
            _check_all(w, x, k)
