"""sparse_conv2d (direct sparse convolution + epilogue) against the numpy reference
(unfolding and a dense float64 product), under every instruction set this CPU has and
bit-identical across them, plus a hand-computed case, threads, special values and the
argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _csr import random_csr
from _isa import isas_under_test, require_isa
from apb import kernels
from apb.kernels.spmm import INDEX_DTYPES, INDPTR_DTYPES, VALUE_DTYPES
from oracles.activation_packing import conv2d_output_size
from oracles.sparse_conv import quantized_input_ref, sparse_conv2d_ref


def _require(isa: str) -> None:
    require_isa(isa)  # a skip, or a failure under APB_REQUIRE_ISA


@st.composite
def problems(draw: st.DrawFn) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = draw(st.integers(1, 2))
    c = draw(st.sampled_from([1, 2, 3, 5, 8, 17]))
    h = draw(st.integers(1, 10))
    w = draw(st.one_of(st.integers(1, 12), st.integers(13, 70)))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    sizes = [conv2d_output_size(n, k, s, p, d)
             for n, k, s, p, d in zip((h, w), kernel, stride, padding, dilation)]
    if min(sizes) < 1:
        padding = (padding[0] + 4 * dilation[0], padding[1] + 4 * dilation[1])
        sizes = [conv2d_output_size(n, k, s, p, d)
                 for n, k, s, p, d in zip((h, w), kernel, stride, padding, dilation)]
    m = draw(st.integers(1, 40))
    k = c * kernel[0] * kernel[1]
    index_dtype = draw(st.sampled_from(INDEX_DTYPES if k <= 256 else INDEX_DTYPES[1:]))
    csr = random_csr(rng, m, k, draw(st.sampled_from([0.0, 0.02, 0.3, 1.0])),
                      draw(st.sampled_from(INDPTR_DTYPES)), index_dtype,
                      draw(st.sampled_from(VALUE_DTYPES)))
    act_bits = draw(st.sampled_from([32, 1, 2, 3, 8]))
    n = b * sizes[0] * sizes[1]
    dot_kind = draw(st.sampled_from(["int32", "float32", None]))
    dot = None
    if dot_kind == "int32":
        dot = rng.integers(-300, 300, (m, n)).astype(np.int32)
    elif dot_kind == "float32":
        dot = rng.standard_normal((m, n)).astype(np.float32)
    vector = lambda: rng.standard_normal(m).astype(np.float32)  # noqa: E731
    return {
        "x": rng.standard_normal((b, c, h, w)).astype(np.float32),
        "csr": csr, "geometry": (kernel, stride, padding, dilation),
        "act_bits": act_bits, "scale": 1.3 if 2 <= act_bits <= 8 else None,
        "dot": dot, "dot_scale": None if dot is None else vector(),
        "sparse_scale": vector() if draw(st.booleans()) else None,
        "shift": vector() if draw(st.booleans()) else None,
    }


def _run(p: dict):
    return kernels.sparse_conv2d(
        p["x"], *p["csr"], *p["geometry"], act_bits=p["act_bits"], scale=p["scale"],
        dot=p["dot"], dot_scale=p["dot_scale"], sparse_scale=p["sparse_scale"],
        shift=p["shift"],
    )


def _bound(p: dict) -> np.ndarray:
    """Float32 rounding bound of each output: a chain of FMAs, one per nonzero of its row,
    then two more, each rounding at most 2^-24 of the magnitudes involved. Codes add two
    roundings: the kernel sums values times the codes themselves and multiplies the step
    into sparse_scale (one rounding), while the oracle's x^ is code * step rounded to
    float32 (one more)."""
    indptr, indices, values = p["csr"]
    magnitudes = sparse_conv2d_ref(
        np.abs(quantized_input_ref(p["x"], p["act_bits"], p["scale"])), indptr, indices,
        np.abs(values.astype(np.float32)), *p["geometry"],
        dot=None if p["dot"] is None else np.abs(p["dot"]),
        dot_scale=None if p["dot"] is None else np.abs(p["dot_scale"]),
        sparse_scale=None if p["sparse_scale"] is None else np.abs(p["sparse_scale"]),
        shift=None if p["shift"] is None else np.abs(p["shift"]),
    )
    row_nnz = np.diff(indptr.astype(np.int64))[:, None]
    roundings = row_nnz + (4 if 2 <= p["act_bits"] <= 8 else 3)
    return roundings * 2.0**-24 * magnitudes + 1e-30


@settings(max_examples=150, deadline=None)
@given(problem=problems())
def test_matches_reference_and_is_identical_across_isas(problem: dict) -> None:
    expected = sparse_conv2d_ref(problem["x"], *problem["csr"], *problem["geometry"],
                                 act_bits=problem["act_bits"], scale=problem["scale"],
                                 dot=problem["dot"], dot_scale=problem["dot_scale"],
                                 sparse_scale=problem["sparse_scale"], shift=problem["shift"])
    results = {}
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            results[isa] = _run(problem)
        assert results[isa].dtype == np.float32 and results[isa].shape == expected.shape
        assert np.all(np.abs(results[isa] - expected) <= _bound(problem)), isa
    for isa, out in results.items():
        np.testing.assert_array_equal(out, results["scalar"], err_msg=isa)


def test_hand_computed() -> None:
    """One channel 3x3 image, a 2x2 kernel, padding 1, stride 2: the nonzeros are
    S[0, (dy=0, dx=0)] = 2 and S[1, (dy=1, dx=1)] = -1, codes of 2 bits with s = 3."""
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3) / 2  # 0, .5, 1, ..., 4
    indptr = np.array([0, 1, 2], np.int32)
    indices = np.array([0, 3], np.uint8)
    values = np.array([2.0, -1.0], np.float16)
    dot = np.array([[1, 2, 3, 4], [0, 0, 0, 0]], np.int32)
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            out = kernels.sparse_conv2d(x, indptr, indices, values, 2, stride=2, padding=1,
                                        act_bits=2, scale=3.0, dot=dot,
                                        dot_scale=np.array([10.0, 10.0], np.float32),
                                        shift=np.array([0.5, 0.0], np.float32))
        # x^ = round(min(x, 3) / 3 * 3) * 1: 0 0 1 | 2 2 2 | 3 3 3 (ties to even: 0.5 -> 0,
        # 2.5 -> 2). Output (oy, ox) reads tap (0, 0) at input (2oy - 1, 2ox - 1) and
        # tap (1, 1) at (2oy, 2ox).
        np.testing.assert_array_equal(out, [[10.5, 20.5, 30.5, 40.0 + 0.5 + 2 * 2],
                                             [0.0, -1.0, -3.0, -3.0]])


# (batch, channels, height, width, kernel, stride, padding, dilation): the packed ResNet and
# VGG shapes in small (7x7 and 8x8 images, whose rows of 7 or 8 outputs make every epilogue
# run span rows), stride-2 rows of 15..33 inputs around the vector widths (the two-register
# even-lane permute, its masked tails), a 1x1 stride-2 shortcut (one phase of four), a
# dilated and a stride-3 kernel (the scalar phase rows), wide rows (several chunks).
SHAPES = [
    (1, 64, 7, 7, 3, 1, 1, 1), (3, 16, 8, 8, 3, 1, 1, 1), (2, 8, 14, 14, 3, 2, 1, 1),
    (1, 5, 9, 15, 3, 2, 1, 1), (1, 5, 9, 16, 3, 2, 1, 1), (1, 5, 9, 17, 3, 2, 0, 1),
    (1, 5, 6, 31, 3, 2, 1, 1), (2, 5, 6, 32, 3, 2, 2, 1), (1, 5, 6, 33, 2, 2, 1, 1),
    (2, 16, 14, 14, 1, 2, 0, 1), (1, 7, 11, 13, 3, 1, 2, 2), (1, 4, 10, 23, 3, 3, 1, 1),
    (1, 3, 40, 56, 3, 1, 1, 1), (2, 4, 5, 70, 5, 2, 2, 1),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("density", [0.02, 0.4])
def test_layer_shapes_match_reference_across_isas(shape: tuple, density: float) -> None:
    """Model-like shapes: every ISA bit-identical to the scalar path and within rounding of
    the oracle. Rows past 64 nonzeros (density 0.4) take more than one batch; empty rows
    (random_csr empties a fifth) are written from the epilogue alone."""
    b, c, h, w, k, stride, padding, dilation = shape
    rng = np.random.default_rng(sum(shape) + int(100 * density))
    m = 40
    sizes = [conv2d_output_size(n, k, stride, padding, dilation) for n in (h, w)]
    n = b * sizes[0] * sizes[1]
    problem = {
        "x": rng.standard_normal((b, c, h, w)).astype(np.float32),
        "csr": random_csr(rng, m, c * k * k, density, "int32", "uint16", "float16"),
        "geometry": ((k, k), (stride, stride), (padding, padding), (dilation, dilation)),
        "act_bits": 2, "scale": 1.1, "dot": rng.integers(-300, 300, (m, n)).astype(np.int32),
        "dot_scale": rng.standard_normal(m).astype(np.float32),
        "sparse_scale": rng.standard_normal(m).astype(np.float32),
        "shift": rng.standard_normal(m).astype(np.float32),
    }
    expected = sparse_conv2d_ref(problem["x"], *problem["csr"], *problem["geometry"],
                                 act_bits=2, scale=1.1, dot=problem["dot"],
                                 dot_scale=problem["dot_scale"],
                                 sparse_scale=problem["sparse_scale"], shift=problem["shift"])
    results = {}
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            results[isa] = _run(problem)
        assert np.all(np.abs(results[isa] - expected) <= _bound(problem)), isa
    for isa, out in results.items():
        np.testing.assert_array_equal(out, results["scalar"], err_msg=isa)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("threads", [1, 2])
def test_threaded_large_and_torch_tensors(isa: str, threads: int) -> None:
    _require(isa)
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((2, 24, 30, 30), dtype=np.float32))
    indptr, indices, values = (torch.from_numpy(a) for a in random_csr(
        rng, 70, 24 * 9, 0.05, "int64", "uint8", "float16"))
    dot = torch.from_numpy(rng.integers(-9, 9, (70, 2 * 15 * 30)).astype(np.int32))
    scale = torch.from_numpy(rng.random(70, dtype=np.float32))
    args = (x, indptr, indices, values, 3, (2, 1), 1)
    kwargs = {"act_bits": 2, "scale": torch.tensor([0.7]), "dot": dot, "dot_scale": scale}
    problem = {"x": x.numpy(), "csr": tuple(a.numpy() for a in (indptr, indices, values)),
               "geometry": ((3, 3), (2, 1), (1, 1), (1, 1)), "act_bits": 2, "scale": 0.7,
               "dot": dot.numpy(), "dot_scale": scale.numpy(), "sparse_scale": None,
               "shift": None}
    reference = sparse_conv2d_ref(problem["x"], *problem["csr"], *problem["geometry"],
                                  act_bits=2, scale=0.7, dot=problem["dot"],
                                  dot_scale=problem["dot_scale"])
    with kernels.use_isa("scalar"):
        expected = kernels.sparse_conv2d(*args, **kwargs)
    previous = kernels.get_num_threads()
    kernels.set_num_threads(threads)
    try:
        with kernels.use_isa(isa):
            out = kernels.sparse_conv2d(*args, **kwargs)
    finally:
        kernels.set_num_threads(previous)
    assert isinstance(out, torch.Tensor) and out.shape == (70, 900)
    assert np.all(np.abs(out.numpy() - reference) <= _bound(problem))  # the numpy oracle
    assert torch.equal(out, expected)  # and bit for bit the single-threaded scalar kernel


def test_special_inputs_quantize_as_documented() -> None:
    """NaN gives code 0 and +1 as a sign; -0.0 is +1; inf clips to s. One nonzero per
    row reading the centre tap of a 1x1 kernel: out = x^."""
    x = np.array([np.nan, -0.0, 0.0, -np.inf, np.inf, -2.0, 0.4, 7.0],
                 np.float32).reshape(1, 1, 1, 8)
    indptr = np.array([0, 1], np.int32)
    one = (np.zeros(1, np.int32), np.ones(1, np.float32))
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            signs = kernels.sparse_conv2d(x, indptr, *one, 1, act_bits=1)
            codes = kernels.sparse_conv2d(x, indptr, *one, 1, act_bits=2, scale=1.0)
            full = kernels.sparse_conv2d(x, indptr, *one, 1, act_bits=32)
        np.testing.assert_array_equal(signs, [[1, 1, 1, -1, 1, -1, 1, 1]])
        np.testing.assert_array_equal(codes, [[0, 0, 0, 0, 1, 0, np.float32(1) / 3, 1]])
        np.testing.assert_array_equal(full, x.reshape(1, 8))
    np.testing.assert_array_equal(
        quantized_input_ref(x, 2, 1.0).reshape(1, 8), codes)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("scale", [1.0, 1.3, 0.1, 7.0, 3e-39])
def test_codes_at_rounding_boundaries(bits: int, scale: float) -> None:
    """Inputs within 40 ulps of every rounding midpoint s*(k - 1/2)/L and of s, where a
    vector quantizer that rounds differently from the scalar one would show, quantize
    exactly as the oracle on every ISA. One nonzero of 1 on a 1x1 kernel: out = x^."""
    levels = 2**bits - 1
    mids = np.float32(scale) * (np.arange(1, levels + 1, dtype=np.float64) - 0.5) / levels
    mids = np.concatenate([mids.astype(np.float32), np.float32([scale])])
    steps = np.arange(-40, 41, dtype=np.int32)
    x = (mids.view(np.int32)[:, None] + steps[None, :]).view(np.float32)
    x = x[np.isfinite(x) & (x >= 0)].reshape(1, 1, 1, -1)
    indptr = np.array([0, 1], np.int32)
    one = (np.zeros(1, np.int32), np.ones(1, np.float32))
    expected = quantized_input_ref(x, bits, scale).reshape(1, -1)
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            out = kernels.sparse_conv2d(x, indptr, *one, 1, act_bits=bits, scale=scale)
        np.testing.assert_array_equal(out, expected, err_msg=isa)


# ---- bad input ------------------------------------------------------------------------

X = np.zeros((1, 2, 5, 5), np.float32)
CSR = (np.array([0, 1, 1], np.int32), np.array([3], np.int32), np.ones(1, np.float32))


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"act_bits": 4}, ValueError, "clip scale"),
        ({"act_bits": 1, "scale": 1.0}, ValueError, "only used by"),
        ({"act_bits": 9, "scale": 1.0}, ValueError, "act_bits"),
        ({"act_bits": 2, "scale": -1.0}, ValueError, "scale"),
        ({"dot": np.zeros((2, 9), np.int32)}, ValueError, "dot_scale"),
        ({"dot_scale": np.ones(2, np.float32)}, ValueError, "without dot"),
        ({"dot": np.zeros((2, 8), np.int32), "dot_scale": np.ones(2, np.float32)},
         ValueError, r"\[M, N\] = \[2, 9\]"),
        ({"dot": np.zeros((2, 9), np.int64), "dot_scale": np.ones(2, np.float32)},
         TypeError, "int32 or float32"),
        ({"shift": np.ones(3, np.float32)}, ValueError, "one per output channel"),
        ({"x": X.astype(np.float64)}, TypeError, "float32"),
        ({"kernel_size": 8}, ValueError, "padded input"),
        ({"indices": np.array([18], np.int32)}, ValueError, r"indices\[0\]=18 is out of range"),
        ({"indptr": np.array([0, 2, 1], np.int32)}, ValueError, "non-decreasing"),
    ],
)
def test_rejects(kwargs: dict, error: type[Exception], words: str) -> None:
    args = {"x": X, "indptr": CSR[0], "indices": CSR[1], "values": CSR[2], "kernel_size": 3}
    args.update(kwargs)
    with pytest.raises(error, match=words):
        kernels.sparse_conv2d(**args)


def test_extension_checks_on_its_own() -> None:
    """apb._C refuses what would read out of bounds even without the wrapper's checks."""
    from apb import _C

    geometry = (3, 3, 1, 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="out of range"):
        _C.sparse_conv2d(X, CSR[0], np.array([18], np.int32), CSR[2], *geometry, 32, 1.0,
                         None, None, None, None)
    with pytest.raises(ValueError, match="expected \\[M, N\\]"):
        _C.sparse_conv2d(X, *CSR, *geometry, 32, 1.0, np.zeros((2, 4), np.int32),
                         np.ones(2, np.float32), None, None)
    with pytest.raises(ValueError, match="dot_scale"):
        _C.sparse_conv2d(X, *CSR, *geometry, 32, 1.0, np.zeros((2, 9), np.int32), None,
                         None, None)
    with pytest.raises(ValueError, match="one value per output channel"):
        _C.sparse_conv2d(X, *CSR, *geometry, 32, 1.0, None, None, np.ones(5, np.float32),
                         None)
    with pytest.raises(ValueError, match="act_bits"):
        _C.sparse_conv2d(X, *CSR, *geometry, 0, 1.0, None, None, None, None)
