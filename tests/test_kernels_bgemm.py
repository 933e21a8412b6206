"""pack_planes and the bitwise GEMMs (bgemm_1x1, bgemm_1x2, bgemm_2x2) against the numpy
references, under every instruction set this CPU has, plus the argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _isa import require_isa
from apb import kernels
from oracles.bgemm import (
    bgemm_1x1_ref,
    bgemm_1x2_ref,
    bgemm_2x2_ref,
    pack_planes_ref,
)
from oracles.sign_packing import pack_signs_ref

# Column counts around every boundary the kernels have: a word (64), 4 words (the AVX2
# packers' transposes), an AVX-512 chunk (8 words), and the digits (4 columns) after
# which the AVX2 byte counters are widened: 21 with two weight planes (84 columns), 63
# otherwise (252).
EDGE_K = [0, 1, 63, 64, 65, 83, 84, 85, 127, 128, 129, 251, 252, 253, 256, 257, 320, 511,
          512, 513, 576, 7937]
# Rows around the register tiles and their remainders: AVX2 reads the byte side in
# groups of 32 rows, 8 groups to a tile, the table side in chunks of 16 rows and (when
# transposed) stores blocks of 8; AVX-512 tiles are 4 x 4, and AVX-512 CPUs run the
# AVX2 kernel from 16 activation rows on (15 and 16 straddle that switch).
EDGE_ROWS = [0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 15, 16, 17, 31, 33]

ISAS = [pytest.param(isa, id=isa) for isa in kernels.ISA_NAMES]


def _require(isa: str) -> None:
    require_isa(isa)  # a skip, or a failure under APB_REQUIRE_ISA


def _words(k: int) -> int:
    return -(-k // 64)


def _random_words(rng: np.random.Generator, shape: tuple[int, ...], style: str) -> np.ndarray:
    """uint64 words, padding bits included (never cleared): uniform, dense or sparse bits,
    or all ones (every byte count at its maximum, the AVX2 accumulator's worst case)."""
    if style == "ones":
        return np.full(shape, np.iinfo(np.uint64).max, dtype=np.uint64)
    words = rng.integers(0, 2**64 - 1, size=shape, dtype=np.uint64, endpoint=True)
    if style == "dense":
        words |= rng.integers(0, 2**64 - 1, size=shape, dtype=np.uint64, endpoint=True)
    elif style == "sparse":
        words &= rng.integers(0, 2**64 - 1, size=shape, dtype=np.uint64, endpoint=True)
    return words


@st.composite
def gemm_cases(draw: st.DrawFn) -> dict:
    return {
        "M": draw(st.sampled_from(EDGE_ROWS)),
        "N": draw(st.sampled_from(EDGE_ROWS)),
        "k": draw(st.one_of(st.integers(0, 300), st.sampled_from(EDGE_K))),
        "rng": np.random.default_rng(draw(st.integers(0, 2**32 - 1))),
        "style": draw(st.sampled_from(["uniform", "dense", "sparse", "ones"])),
    }


def _check(out: object, expected: np.ndarray) -> None:
    assert isinstance(out, np.ndarray) and out.dtype == np.int32
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


# ---- results against the references ------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=120, deadline=None)
@given(case=gemm_cases())
def test_bgemm_1x1_matches_reference(isa: str, case: dict) -> None:
    _require(isa)
    M, N, k, rng = case["M"], case["N"], case["k"], case["rng"]
    # Padding bits past k are random too: bgemm_1x1 masks them away.
    w = _random_words(rng, (M, _words(k)), case["style"])
    x = _random_words(rng, (N, _words(k)), "uniform")
    with kernels.use_isa(isa):
        out = kernels.bgemm_1x1(w, x, k)
    _check(out, bgemm_1x1_ref(w, x, k))


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=120, deadline=None)
@given(case=gemm_cases(), planes=st.integers(1, 4), pass_k=st.booleans())
def test_bgemm_1x2_matches_reference(isa: str, case: dict, planes: int, pass_k: bool) -> None:
    _require(isa)
    M, N, k, rng = case["M"], case["N"], case["k"], case["rng"]
    w = _random_words(rng, (M, _words(k)), "uniform")
    x = _random_words(rng, (planes, N, _words(k)), case["style"])
    k_arg = k if pass_k else None  # None: every bit of every word counts
    with kernels.use_isa(isa):
        out = kernels.bgemm_1x2(w, x, k_arg)
    _check(out, bgemm_1x2_ref(w, x, k_arg))


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=120, deadline=None)
@given(
    case=gemm_cases(),
    w_planes=st.integers(1, 4),
    x_planes=st.integers(1, 4),
    pass_k=st.booleans(),
)
def test_bgemm_2x2_matches_reference(
    isa: str, case: dict, w_planes: int, x_planes: int, pass_k: bool
) -> None:
    _require(isa)
    M, N, k, rng = case["M"], case["N"], case["k"], case["rng"]
    w = _random_words(rng, (w_planes, M, _words(k)), case["style"])
    x = _random_words(rng, (x_planes, N, _words(k)), "uniform")
    k_arg = k if pass_k else None
    with kernels.use_isa(isa):
        out = kernels.bgemm_2x2(w, x, k_arg)
    _check(out, bgemm_2x2_ref(w, x, k_arg))


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=120, deadline=None)
@given(
    rows=st.sampled_from(EDGE_ROWS),
    k=st.one_of(st.integers(0, 300), st.sampled_from(EDGE_K)),
    bits=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_planes_matches_reference(isa: str, rows: int, k: int, bits: int, seed: int) -> None:
    _require(isa)
    codes = np.random.default_rng(seed).integers(0, 2**bits, size=(rows, k), dtype=np.uint8)
    with kernels.use_isa(isa):
        packed = kernels.pack_planes(codes, bits)
    assert packed.dtype == np.uint64 and packed.shape == (bits, rows, _words(k))
    np.testing.assert_array_equal(packed, pack_planes_ref(codes, bits))
    if k % 64:
        assert not np.any(packed[..., -1] >> np.uint64(k % 64)), "padding bits must be 0"


# ---- the kernels compute the layer's dot products ---------------------------------


@pytest.mark.parametrize("isa", ISAS)
def test_packed_products_equal_float_matmuls(isa: str) -> None:
    """From floats and codes through the packers to the kernels, against float matmuls of
    the signs (sign(0) = +1) and codes they stand for."""
    _require(isa)
    rng = np.random.default_rng(3)
    M, N, K = 11, 6, 203
    weights = rng.standard_normal((M, K)).astype(np.float32)
    inputs = rng.standard_normal((N, K)).astype(np.float32)
    s_w = np.where(weights < 0, -1.0, 1.0)
    s_x = np.where(inputs < 0, -1.0, 1.0)
    codes_x = rng.integers(0, 4, size=(N, K), dtype=np.uint8)
    codes_w = rng.integers(0, 8, size=(M, K), dtype=np.uint8)
    with kernels.use_isa(isa):
        w = kernels.pack_signs(weights)
        planes_x = kernels.pack_planes(codes_x, 2)
        np.testing.assert_array_equal(
            kernels.bgemm_1x1(w, kernels.pack_signs(inputs), K), s_w @ s_x.T
        )
        np.testing.assert_array_equal(kernels.bgemm_1x2(w, planes_x), s_w @ codes_x.T.astype(float))
        np.testing.assert_array_equal(
            kernels.bgemm_2x2(kernels.pack_planes(codes_w, 3), planes_x),
            codes_w.astype(np.int64) @ codes_x.T.astype(np.int64),
        )


def test_hand_computed() -> None:
    # k = 3 columns: w = (+1, -1, -1) is bits 0b110, x = (-1, -1, +1) is 0b011.
    w = np.array([[0b110]], dtype=np.uint64)
    x = np.array([[0b011]], dtype=np.uint64)
    assert kernels.bgemm_1x1(w, x, 3)[0, 0] == -1 + 1 - 1
    # codes x = (3, 1, 2): plane 0 = 0b011, plane 1 = 0b101.
    planes = np.array([[[0b011]], [[0b101]]], dtype=np.uint64)
    assert kernels.bgemm_1x2(w, planes)[0, 0] == 3 - 1 - 2
    # codes w = (1, 0, 1): one plane 0b101.
    assert kernels.bgemm_2x2(np.array([[[0b101]]], dtype=np.uint64), planes)[0, 0] == 3 + 0 + 2


# ---- padding bits: masked by k, never read past a row ------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [1, 63, 65, 200, 256 + 7, 512 + 63])
def test_nonzero_padding_is_masked(isa: str, k: int) -> None:
    """Operands with every padding bit set give exactly the results of clean ones."""
    _require(isa)
    rng = np.random.default_rng(k)
    words = _words(k)
    pad = ~np.uint64(0) << np.uint64(k % 64) if k % 64 else np.uint64(0)
    w = rng.integers(0, 2, size=(3, 6, words * 64), dtype=np.uint8)
    x = rng.integers(0, 2, size=(3, 5, words * 64), dtype=np.uint8)
    w[..., k:] = 0
    x[..., k:] = 0
    w_clean = np.stack([pack_signs_ref(-w[q].astype(np.float32)) for q in range(3)])
    x_clean = np.stack([pack_signs_ref(-x[p].astype(np.float32)) for p in range(3)])
    w_dirty, x_dirty = w_clean.copy(), x_clean.copy()
    w_dirty[..., -1] |= pad
    x_dirty[..., -1] |= pad
    with kernels.use_isa(isa):
        np.testing.assert_array_equal(
            kernels.bgemm_1x1(w_dirty[0], x_dirty[0], k),
            kernels.bgemm_1x1(w_clean[0], x_clean[0], k),
        )
        np.testing.assert_array_equal(
            kernels.bgemm_1x2(w_dirty[0], x_dirty, k), kernels.bgemm_1x2(w_clean[0], x_clean)
        )
        np.testing.assert_array_equal(
            kernels.bgemm_2x2(w_dirty, x_dirty, k), kernels.bgemm_2x2(w_clean, x_clean)
        )
        # Without k the padding of w still cannot matter to bgemm_1x2 (zero codes add 0).
        np.testing.assert_array_equal(
            kernels.bgemm_1x2(w_dirty[0], x_clean), kernels.bgemm_1x2(w_clean[0], x_clean)
        )
    np.testing.assert_array_equal(
        kernels.bgemm_1x1(w_clean[0], x_clean[0], k), bgemm_1x1_ref(w_clean[0], x_clean[0], k)
    )


@pytest.mark.parametrize("isa", ISAS)
def test_rows_at_the_end_of_a_buffer(isa: str) -> None:
    """Operands that are views ending exactly at the end of their allocation (the last
    row of a bigger array): any over-read would hit whatever lies beyond."""
    _require(isa)
    rng = np.random.default_rng(5)
    k = 64 * 9 + 5
    base_w = _random_words(rng, (40, _words(k)), "uniform")
    base_x = _random_words(rng, (2, 40, _words(k)), "uniform")
    w, x = base_w[-3:], base_x[:, -5:]
    x = np.ascontiguousarray(x)
    with kernels.use_isa(isa):
        _check(kernels.bgemm_1x1(w, x[0], k), bgemm_1x1_ref(w, x[0], k))
        _check(kernels.bgemm_1x2(w, x, k), bgemm_1x2_ref(w, x, k))


# ---- blocking, threads, long rows --------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("style", ["uniform", "ones"])
def test_large_blocked_threaded(isa: str, threads: int, style: str) -> None:
    """Enough rows for several cache blocks and a thread team; long rows (past the AVX2
    flush of byte counts) with all-ones operands at the accumulators' worst case."""
    _require(isa)
    rng = np.random.default_rng(11)
    M, N, k = 70, 53, 64 * 130 + 17
    w = _random_words(rng, (2, M, _words(k)), style)
    x = _random_words(rng, (2, N, _words(k)), "uniform" if style == "uniform" else "ones")
    previous = kernels.get_num_threads()
    kernels.set_num_threads(threads)
    try:
        with kernels.use_isa(isa):
            out_1x1 = kernels.bgemm_1x1(w[0], x[0], k)
            out_1x2 = kernels.bgemm_1x2(w[0], x, k)
            out_2x2 = kernels.bgemm_2x2(w, x, k)
    finally:
        kernels.set_num_threads(previous)
    _check(out_1x1, bgemm_1x1_ref(w[0], x[0], k))
    _check(out_1x2, bgemm_1x2_ref(w[0], x, k))
    _check(out_2x2, bgemm_2x2_ref(w, x, k))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("M", "N", "k"), [(300, 20, 200), (20, 300, 200), (600, 9, 70)])
