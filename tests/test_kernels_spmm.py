"""spmm_csr (CSR sparse x dense, in place) against the numpy reference, under every
instruction set this CPU has, bit-identical across instruction sets, plus the CSR
validation and the argument checks."""

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
from oracles.spmm import spmm_csr_ref

EDGE_N = [0, 1, 7, 8, 9, 63, 64, 65, 127, 128, 129, 255, 256, 257, 300]


def _require(isa: str) -> None:
    require_isa(isa)  # a skip, or a failure under APB_REQUIRE_ISA


@st.composite
def csr_problems(draw: st.DrawFn) -> dict:
    indptr_dtype = draw(st.sampled_from(INDPTR_DTYPES))
    index_dtype = draw(st.sampled_from(INDEX_DTYPES))
    value_dtype = draw(st.sampled_from(VALUE_DTYPES))
    m = draw(st.integers(0, 9))
    k = draw(st.integers(0, 256 if index_dtype == "uint8" else 400))
    n = draw(st.one_of(st.integers(0, 70), st.sampled_from(EDGE_N)))
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    indptr, indices, values = random_csr(
        rng, m, k, density, indptr_dtype, index_dtype, value_dtype
    )
    x = rng.standard_normal((k, n)).astype(np.float32)
    out = rng.standard_normal((m, n)).astype(np.float32)
    return {"indptr": indptr, "indices": indices, "values": values, "x": x, "out": out}


@settings(max_examples=120, deadline=None)
@given(problem=csr_problems())
def test_spmm_csr_matches_reference_and_is_identical_across_isas(problem: dict) -> None:
    expected = spmm_csr_ref(**problem)
    results = {}
    for isa in isas_under_test():
        out = problem["out"].copy()
        with kernels.use_isa(isa):
            assert kernels.spmm_csr(problem["indptr"], problem["indices"], problem["values"],
                                    problem["x"], out) is None  # fmt: skip
        results[isa] = out
        # Each element is a chain of float32 FMAs, one per nonzero of its row.
        terms = np.abs(
            spmm_csr_ref(
                problem["indptr"],
                problem["indices"],
                np.abs(problem["values"]),
                np.abs(problem["x"]),
                np.abs(problem["out"]),
            )  # fmt: skip
        )
        row_nnz = np.diff(problem["indptr"].astype(np.int64))[:, None]
        assert np.all(np.abs(out - expected) <= (row_nnz + 1) * 2.0**-24 * terms), isa
    for isa, out in results.items():
        np.testing.assert_array_equal(out, results["scalar"], err_msg=isa)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
def test_spmm_csr_converts_every_float16_exactly(isa: str) -> None:
    """All 65536 half bit patterns, one per row, times x = 1: out is each value widened
    (F16C on AVX2, vcvtph2ps on AVX-512, integer code on scalar)."""
    _require(isa)
    values = np.arange(2**16, dtype=np.uint16).view(np.float16)
    indptr = np.arange(2**16 + 1, dtype=np.int32)
    indices = np.zeros(2**16, dtype=np.uint8)
    x = np.ones((1, 1), dtype=np.float32)
    out = np.zeros((2**16, 1), dtype=np.float32)
    with kernels.use_isa(isa):
        kernels.spmm_csr(indptr, indices, values, x, out)
    widened = values.astype(np.float32)
    finite = np.isfinite(widened)
    np.testing.assert_array_equal(out[finite, 0], widened[finite])
    np.testing.assert_array_equal(out[~finite, 0], widened[~finite])  # inf, and NaN as NaN
    subnormal = (np.abs(widened) > 0) & (np.abs(widened) < 2.0**-14)
    assert np.count_nonzero(subnormal) == 2 * 1023
    np.testing.assert_array_equal(out[subnormal, 0], widened[subnormal])


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("threads", [1, 2])
def test_spmm_csr_threaded_large(isa: str, threads: int) -> None:
    _require(isa)
    """Large enough to split rows over threads: the float64 numpy reference within the
    FMA-chain rounding bound, and bit for bit the single-threaded scalar result."""
    rng = np.random.default_rng(3)
    indptr, indices, values = random_csr(rng, 130, 577, 0.05, "int64", "uint16", "float16")
    x = rng.standard_normal((577, 700)).astype(np.float32)
    start = rng.standard_normal((130, 700)).astype(np.float32)
    reference = spmm_csr_ref(indptr, indices, values, x, start)
    terms = spmm_csr_ref(indptr, indices, np.abs(values), np.abs(x), np.abs(start))
    bound = (np.diff(indptr.astype(np.int64))[:, None] + 1) * 2.0**-24 * terms
    scalar = start.copy()
    with kernels.use_isa("scalar"):
        kernels.spmm_csr(indptr, indices, values, x, scalar)
    out = start.copy()
    previous = kernels.get_num_threads()
    kernels.set_num_threads(threads)
    try:
        with kernels.use_isa(isa):
            kernels.spmm_csr(indptr, indices, values, x, out)
    finally:
        kernels.set_num_threads(previous)
    assert np.all(np.abs(out - reference) <= bound)
    assert np.count_nonzero(out != start) > 0.5 * out.size  # the product was added
    np.testing.assert_array_equal(out, scalar)


