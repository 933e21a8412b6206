"""apb_conv2d and apb_linear, a packed layer with 1..8-bit inputs in one call.

apb_conv2d is bit-identical to the three kernels it fuses (hwc im2col packing, binary
GEMM minus the ±1 padding correction, sparse_conv2d with the epilogue, then the layout
change from [M, B·OH·OW] to the NCHW [B, M, OH, OW] it writes directly) under every
instruction set this CPU has; both are within float32 rounding of the pure-torch reference
backend and identical across instruction sets; and the extension checks its arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _csr import random_csr
from _isa import isas_under_test, require_isa
from apb import _C, kernels
from apb.kernels import direct
from apb.kernels.spmm import INDEX_DTYPES, INDPTR_DTYPES, VALUE_DTYPES
from apb.pack import reference
from apb.pack.ops import apb_ops
from oracles.activation_packing import conv2d_output_size


def padding_correction(sign_rows: np.ndarray, c: int, h: int, w: int, geometry) -> np.ndarray:
    """int32 ``[M, OH·OW]``: ``Σ_{j padded at l} s_w(m, j)``, from its definition."""
    kernel, stride, padding, dilation = geometry
    ones = torch.ones((1, c, h, w))
    padded = (reference._unfold_rows(ones, kernel, stride, padding, dilation, "hwc") == 0)
    mask = reference.pack_planes(padded.to(torch.uint8), 1)
    return reference.bgemm_1x2(torch.from_numpy(sign_rows), mask).numpy()


def random_sign_rows(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    """uint64 ``[m, ceil(k/64)]`` random sign rows, zero bits past ``k`` (as packing a
    weight gives)."""
    signs = rng.integers(0, 2, (m, (k + 63) // 64 * 64), dtype=np.uint8)
    signs[:, k:] = 0
    return np.packbits(signs, axis=1, bitorder="little").view(np.uint64)


@st.composite
def problems(draw: st.DrawFn) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = draw(st.integers(1, 3))
    c = draw(st.sampled_from([1, 3, 8, 16, 17, 64, 65]))
    h = draw(st.integers(1, 9))
    w = draw(st.one_of(st.integers(1, 12), st.integers(13, 40)))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    sizes = [conv2d_output_size(n, k, s, p, d)
             for n, k, s, p, d in zip((h, w), kernel, stride, padding, dilation)]
    if min(sizes) < 1:
        padding = (padding[0] + 3 * dilation[0], padding[1] + 3 * dilation[1])
    geometry = (kernel, stride, padding, dilation)
    m = draw(st.integers(1, 40))
    k = c * kernel[0] * kernel[1]
    index_dtype = draw(st.sampled_from(INDEX_DTYPES if k <= 256 else INDEX_DTYPES[1:]))
    csr = random_csr(rng, m, k, draw(st.sampled_from([0.0, 0.02, 0.3])),
                     draw(st.sampled_from(INDPTR_DTYPES)), index_dtype,
                     draw(st.sampled_from(VALUE_DTYPES)))
    act_bits = draw(st.sampled_from([1, 2, 3, 8]))
    sign_rows = random_sign_rows(rng, m, k)
    corr = None
    if act_bits == 1 and max(padding) > 0:
        corr = padding_correction(sign_rows, c, h, w, geometry)
    vector = lambda: rng.standard_normal(m).astype(np.float32)  # noqa: E731
    return {
        "x": (rng.standard_normal((b, c, h, w)) * 1.5).astype(np.float32),
        "sign_rows": np.ascontiguousarray(sign_rows), "csr": csr, "geometry": geometry,
        "act_bits": act_bits, "scale": 1.3 if act_bits > 1 else 1.0,
        "padding_correction": corr, "dot_scale": vector(),
        "sparse_scale": vector() if draw(st.booleans()) else None,
        "shift": vector() if draw(st.booleans()) else None,
    }


def _fused(p: dict, **finish) -> np.ndarray:
    return direct.apb_conv2d(p["x"], p["sign_rows"], *p["csr"], *p["geometry"],
                             p["act_bits"], p["scale"], p["padding_correction"], p["dot_scale"],
                             p["sparse_scale"], p["shift"], **finish)


def _unfused(p: dict) -> np.ndarray:
    """The three kernels the fused call replaces, as the packed layer called them."""
    x, geometry, bits = p["x"], p["geometry"], p["act_bits"]
    k = x.shape[1] * geometry[0][0] * geometry[0][1]
    if bits == 1:
        packed = direct.im2col_pack_signs(x, *geometry, "hwc")
        dot = direct.bgemm_1x1(p["sign_rows"], packed, k)
        corr = p["padding_correction"]
        if corr is not None:
            m, positions = corr.shape
            dot = (dot.reshape(m, -1, positions) - corr[:, None]).reshape(m, -1)
    else:
        packed = direct.im2col_pack_codes(x, p["scale"], bits, *geometry, "hwc")
        dot = direct.bgemm_1x2(p["sign_rows"], packed)
    out = direct.sparse_conv2d(x, *p["csr"], *geometry, bits, p["scale"],
                               np.ascontiguousarray(dot), p["dot_scale"], p["sparse_scale"],
                               p["shift"])  # [M, B·OH·OW]
    b = x.shape[0]
    return out.reshape(out.shape[0], b, -1).transpose(1, 0, 2).reshape(b, out.shape[0], -1)


def _reference(p: dict) -> np.ndarray:
    t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    return reference.apb_conv2d(
        t(p["x"]), t(p["sign_rows"]), *(t(a) for a in p["csr"]), *p["geometry"],
        p["act_bits"], torch.tensor([p["scale"]], dtype=torch.float32),
        t(p["padding_correction"]), t(p["dot_scale"]), t(p["sparse_scale"]), t(p["shift"]),
    ).numpy()


@settings(max_examples=120, deadline=None)
@given(problem=problems())
def test_identical_to_the_three_kernels_and_close_to_the_reference(problem: dict) -> None:
    expected = _reference(problem)
    scale = np.abs(expected).max() + 1.0
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            fused, unfused = _fused(problem), _unfused(problem)
        assert fused.shape == expected.shape and fused.dtype == np.float32
        np.testing.assert_array_equal(fused.reshape(unfused.shape), unfused, err_msg=isa)
        np.testing.assert_allclose(fused, expected, rtol=0, atol=2e-5 * scale, err_msg=isa)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize("act_bits", [1, 2])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_threads_split_the_batch_with_identical_results(batch: int, act_bits: int,
                                                        isa: str) -> None:
    """Two threads: a batch splits by image (each image's kernels on one thread), a single
    image splits inside its kernels; both give the one-thread result bit for bit. Every
    ISA: the GEMM kernels inside an image differ, and one whose worksharing loops bound to
    the batch's team computed part of each image (and could hang) while the others held."""
    require_isa(isa)
    rng = np.random.default_rng(batch)
    c, h, w, m = 32, 24, 24, 24  # enough work for apb_conv2d to split a batch
    geometry = ((3, 3), (1, 1), (1, 1), (1, 1))
    sign_rows = random_sign_rows(rng, m, 288)
    p = {"x": rng.standard_normal((batch, c, h, w)).astype(np.float32),
         "sign_rows": sign_rows, "csr": random_csr(rng, m, 288, 0.05), "geometry": geometry,
         "act_bits": act_bits, "scale": 1.1 if act_bits > 1 else 1.0,
         "padding_correction": (padding_correction(sign_rows, c, h, w, geometry)
                                if act_bits == 1 else None),
         "dot_scale": rng.standard_normal(m).astype(np.float32), "sparse_scale": None,
         "shift": rng.standard_normal(m).astype(np.float32)}
    previous = kernels.get_num_threads()
    try:
        with kernels.use_isa(isa):
            kernels.set_num_threads(1)
            one = _fused(p)
            kernels.set_num_threads(2)
            two = _fused(p)
            unfused = _unfused(p)
    finally:
        kernels.set_num_threads(previous)
    np.testing.assert_array_equal(two, one)
    np.testing.assert_array_equal(one.reshape(batch, m, -1), unfused)


def test_the_op_runs_each_backend_and_traces() -> None:
    """``torch.ops.apb.apb_conv2d``: both backends agree, and its fake implementation
    gives the shape torch.compile / torch.export see."""
    rng = np.random.default_rng(3)
    p = {"x": rng.standard_normal((2, 16, 6, 5)).astype(np.float32),
         "sign_rows": rng.integers(0, 2**63, (8, 3), dtype=np.uint64),
         "csr": random_csr(rng, 8, 144, 0.1, np.int32, np.uint8, np.float32),
         "geometry": ((3, 3), (2, 1), (1, 1), (1, 1))}
    p["sign_rows"][:, 2] &= np.uint64((1 << 16) - 1)  # K = 144: bits past it are zero
    args = [torch.from_numpy(a) for a in (p["x"], p["sign_rows"], *p["csr"])]
    scales = [torch.full((8,), 0.5), None, torch.zeros(8)]
    outs = [apb_ops.apb_conv2d(*args, *map(list, p["geometry"]), 2, torch.tensor([1.1]), None,
                               *scales, backend) for backend in ("kernels", "reference")]
    assert outs[0].shape == (2, 8, 3, 5)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-4)
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = apb_ops.apb_conv2d(*(mode.from_tensor(a) for a in args),
                                  *map(list, p["geometry"]), 2, mode.from_tensor(
                                      torch.tensor([1.1])), None,
                                  mode.from_tensor(scales[0]), None,
                                  mode.from_tensor(scales[2]), "kernels")
    assert fake.shape == outs[0].shape


