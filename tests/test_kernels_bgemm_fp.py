"""bgemm_1xf (binary weights x float activations) against the numpy reference, under
every instruction set this CPU has, plus the argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _isa import isas_under_test, require_isa
from apb import kernels
from oracles.bgemm_fp import bgemm_1xf_ref
from oracles.sign_packing import pack_signs_ref

EDGE_K = [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 127, 128, 129, 200]


def _require(isa: str) -> None:
    require_isa(isa)  # a skip, or a failure under APB_REQUIRE_ISA


def _random_weights(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    """Random sign words, padding bits past K included: the kernel must ignore them."""
    words = -(-k // 64)
    return rng.integers(0, 2**64, size=(m, words), dtype=np.uint64)


def _assert_close_to_exact(out: np.ndarray, w: np.ndarray, x: np.ndarray) -> None:
    """Any float32 summation order of K terms is within (K-1)*2^-24*sum|x| of the exact
    sum (plus a few roundings of the final reduction); the reference is float64."""
    exact = bgemm_1xf_ref(w, x)
    k = x.shape[1]
    bound = (k + 8) * 2.0**-24 * np.abs(x.astype(np.float64)).sum(axis=1)[None, :] + 1e-30
    assert out.shape == exact.shape
    assert np.all(np.abs(out - exact) <= bound), np.max(np.abs(out - exact) / bound)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(0, 9),
    n=st.integers(0, 9),
    k=st.one_of(st.integers(0, 300), st.sampled_from(EDGE_K)),
    seed=st.integers(0, 2**32 - 1),
)
def test_bgemm_1xf_matches_reference(isa: str, m: int, n: int, k: int, seed: int) -> None:
    _require(isa)
    rng = np.random.default_rng(seed)
    w = _random_weights(rng, m, k)
    x = (rng.standard_normal((n, k)) * rng.choice([1e-3, 1.0, 1e3])).astype(np.float32)
    with kernels.use_isa(isa):
        out = kernels.bgemm_1xf(w, x)
    assert out.dtype == np.float32 and out.shape == (m, n)
    _assert_close_to_exact(out, w, x)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("k", [1, 8, 63, 64, 65, 130])
def test_bgemm_1xf_every_tile_remainder_exact(isa: str, k: int) -> None:
    """Small integers sum exactly in float32, so every ISA must give the exact result;
    M and N run through every remainder of the register tiles (AVX2 3x4, AVX-512 4x6)
    and across the 48 x 48 output blocks."""
    _require(isa)
    rng = np.random.default_rng(k)
    sizes = [1, 2, 3, 4, 5, 6, 7, 13, 47, 49]
    w_all = _random_weights(rng, max(sizes), k)
    x_all = rng.integers(-8, 9, size=(max(sizes), k)).astype(np.float32)
    with kernels.use_isa(isa):
        for m in sizes:
            for n in sizes:
                out = kernels.bgemm_1xf(w_all[:m], x_all[:n])
                np.testing.assert_array_equal(out, bgemm_1xf_ref(w_all[:m], x_all[:n]))


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("threads", [1, 2])
def test_bgemm_1xf_threaded_large(isa: str, threads: int) -> None:
    _require(isa)
    rng = np.random.default_rng(1)
    w_float = rng.standard_normal((101, 577)).astype(np.float32)
    w = pack_signs_ref(w_float)
    x = rng.integers(-4, 5, size=(150, 577)).astype(np.float32)
    previous = kernels.get_num_threads()
    kernels.set_num_threads(threads)
    try:
        with kernels.use_isa(isa):
            out = kernels.bgemm_1xf(w, x)
    finally:
        kernels.set_num_threads(previous)
    # The same product written with the dense +-1 matrix.
    np.testing.assert_array_equal(out, np.where(w_float < 0, -1.0, 1.0) @ x.T.astype(np.float64))


def test_bgemm_1xf_hand_computed() -> None:
    # Row 0: weights +1 -1 +1 (bits 0b010); row 1: -1 -1 -1 (0b111).
    w = np.array([[0b010], [0b111]], dtype=np.uint64)
    x = np.array([[1.0, 2.0, 4.0], [0.5, -1.0, 0.0]], dtype=np.float32)
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            out = kernels.bgemm_1xf(w, x)
        np.testing.assert_array_equal(out, [[3.0, 1.5], [-7.0, 0.5]])


def test_bgemm_1xf_special_values_propagate() -> None:
    w = np.zeros((2, 1), dtype=np.uint64)
    x = np.array([[np.inf, 1.0], [np.nan, 0.0]], dtype=np.float32)
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            out = kernels.bgemm_1xf(w, x)
        assert out[0, 0] == np.inf and np.isnan(out[0, 1])


def test_bgemm_1xf_torch_in_torch_out() -> None:
    weight = torch.randn(5, 100)
    x = torch.randn(3, 100, requires_grad=True)
    out = kernels.bgemm_1xf(kernels.pack_signs(weight), x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    expected = torch.where(weight < 0, -1.0, 1.0).double() @ x.detach().double().T
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-4)


# ---- bad input: clear Python exceptions, from the wrapper and from apb._C itself -----

W_OK = np.zeros((2, 2), dtype=np.uint64)
X_OK = np.zeros((3, 100), dtype=np.float32)

BAD_BGEMM_INPUTS = [
    pytest.param(W_OK.astype(np.int64), X_OK, TypeError, "uint64", id="w-int64"),
    pytest.param(W_OK, X_OK.astype(np.float64), TypeError, "float32", id="x-float64"),
    pytest.param(W_OK[0], X_OK, ValueError, "2-D", id="w-1-D"),
    pytest.param(W_OK, X_OK[None], ValueError, "2-D", id="x-3-D"),
    pytest.param(W_OK, np.zeros((100, 3), np.float32).T, ValueError, "contiguous", id="x-T"),
    pytest.param(
        np.zeros((2, 4), np.uint64)[:, ::2], X_OK, ValueError, "contiguous", id="w-strided"
    ),
    pytest.param(W_OK, np.zeros((3, 64), np.float32), ValueError, r"ceil\(K/64\)=1", id="too-few"),
    pytest.param(
        W_OK, np.zeros((3, 129), np.float32), ValueError, r"ceil\(K/64\)=3", id="too-many"
    ),
    pytest.param(
        torch.zeros(2, 2, dtype=torch.int64), X_OK, TypeError, "uint64", id="torch-w-int64"
    ),
]


@pytest.mark.parametrize(("w", "x", "error", "words"), BAD_BGEMM_INPUTS)
def test_bgemm_1xf_rejects(w: object, x: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        kernels.bgemm_1xf(w, x)


@pytest.mark.parametrize(("w", "x", "error", "words"), BAD_BGEMM_INPUTS)
def test_bgemm_1xf_extension_rejects_without_the_wrapper(
    w: object, x: object, error: type[Exception], words: str
) -> None:
    from apb import _C

    with pytest.raises(error, match=words):
        _C.bgemm_1xf(w, x)


def test_bgemm_1xf_rejects_non_arrays() -> None:
    with pytest.raises(TypeError, match=r"numpy.ndarray or a torch.Tensor"):
        kernels.bgemm_1xf([[0]], X_OK)
