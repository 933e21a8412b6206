"""The AVX2 GEMM adds the passes of all byte-side planes into one set of 16-bit sums
when every count over the row fits (D * largest table entry * (2^P - 1) <= 65535 with
D = 16 digits per word), and runs a pass and an epilogue per plane otherwise: all-ones
operands (every count at its maximum) at the column counts either side of that switch,
with the activations on the byte side (M much smaller than N), against the references."""

from __future__ import annotations

import numpy as np
import pytest

from _isa import require_isa
from apb import kernels
from oracles.bgemm import bgemm_1x2_ref, bgemm_2x2_ref


def _last_k_that_fits(largest: int, x_planes: int) -> int:
    """Whole words of 16 digits whose counts at `largest` per digit and plane fit."""
    return 64 * (65535 // (largest * (2**x_planes - 1)) // 16)


# (weight planes, activation planes, K): the last K whose sums fit, and a word more (the
# planes then take a pass each). The largest table entry is 4 with one weight plane, 12 with two.
SWITCHES = [
    (1, 2, _last_k_that_fits(4, 2)), (1, 2, _last_k_that_fits(4, 2) + 64),
    (2, 4, _last_k_that_fits(12, 4)), (2, 4, _last_k_that_fits(12, 4) + 64),
    (1, 3, _last_k_that_fits(4, 3)), (1, 3, _last_k_that_fits(4, 3) + 64),
]


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize(("w_planes", "x_planes", "k"), SWITCHES)
def test_plane_sums_either_side_of_the_switch(isa: str, w_planes: int, x_planes: int,
                                              k: int) -> None:
    require_isa(isa)
    words = -(-k // 64)
    ones = np.iinfo(np.uint64).max
    w = np.full((w_planes, 3, words), ones, dtype=np.uint64)
    x = np.full((x_planes, 300, words), ones, dtype=np.uint64)
    x[:, ::7] = np.random.default_rng(k).integers(0, ones, size=(x_planes, 43, words),
                                                  dtype=np.uint64, endpoint=True)
    with kernels.use_isa(isa):
        if w_planes == 1:
            out = kernels.bgemm_1x2(w[0], x, k)
            expected = bgemm_1x2_ref(w[0], x, k)
        else:
            out = kernels.bgemm_2x2(w, x, k)
            expected = bgemm_2x2_ref(w, x, k)
    np.testing.assert_array_equal(out, expected)