X = np.zeros((1, 2, 4, 4), np.float32)
ROWS = np.zeros((3, 1), np.uint64)
CSR = (np.array([0, 1, 1, 2], np.int32), np.array([0, 17], np.int32),
       np.array([1.0, -2.0], np.float32))
GEOMETRY = (3, 3, 1, 1, 1, 1, 1, 1)
ONES = np.ones(3, np.float32)


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"act_bits": 32}, ValueError, "act_bits"),
        ({"act_bits": 0}, ValueError, "act_bits"),
        ({"act_bits": 2, "scale": -1.0}, ValueError, "scale"),
        ({"sign_rows": np.zeros((3, 2), np.uint64)}, ValueError, r"\[3, 1\]"),
        ({"sign_rows": np.zeros((2, 1), np.uint64)}, ValueError, r"\[3, 1\]"),
        ({"sign_rows": np.zeros((3, 1), np.int64)}, TypeError, "uint64"),
        ({"indices": np.array([0, 18], np.int32)}, ValueError, "out of range"),
        ({"dot_scale": np.ones(2, np.float32)}, ValueError, "one value per output channel"),
        ({"padding_correction": np.zeros((3, 15), np.int32)}, ValueError, r"\[3, 16\]"),
        ({"padding_correction": np.zeros((3, 16), np.int32), "act_bits": 2}, ValueError,
         "1-bit"),
        ({"x": X[0]}, ValueError, "4-D"),
    ],
)
def test_extension_rejects(change: dict, error: type[Exception], words: str) -> None:
    """The extension checks everything that could read or write out of bounds itself."""
    args = {"x": X, "sign_rows": ROWS, "indptr": CSR[0], "indices": CSR[1], "values": CSR[2],
            "act_bits": 1, "scale": 1.0, "padding_correction": None, "dot_scale": ONES}
    args.update(change)
    with pytest.raises(error, match=words):
        _C.apb_conv2d(args["x"], args["sign_rows"], args["indptr"], args["indices"],
                      args["values"], *GEOMETRY, args["act_bits"], args["scale"],
                      args["padding_correction"], args["dot_scale"], None, None)