def test_many_tiles_both_orientations(isa: str, threads: int, M: int, N: int, k: int) -> None:
    """Shapes whose AVX2 kernels take either operand as the table side (small N puts the
    weights on the byte side), with several column tiles and a partial last one."""
    _require(isa)
    rng = np.random.default_rng(M + N)
    w = _random_words(rng, (2, M, _words(k)), "uniform")
    x = _random_words(rng, (3, N, _words(k)), "uniform")
    previous = kernels.get_num_threads()
    kernels.set_num_threads(threads)
    try:
        with kernels.use_isa(isa):
            out = kernels.bgemm_1x1(w[0], x[0], k), kernels.bgemm_1x2(w[0], x[:2], k)
            out_2x2 = kernels.bgemm_2x2(w, x, k)
    finally:
        kernels.set_num_threads(previous)
    _check(out[0], bgemm_1x1_ref(w[0], x[0], k))
    _check(out[1], bgemm_1x2_ref(w[0], x[:2], k))
    _check(out_2x2, bgemm_2x2_ref(w, x, k))


@pytest.mark.parametrize("isa", ISAS)
def test_rows_longer_than_one_pass(isa: str) -> None:
    """Rows whose counts the AVX2 kernels split into several passes over K (their 16-bit
    sums hold 65535 / 4 digits of one table-side plane, 65535 / 12 of two)."""
    _require(isa)
    rng = np.random.default_rng(17)
    for k, planes in [(65536 + 300, 1), (22000, 2)]:
        w = _random_words(rng, (planes, 3, _words(k)), "dense")
        x = _random_words(rng, (planes, 35, _words(k)), "dense")
        with kernels.use_isa(isa):
            if planes == 1:
                _check(kernels.bgemm_1x1(w[0], x[0], k), bgemm_1x1_ref(w[0], x[0], k))
            else:
                _check(kernels.bgemm_2x2(w, x, k), bgemm_2x2_ref(w, x, k))
                _check(kernels.bgemm_2x2(x, w, k), bgemm_2x2_ref(x, w, k))