def test_spmm_csr_refuses_an_out_that_aliases_an_input() -> None:
    """out == x (or a view of any input) would read values already overwritten."""
    indptr = np.array([0, 1, 2], dtype=np.int32)
    indices = np.array([1, 0], dtype=np.int32)
    values = np.ones(2, dtype=np.float32)
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    for out, name in ((x, "x"), (x[:], "x"), (values.reshape(1, 2), "values")):
        before = out.copy()
        with pytest.raises(ValueError, match=f"out shares memory with {name}"):
            kernels.spmm_csr(indptr, indices, values, x, out)
        np.testing.assert_array_equal(out, before)
    t = torch.from_numpy(x)
    with pytest.raises(ValueError, match="out shares memory with x"):
        kernels.spmm_csr(indptr, indices, values, t, t)
    out = np.zeros((2, 2), dtype=np.float32)
    kernels.spmm_csr(indptr, indices, values, x, out)  # separate memory: fine
    np.testing.assert_array_equal(out, [[2.0, 3.0], [0.0, 1.0]])


def test_spmm_csr_hand_computed() -> None:
    # A = [[0, 2, 0], [0, 0, 0], [1, 0, -1]] with the repeated column 0 in row 2 (0.5 + 0.5).
    indptr = np.array([0, 1, 1, 4], dtype=np.uint8)
    indices = np.array([1, 0, 2, 0], dtype=np.uint8)
    values = np.array([2.0, 0.5, -1.0, 0.5], dtype=np.float16)
    x = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]], dtype=np.float32)
    for isa in isas_under_test():
        out = np.ones((3, 2), dtype=np.float32)
        with kernels.use_isa(isa):
            kernels.spmm_csr(indptr, indices, values, x, out)
        np.testing.assert_array_equal(out, [[5.0, 41.0], [1.0, 1.0], [-1.0, -19.0]])


def test_spmm_csr_torch_tensors_in_place() -> None:
    rng = np.random.default_rng(4)
    indptr, indices, values = random_csr(rng, 6, 40, 0.3)
    x = torch.randn(40, 33)
    out = torch.zeros(6, 33, requires_grad=True)
    expected = spmm_csr_ref(indptr, indices, values, x.numpy(), out.detach().numpy())
    kernels.spmm_csr(
        torch.from_numpy(indptr), torch.from_numpy(indices), torch.from_numpy(values), x, out
    )
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-5, atol=1e-5)


# ---- invalid CSR structure: rejected before out is touched -------------------------

X3 = np.ones((3, 4), dtype=np.float32)

BAD_CSR = [
    pytest.param([1, 1, 2], [0, 1], "indptr\\[0\\] must be 0", id="indptr0"),
    pytest.param([0, 3, 2], [0, 1], "non-decreasing", id="not-monotone"),
    pytest.param([0, 1, 1], [0, 1], "must equal the number of nonzeros", id="indptr-short"),
    pytest.param([0, 1, 3], [0, 1], "must equal the number of nonzeros", id="indptr-long"),
    pytest.param([0, 1, 2], [0, 3], "indices\\[1\\]=3 is out of range", id="index=K"),
    pytest.param([0, 1, 2], [0, -1], "indices\\[1\\]=-1 is out of range", id="negative"),
]