@st.composite
def linear_problems(draw: st.DrawFn) -> dict:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n = draw(st.sampled_from([1, 2, 3, 17, 64]))
    k = draw(st.sampled_from([1, 7, 63, 64, 65, 130, 256]))
    m = draw(st.integers(1, 70))
    index_dtype = draw(st.sampled_from(INDEX_DTYPES if k <= 256 else INDEX_DTYPES[1:]))
    csr = random_csr(rng, m, k, draw(st.sampled_from([0.0, 0.02, 0.3])),
                     draw(st.sampled_from(INDPTR_DTYPES)), index_dtype,
                     draw(st.sampled_from(VALUE_DTYPES)))
    act_bits = draw(st.sampled_from([1, 2, 3, 8]))
    vector = lambda: rng.standard_normal(m).astype(np.float32)  # noqa: E731
    x = (rng.standard_normal((n, k)) * 1.5).astype(np.float32)
    x[rng.random((n, k)) < 0.05] = 0.0  # exact zeros: sign +1, code 0
    return {
        "x": x, "sign_rows": random_sign_rows(rng, m, k),
        "csr": csr, "act_bits": act_bits, "scale": 1.3 if act_bits > 1 else 1.0,
        "dot_scale": vector(), "sparse_scale": vector() if draw(st.booleans()) else None,
        "shift": vector() if draw(st.booleans()) else None,
    }