@pytest.mark.parametrize("isa", ISAS)
def test_resnet_shape_against_scalar(isa: str) -> None:
    """A ResNet-18 GEMM shape, (M, K, N) = (256, 2304, 144), every ISA equal to scalar."""
    _require(isa)
    rng = np.random.default_rng(2)
    k = 2304
    w = _random_words(rng, (256, _words(k)), "uniform")
    x = _random_words(rng, (2, 144, _words(k)), "uniform")
    with kernels.use_isa("scalar"):
        expected = kernels.bgemm_1x2(w, x, k), kernels.bgemm_1x1(w, x[0], k)
    with kernels.use_isa(isa):
        np.testing.assert_array_equal(kernels.bgemm_1x2(w, x, k), expected[0])
        np.testing.assert_array_equal(kernels.bgemm_1x1(w, x[0], k), expected[1])
    np.testing.assert_array_equal(expected[1], bgemm_1x1_ref(w, x[0], k))


@pytest.mark.parametrize("isa", ISAS)
def test_zero_sized(isa: str) -> None:
    _require(isa)
    with kernels.use_isa(isa):
        for M, N, k in [(0, 3, 70), (3, 0, 70), (0, 0, 0), (2, 3, 0)]:
            w = np.zeros((M, _words(k)), dtype=np.uint64)
            x = np.zeros((N, _words(k)), dtype=np.uint64)
            _check(kernels.bgemm_1x1(w, x, k), np.zeros((M, N), dtype=np.int64))
            _check(kernels.bgemm_1x2(w, x[None], k), np.zeros((M, N), dtype=np.int64))
            _check(kernels.bgemm_2x2(w[None], x[None], k), np.zeros((M, N), dtype=np.int64))
        packed = kernels.pack_planes(np.zeros((0, 5), dtype=np.uint8), 2)
        assert packed.shape == (2, 0, 1)
        assert kernels.pack_planes(np.zeros((3, 0), dtype=np.uint8), 3).shape == (3, 3, 0)