@pytest.mark.parametrize(("indptr", "indices", "words"), BAD_CSR)
@pytest.mark.parametrize("through_wrapper", [True, False])
def test_spmm_csr_rejects_bad_structure(
    indptr: list, indices: list, words: str, through_wrapper: bool
) -> None:
    from apb import _C

    out = np.full((2, 4), 7.0, dtype=np.float32)
    args = (
        np.array(indptr, dtype=np.int32),
        np.array(indices, dtype=np.int32),
        np.ones(2, dtype=np.float32),
        X3,
        out,
    )
    spmm = kernels.spmm_csr if through_wrapper else _C.spmm_csr
    with pytest.raises(ValueError, match=words):
        spmm(*args)
    np.testing.assert_array_equal(out, 7.0)


def test_spmm_csr_structure_errors_in_the_middle_are_found_in_cpp() -> None:
    """The wrapper checks indptr's ends; a dip in the middle is caught by apb._C."""
    out = np.zeros((3, 4), dtype=np.float32)
    indptr = np.array([0, 2, 1, 2], dtype=np.int64)
    with pytest.raises(ValueError, match=r"indptr\[2\]=1 < indptr\[1\]=2"):
        kernels.spmm_csr(indptr, np.zeros(2, np.int32), np.ones(2, np.float32), X3, out)
    assert not out.any()


# ---- bad arguments --------------------------------------------------------------------

OK = {
    "indptr": np.array([0, 1, 2], dtype=np.int32),
    "indices": np.array([0, 2], dtype=np.int32),
    "values": np.ones(2, dtype=np.float32),
    "x": X3,
}

BAD_ARGS = [
    pytest.param({"indptr": OK["indptr"].astype(np.float32)}, TypeError, "indptr", id="indptr-f32"),
    pytest.param({"indptr": OK["indptr"].astype(np.uint64)}, TypeError, "indptr", id="indptr-u64"),
    pytest.param({"indices": OK["indices"].astype(np.int64)}, TypeError, "indices", id="idx-i64"),
    pytest.param({"values": OK["values"].astype(np.float64)}, TypeError, "values", id="val-f64"),
    pytest.param({"x": X3.astype(np.float64)}, TypeError, "float32", id="x-f64"),
    pytest.param({"out": np.zeros((2, 4), np.float64)}, TypeError, "float32", id="out-f64"),
    pytest.param({"indptr": OK["indptr"][None]}, ValueError, "1-D", id="indptr-2-D"),
    pytest.param({"values": OK["values"][:, None]}, ValueError, "1-D", id="values-2-D"),
    pytest.param({"x": X3[0]}, ValueError, "2-D", id="x-1-D"),
    pytest.param(
        {"indptr": np.array([0, 9, 1, 9, 2], np.int32)[::2]},
        ValueError,
        "contiguous",
        id="indptr-strided",
    ),  # fmt: skip
    pytest.param({"x": np.ones((4, 3), np.float32).T}, ValueError, "contiguous", id="x-T"),
    pytest.param({"out": np.zeros((4, 2), np.float32).T}, ValueError, "contiguous", id="out-T"),
    pytest.param({"indptr": np.array([0, 2], np.int32)}, ValueError, "M\\+1=3", id="indptr-len"),
    pytest.param({"values": np.ones(3, np.float32)}, ValueError, "same length", id="lengths"),
    pytest.param({"x": np.ones((3, 5), np.float32)}, ValueError, "N=4|columns", id="x-cols"),
]


def _call(spmm, overrides: dict) -> np.ndarray:
    args = dict(OK, out=np.zeros((2, 4), dtype=np.float32))
    args.update(overrides)
    spmm(args["indptr"], args["indices"], args["values"], args["x"], args["out"])
    return args["out"]


@pytest.mark.parametrize(("overrides", "error", "words"), BAD_ARGS)
def test_spmm_csr_rejects(overrides: dict, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        _call(kernels.spmm_csr, overrides)


@pytest.mark.parametrize(("overrides", "error", "words"), BAD_ARGS)
def test_spmm_csr_extension_rejects_without_the_wrapper(
    overrides: dict, error: type[Exception], words: str
) -> None:
    from apb import _C

    with pytest.raises(error, match=words):
        _call(_C.spmm_csr, overrides)


def test_spmm_csr_rejects_read_only_out_and_lists() -> None:
    out = np.zeros((2, 4), dtype=np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        kernels.spmm_csr(OK["indptr"], OK["indices"], OK["values"], X3, out)
    with pytest.raises(TypeError, match="numpy.ndarray or a torch.Tensor"):
        kernels.spmm_csr([0, 1, 2], OK["indices"], OK["values"], X3, np.zeros((2, 4), "f4"))