@settings(max_examples=120, deadline=None)
@given(problem=linear_problems())
def test_linear_matches_reference_and_is_identical_across_isas(problem: dict) -> None:
    p = problem
    t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    expected = reference.apb_linear(
        t(p["x"]), t(p["sign_rows"]), *(t(a) for a in p["csr"]), p["act_bits"],
        torch.tensor([p["scale"]], dtype=torch.float32), t(p["dot_scale"]),
        t(p["sparse_scale"]), t(p["shift"])).numpy()
    scale = np.abs(expected).max() + 1.0
    results = {}
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            results[isa] = direct.apb_linear(p["x"], p["sign_rows"], *p["csr"], p["act_bits"],
                                             p["scale"], p["dot_scale"], p["sparse_scale"],
                                             p["shift"])
        assert results[isa].shape == expected.shape and results[isa].dtype == np.float32
        np.testing.assert_allclose(results[isa], expected, rtol=0, atol=2e-5 * scale,
                                   err_msg=isa)
    for isa, out in results.items():
        np.testing.assert_array_equal(out, results["scalar"], err_msg=isa)


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"act_bits": 9}, ValueError, "act_bits"),
        ({"act_bits": 3, "scale": float("nan")}, ValueError, "scale"),
        ({"x": np.zeros((2, 65), np.float32)}, ValueError, r"\[3, 2\]"),
        ({"x": np.zeros((2, 64), np.float64)}, TypeError, "float32"),
        ({"sign_rows": np.zeros((4, 1), np.uint64)}, ValueError, r"\[3, 1\]"),
        ({"indices": np.array([0, 64], np.int32)}, ValueError, "out of range"),
        ({"dot_scale": np.ones(4, np.float32)}, ValueError, "one value per output channel"),
    ],
)
def test_linear_extension_rejects(change: dict, error: type[Exception], words: str) -> None:
    args = {"x": np.zeros((2, 64), np.float32), "sign_rows": ROWS, "indptr": CSR[0],
            "indices": CSR[1], "values": CSR[2], "act_bits": 2, "scale": 1.0,
            "dot_scale": ONES}
    args.update(change)
    with pytest.raises(error, match=words):
        _C.apb_linear(args["x"], args["sign_rows"], args["indptr"], args["indices"],
                      args["values"], args["act_bits"], args["scale"], args["dot_scale"], None,
                      None)


BOUNDS = [(-np.inf, np.inf), (0.0, np.inf), (-1.0, 1.0), (0.5, 0.5)]
"""No bounds, ReLU, Hardtanh, and a degenerate interval."""


@settings(max_examples=60, deadline=None)
@given(conv=problems(), linear=linear_problems(), bounds=st.sampled_from(BOUNDS),
       with_residual=st.booleans())
def test_residual_and_bounds_end_the_epilogue_as_numpy_would(
        conv: dict, linear: dict, bounds: tuple[float, float], with_residual: bool) -> None:
    """``min(max(out + residual, lower), upper)`` in the epilogue equals numpy's
    ``np.clip(out + residual, lower, upper)`` on the plain output bit for bit, under every
    ISA, NaN and infinite residuals included (a NaN stays NaN, as torch's ReLU keeps it)."""
    lower, upper = bounds
    rng = np.random.default_rng(0)
    for p, call in ((conv, _fused), (linear, _linear_call)):
        for isa in isas_under_test():
            with kernels.use_isa(isa):
                plain = call(p)
                residual = None
                if with_residual:
                    residual = rng.standard_normal(plain.shape).astype(np.float32)
                    residual.flat[rng.integers(0, residual.size, 3)] = [np.nan, np.inf, -np.inf]
                got = call(p, residual=residual, lower=lower, upper=upper)
            expected = np.clip(plain + residual if with_residual else plain,
                               np.float32(lower), np.float32(upper))
            np.testing.assert_array_equal(got, expected, err_msg=isa)


def _linear_call(p: dict, **finish) -> np.ndarray:
    return direct.apb_linear(p["x"], p["sign_rows"], *p["csr"], p["act_bits"], p["scale"],
                             p["dot_scale"], p["sparse_scale"], p["shift"], **finish)