def test_extreme_values_fit_int32() -> None:
    # All-ones codes with 8 x 8 planes: out = 255 * 255 * K, the largest K allowed.
    k = (2**31 - 1) // (255 * 255)
    w = np.full((8, 1, _words(k)), np.iinfo(np.uint64).max, dtype=np.uint64)
    assert int(kernels.bgemm_2x2(w, w, k)[0, 0]) == 255 * 255 * k
    signs = np.full((1, _words(k)), np.iinfo(np.uint64).max, dtype=np.uint64)
    assert int(kernels.bgemm_1x2(signs, w, k)[0, 0]) == -255 * k


# ---- torch in, torch out ------------------------------------------------------------


def test_torch_in_torch_out() -> None:
    rng = np.random.default_rng(8)
    codes = torch.from_numpy(rng.integers(0, 4, size=(7, 150), dtype=np.uint8))
    planes = kernels.pack_planes(codes, 2)
    assert isinstance(planes, torch.Tensor) and planes.dtype == torch.uint64
    np.testing.assert_array_equal(planes.numpy(), pack_planes_ref(codes.numpy(), 2))
    w = kernels.pack_signs(torch.randn(5, 150))
    out = kernels.bgemm_1x2(w, planes)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int32
    np.testing.assert_array_equal(out.numpy(), bgemm_1x2_ref(w.numpy(), planes.numpy()))
    out = kernels.bgemm_1x1(w, planes[0], 150)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), bgemm_1x1_ref(w.numpy(), planes[0].numpy(), 150))
    out = kernels.bgemm_2x2(planes, planes)
    np.testing.assert_array_equal(out.numpy(), bgemm_2x2_ref(planes.numpy(), planes.numpy()))
    # numpy weights with torch activations give torch, like the activations.
    assert isinstance(kernels.bgemm_1x2(w.numpy(), planes), torch.Tensor)


