"""dense_conv2d and dense_linear, the float32 layers of a packed model.

Under every instruction set this CPU has, both agree with a float64 reference (torch's
convolution / matrix product in double) to float32 rounding over swept shapes: widths
around the vector lengths (1..50: partial and whole vectors of 8 and 16, rows of one to
four register tiles), output channels around the blocks of 4 and 8, 1..70 outputs of a
linear layer (partial 32-feature panels), 1..9 rows (the 2- and 4-row tiles and their
remainders); the bounds apply after the bias and keep NaN; the extension checks its
arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from _isa import isas_under_test
from apb import _C, kernels
from apb.kernels import direct


def bounded(y: np.ndarray, lower: float, upper: float) -> np.ndarray:
    return np.where(np.isnan(y), y, np.minimum(np.maximum(y, lower), upper))


def assert_float32_close(got: np.ndarray, want: np.ndarray, scale: np.ndarray) -> None:
    """``got`` within float32 rounding of the float64 ``want``: a few ulps of ``scale``,
    the sum of the absolute terms of each output."""
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_less(np.abs(got[ok] - want[ok]), 1e-6 * scale[ok] + 1e-30)


BOUNDS = st.sampled_from([(-math.inf, math.inf), (0.0, math.inf), (-1.0, 1.0), (0.25, 0.25)])


@st.composite
def conv_problems(draw: st.DrawFn) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 2, 3, 5]))
    h = draw(st.integers(1, 9))
    w = draw(st.one_of(st.integers(1, 17), st.integers(18, 50)))
    kernel = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    padding = tuple(max(p, (k - n + 1) // 2 + 1) if n + 2 * p < k else p
                    for n, k, p in zip((h, w), kernel, padding))
    co = draw(st.sampled_from([1, 3, 4, 6, 8, 9, 16, 17]))
    x = rng.standard_normal((b, c, h, w)).astype(np.float32)
    weight = rng.standard_normal((co, c, *kernel)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32) if draw(st.booleans()) else None
    return dict(x=x, weight=weight, bias=bias, padding=padding, bounds=draw(BOUNDS))


def conv_reference(p: dict) -> tuple[np.ndarray, np.ndarray]:
    x, w = torch.from_numpy(p["x"]).double(), torch.from_numpy(p["weight"]).double()
    b = None if p["bias"] is None else torch.from_numpy(p["bias"]).double()
    want = F.conv2d(x, w, b, padding=p["padding"]).numpy()
    scale = F.conv2d(x.abs(), w.abs(), None if b is None else b.abs(),
                     padding=p["padding"]).numpy()
    return bounded(want, *p["bounds"]), scale


@settings(max_examples=60, deadline=None)
@given(conv_problems())
def test_dense_conv2d_matches_the_convolution(p):
    want, scale = conv_reference(p)
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            got = direct.dense_conv2d(p["x"], p["weight"], p["bias"], p["padding"], *p["bounds"])
        assert_float32_close(got, want, scale)


@st.composite
def linear_problems(draw: st.DrawFn) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m = draw(st.integers(1, 9))
    k = draw(st.one_of(st.integers(1, 9), st.integers(10, 300)))
    n = draw(st.integers(1, 70))
    x = rng.standard_normal((m, k)).astype(np.float32)
    weight = rng.standard_normal((n, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if draw(st.booleans()) else None
    return dict(x=x, weight=weight, bias=bias, bounds=draw(BOUNDS))


@settings(max_examples=60, deadline=None)
@given(linear_problems())
def test_dense_linear_matches_the_product(p):
    x, w = p["x"].astype(np.float64), p["weight"].astype(np.float64)
    b = np.zeros(w.shape[0]) if p["bias"] is None else p["bias"].astype(np.float64)
    want = bounded(x @ w.T + b, *p["bounds"])
    scale = np.abs(x) @ np.abs(w).T + np.abs(b)
    packed = direct.dense_linear_pack(p["weight"])
    assert packed.shape == ((w.shape[0] + 31) // 32 * 32 * w.shape[1],)
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            got = direct.dense_linear(p["x"], packed, w.shape[0], p["bias"], *p["bounds"])
        assert_float32_close(got, want, scale)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
def test_nan_and_infinity_propagate(isa):
    if isa not in isas_under_test():
        pytest.skip(f"this CPU lacks {isa}")
    x = np.ones((1, 1, 4, 20), np.float32)
    x[0, 0, 1, 3], x[0, 0, 2, 17] = np.nan, np.inf
    weight = np.ones((2, 1, 3, 3), np.float32)
    with kernels.use_isa(isa):
        got = direct.dense_conv2d(x, weight, None, (1, 1), 0.0, 100.0)
        want = bounded(F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(weight).double(),
                                padding=1).numpy(), 0.0, 100.0)
        np.testing.assert_array_equal(got, want.astype(np.float32))
        a = np.ones((2, 40), np.float32)
        a[1, 7] = np.nan
        packed = direct.dense_linear_pack(np.ones((3, 40), np.float32))
        out = direct.dense_linear(a, packed, 3, None, -1.0, 1.0)
        assert np.all(out[0] == 1.0) and np.all(np.isnan(out[1]))


def test_the_extension_checks_its_arguments():
    x = np.zeros((1, 2, 5, 5), np.float32)
    w = np.zeros((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="takes 2 input channels, x .* has 1"):
        _C.dense_conv2d(x[:, :1].copy(), w, None, 0, 0)
    with pytest.raises(ValueError, match="smaller than the kernel"):
        _C.dense_conv2d(x[:, :, :2, :2].copy(), w, None, 0, 0)
    with pytest.raises(ValueError, match="padding >= 0"):
        _C.dense_conv2d(x, w, None, -1, 0)
    with pytest.raises(ValueError, match="one per output"):
        _C.dense_conv2d(x, w, np.zeros(4, np.float32), 1, 1)
    with pytest.raises(ValueError, match="lower <= upper"):
        _C.dense_conv2d(x, w, None, 1, 1, 1.0, 0.0)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.dense_conv2d(np.zeros((1, 2, 5, 10), np.float32)[..., ::2], w, None, 1, 1)
    with pytest.raises(TypeError, match="float32"):
        _C.dense_conv2d(x.astype(np.float64), w, None, 1, 1)
    a = np.zeros((2, 7), np.float32)
    packed = _C.dense_linear_pack(np.zeros((5, 7), np.float32))
    with pytest.raises(ValueError, match="packs into"):
        _C.dense_linear(np.zeros((2, 8), np.float32), packed, 5, None)
    with pytest.raises(ValueError, match="packs into"):
        _C.dense_linear(a, packed, 40, None)
    with pytest.raises(ValueError, match="out_features must be >= 1"):
        _C.dense_linear(a, packed, 0, None)
    with pytest.raises(ValueError, match="lower <= upper"):
        _C.dense_linear(a, packed, 5, None, math.nan, 1.0)
    assert _C.dense_linear(np.zeros((0, 7), np.float32), packed, 5, None).shape == (0, 5)
    assert _C.dense_conv2d(np.zeros((0, 2, 5, 5), np.float32), w, None, 1, 1).shape == (0, 3, 5, 5)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_split_the_work_without_changing_it(threads):
    """Shapes large enough to split over two threads (dense.cpp asks threads_for for one
    thread per 64Ki units: the convolution's 9*19*31*33*27/16 and the product's
    9*300*333/4 are over 2 * 64Ki): the same values as one thread, bit for bit (each output
    is computed by one thread the same way), and the reference's to rounding."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((9, 3, 31, 33)).astype(np.float32)
    weight = rng.standard_normal((19, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(19).astype(np.float32)
    a = rng.standard_normal((9, 300)).astype(np.float32)
    w = rng.standard_normal((333, 300)).astype(np.float32)
    packed = direct.dense_linear_pack(w)
    previous = kernels.get_num_threads()
    try:
        kernels.set_num_threads(1)
        conv1 = direct.dense_conv2d(x, weight, bias, (1, 1), 0.0, math.inf)
        lin1 = direct.dense_linear(a, packed, 333, bias=None)
        kernels.set_num_threads(threads)
        conv = direct.dense_conv2d(x, weight, bias, (1, 1), 0.0, math.inf)
        lin = direct.dense_linear(a, packed, 333, bias=None)
    finally:
        kernels.set_num_threads(previous)
    np.testing.assert_array_equal(conv, conv1)
    np.testing.assert_array_equal(lin, lin1)
    want, scale = conv_reference(dict(x=x, weight=weight, bias=bias, padding=(1, 1),
                                      bounds=(0.0, math.inf)))
    assert_float32_close(conv, want, scale)
    want = a.astype(np.float64) @ w.T.astype(np.float64)
    assert_float32_close(lin, want, np.abs(a).astype(np.float64) @ np.abs(w).T)