@pytest.mark.parametrize(
    ("finish", "error", "words"),
    [
        ({"residual": np.zeros((1, 3, 4, 3), np.float32)}, ValueError, r"\(1, 3, 4, 4\)"),
        ({"residual": np.zeros((1, 3, 4, 4), np.float64)}, TypeError, "float32"),
        ({"residual": np.zeros((1, 3, 4, 8), np.float32)[..., ::2]}, ValueError, "contiguous"),
        ({"lower": 1.0, "upper": 0.0}, ValueError, "lower <= upper"),
        ({"lower": float("nan")}, ValueError, "lower <= upper"),
    ],
)
def test_extension_rejects_a_bad_residual_or_bounds(finish: dict, error: type[Exception],
                                                   words: str) -> None:
    with pytest.raises(error, match=words):
        _C.apb_conv2d(X, ROWS, *CSR, *GEOMETRY, 1, 1.0, None, ONES, None, None, **finish)
    linear_finish = dict(finish)
    if "residual" in finish:  # the same mistakes against the Linear output [2, 3]
        linear_finish["residual"] = {
            ValueError: np.zeros((2, 4), np.float32) if "contiguous" not in words
            else np.zeros((2, 6), np.float32)[:, ::2],
            TypeError: np.zeros((2, 3), np.float64)}[error]
    with pytest.raises(error, match=words if "residual" not in finish or error is TypeError
                       or "contiguous" in words else r"\(2, 3\)"):
        _C.apb_linear(np.zeros((2, 64), np.float32), ROWS, *CSR, 2, 1.0, ONES, None, None,
                      **linear_finish)


@settings(max_examples=60, deadline=None)
@given(conv=problems(), linear=linear_problems(), bounds=st.sampled_from(BOUNDS),
       with_residual=st.booleans())
def test_held_layers_equal_the_functions(conv: dict, linear: dict, bounds: tuple,
                                         with_residual: bool) -> None:
    """``apb_conv2d_layer`` / ``apb_linear_layer`` (the runtime's steps): the arguments held
    once, then bit for bit the functions' results, finish included, on every ISA."""
    lower, upper = bounds
    rng = np.random.default_rng(len(conv["csr"][1]))
    for isa in isas_under_test():
        with kernels.use_isa(isa):
            want = _fused(conv)
            residual = (rng.standard_normal(want.shape).astype(np.float32)
                        if with_residual else None)
            want = _fused(conv, residual=residual, lower=lower, upper=upper)
            layer = direct.apb_conv2d_layer(conv["sign_rows"], *conv["csr"], *conv["geometry"],
                                            conv["act_bits"], conv["scale"], conv["dot_scale"],
                                            conv["sparse_scale"], conv["shift"])
            got = layer(conv["x"], conv["padding_correction"], residual, lower, upper)
            np.testing.assert_array_equal(got, want, err_msg=isa)
            assert layer.rows == conv["sign_rows"].shape[0]
            assert layer.act_bits == conv["act_bits"]
            p = linear
            want = direct.apb_linear(p["x"], p["sign_rows"], *p["csr"], p["act_bits"],
                                     p["scale"], p["dot_scale"], p["sparse_scale"], p["shift"],
                                     None, lower, upper)
            held = direct.apb_linear_layer(p["sign_rows"], *p["csr"], p["act_bits"], p["scale"],
                                           p["dot_scale"], p["sparse_scale"], p["shift"])
            np.testing.assert_array_equal(held(p["x"], None, lower, upper), want, err_msg=isa)


def test_a_held_layer_keeps_its_arrays_alive_and_checks_each_input() -> None:
    """The layer holds its arrays (the caller's references may go); a call checks its input
    against them, a bad argument fails when the layer is made."""
    import gc

    rng = np.random.default_rng(3)
    c, m = 16, 5
    geometry = ((3, 3), (1, 1), (1, 1), (1, 1))
    x = rng.standard_normal((2, c, 6, 7)).astype(np.float32)
    arrays = [random_sign_rows(rng, m, 9 * c), *random_csr(rng, m, 9 * c, 0.1),
              rng.standard_normal(m).astype(np.float32)]
    want = direct.apb_conv2d(x, *arrays[:4], *geometry, 2, 1.2, None, arrays[4], None, None)
    layer = direct.apb_conv2d_layer(*[a.copy() for a in arrays[:4]], *geometry, 2, 1.2,
                                    arrays[4].copy(), None, None)
    gc.collect()
    np.testing.assert_array_equal(layer(x), want)
    with pytest.raises(ValueError, match="sign_rows has shape"):
        layer(np.ascontiguousarray(x[:, :8]))  # 72 columns: 2 words a row, not 3
    with pytest.raises(TypeError, match="float32"):
        layer(x.astype(np.float64))
    with pytest.raises(ValueError, match="padding_correction is for 1-bit"):
        layer(x, np.zeros((m, 42), np.int32))
    with pytest.raises(ValueError, match="act_bits"):
        direct.apb_conv2d_layer(*arrays[:4], *geometry, 9, 1.2, arrays[4], None, None)
    with pytest.raises(ValueError, match="one value per output channel"):
        direct.apb_linear_layer(np.ascontiguousarray(arrays[0][:, :1]), *arrays[1:4], 2, 1.0, arrays[4][:3], None,
                                None)