# ---- bad input ----------------------------------------------------------------------

U64 = np.uint64
W2 = np.zeros((3, 2), dtype=U64)  # 3 rows, 2 words: k in 65..128
X2 = np.zeros((4, 2), dtype=U64)
P2 = np.zeros((2, 4, 2), dtype=U64)

BAD_1X1 = [
    pytest.param(W2.astype(np.int64), X2, 100, TypeError, "uint64", id="w-int64"),
    pytest.param(W2, X2.astype(np.float32), 100, TypeError, "uint64", id="x-float32"),
    pytest.param(W2[0], X2, 100, ValueError, "2-D", id="w-1-D"),
    pytest.param(W2, P2, 100, ValueError, "2-D", id="x-3-D"),
    pytest.param(
        W2, np.zeros((4, 3), dtype=U64), 100, ValueError, "words per row", id="W-mismatch"
    ),
    pytest.param(W2, X2, 64, ValueError, r"ceil\(k/64\)=1", id="k-too-small"),
    pytest.param(W2, X2, 129, ValueError, r"ceil\(k/64\)=3", id="k-too-large"),
    pytest.param(W2, X2, -1, ValueError, ">= 0", id="k-negative"),
    pytest.param(
        np.zeros((4, 4), dtype=U64)[:, ::2], X2, 100, ValueError, "contiguous", id="strided"
    ),
    pytest.param(
        np.zeros((2, 3), dtype=U64).T,
        np.zeros((4, 3), dtype=U64)[:, :2],
        100,
        ValueError,
        "contiguous",
        id="transposed",
    ),
    pytest.param(
        torch.zeros(3, 2, dtype=torch.int64), X2, 100, TypeError, "uint64", id="torch-int64"
    ),
]


@pytest.mark.parametrize(("w", "x", "k", "error", "words"), BAD_1X1)
def test_bgemm_1x1_rejects(w: object, x: object, k: int, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        kernels.bgemm_1x1(w, x, k)


@pytest.mark.parametrize(("w", "x", "k", "error", "words"), BAD_1X1)
def test_extension_bgemm_1x1_rejects(w: object, x: object, k: int, error: type, words: str) -> None:
    from apb import _C

    with pytest.raises(error, match=words):
        _C.bgemm_1x1(w, x, k)


def test_bgemm_1x1_rejects_bad_k_types() -> None:
    with pytest.raises(TypeError, match="int"):
        kernels.bgemm_1x1(W2, X2, 100.0)
    with pytest.raises(TypeError, match="int"):
        kernels.bgemm_1x1(W2, X2, True)
    assert kernels.bgemm_1x1(W2, X2, np.int64(100)).shape == (3, 4)


BAD_PLANES = [
    pytest.param(
        W2, np.zeros((0, 4, 2), dtype=U64), ValueError, "planes of x must be 1..8", id="x-0-planes"
    ),
    pytest.param(
        W2, np.zeros((9, 4, 2), dtype=U64), ValueError, "planes of x must be 1..8", id="x-9-planes"
    ),
    pytest.param(W2, X2, ValueError, "3-D", id="x-2-D"),
    pytest.param(W2, np.zeros((2, 4, 3), dtype=U64), ValueError, "words per row", id="W-mismatch"),
    pytest.param(W2, P2.astype(np.int32), TypeError, "uint64", id="x-int32"),
    pytest.param(
        W2,
        np.zeros((4, 2, 2), dtype=U64).transpose(1, 0, 2),
        ValueError,
        "contiguous",
        id="x-transposed",
    ),
]


@pytest.mark.parametrize(("w", "x", "error", "words"), BAD_PLANES)
def test_bgemm_1x2_rejects(w: object, x: object, error: type, words: str) -> None:
    from apb import _C

    with pytest.raises(error, match=words):
        kernels.bgemm_1x2(w, x)
    with pytest.raises(error, match=words):
        _C.bgemm_1x2(w, x)


@pytest.mark.parametrize(("w", "x", "error", "words"), BAD_PLANES)
def test_bgemm_2x2_rejects(w: object, x: object, error: type, words: str) -> None:
    from apb import _C

    w3 = np.zeros((2, 3, 2), dtype=U64)
    with pytest.raises(error, match=words):
        kernels.bgemm_2x2(w3, x)
    with pytest.raises(error, match=words):
        _C.bgemm_2x2(w3, x)


def test_bgemm_planes_rejects_more() -> None:
    from apb import _C

    for call in (kernels.bgemm_2x2, _C.bgemm_2x2):
        with pytest.raises(ValueError, match="planes of w must be 1..8"):
            call(np.zeros((9, 3, 2), dtype=U64), P2)
        with pytest.raises(ValueError, match="3-D"):
            call(W2, P2)
    for call in (kernels.bgemm_1x2, kernels.bgemm_2x2, _C.bgemm_1x2, _C.bgemm_2x2):
        w = W2 if call in (kernels.bgemm_1x2, _C.bgemm_1x2) else np.zeros((2, 3, 2), dtype=U64)
        with pytest.raises(ValueError, match=r"ceil\(k/64\)=1"):
            call(w, P2, 64)
        with pytest.raises(ValueError, match=">= 0"):
            call(w, P2, -3)
    # |out| could pass int32: rejected before any work.
    big = np.zeros((8, 1, 600), dtype=U64)
    with pytest.raises(ValueError, match="overflow the int32"):
        kernels.bgemm_2x2(big, big)
    with pytest.raises(ValueError, match="overflow the int32"):
        _C.bgemm_2x2(big, big)


def test_pack_planes_rejects() -> None:
    from apb import _C

    codes = np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint8)
    for call in (kernels.pack_planes, _C.pack_planes):
        with pytest.raises(ValueError, match=r"< 2\^bits = 2, got 2 at \[0, 2\]"):
            call(codes, 1)
        with pytest.raises(ValueError, match="1..8"):
            call(codes, 0)
        with pytest.raises(ValueError, match="1..8"):
            call(codes, 9)
        with pytest.raises(TypeError, match="uint8"):
            call(codes.astype(np.int32), 2)
        with pytest.raises(ValueError, match="2-D"):
            call(codes[0], 2)
        with pytest.raises(ValueError, match="contiguous"):
            call(np.zeros((4, 6), dtype=np.uint8)[:, ::2], 2)
    with pytest.raises(ValueError, match=r"got 200 at \[1, 70\]"):
        big = np.zeros((2, 100), dtype=np.uint8)
        big[1, 70] = 200
        kernels.pack_planes(big, 7)
    with pytest.raises(TypeError, match="int"):
        kernels.pack_planes(codes, 2.0)
    with pytest.raises(TypeError, match="numpy.ndarray or a torch.Tensor"):
        kernels.pack_planes([[0, 1]], 1)
