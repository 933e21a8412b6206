"""linear_1xf (binary Linear layer on float inputs) and its weight panel, against the numpy
oracle, under every instruction set this CPU has; the argument checks of the wrapper and
of the extension itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apb import kernels
from apb.kernels import direct
from oracles.linear_fp import linear_1xf_parts_ref, linear_1xf_ref, pack_panel_ref

# Remainders of every block size: K % 64 (sign words), K % 4 (groups), K across the
# int16 flush (64 groups = 256 columns); M % 64 (tiles); N = 1, odd, around the
# small-N limit (4) and the token blocks (16).
KS = [1, 2, 3, 4, 5, 63, 64, 65, 130, 255, 256, 257, 515]
MS = [1, 7, 63, 64, 65, 129]
NS = [1, 2, 3, 4, 5, 16, 17, 33]


def _require(isa: str) -> None:
    if isa not in kernels.available_isas():
        pytest.skip(f"this CPU lacks {isa} (has {kernels.available_isas()})")


def _weights(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    """Random sign words, padding bits past K included: nothing may read them as columns."""
    return rng.integers(0, 2**64, size=(m, -(-k // 64)), dtype=np.uint64)


def _csr(rng, m, k, density, index_dtype=np.uint16, value_dtype=np.float32, indptr_dtype=np.int32):
    mask = rng.random((m, k)) < density
    rows, cols = np.nonzero(mask)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))]).astype(indptr_dtype)
    values = rng.standard_normal(len(cols)).astype(value_dtype)
    return indptr, cols.astype(index_dtype), values


def _sparse_bound(x, csr, m):
    """|float32 sum of the sparse products - exact| <= (n + 2) 2^-23 sum |v x| per output."""
    if csr is None:
        return np.zeros((x.shape[0], m))
    indptr, indices, values = (np.asarray(a) for a in csr)
    row_of = np.repeat(np.arange(m), np.diff(indptr.astype(np.int64)))
    absdense = np.zeros((m, x.shape[1]))
    np.add.at(absdense, (row_of, indices.astype(np.int64)), np.abs(values.astype(np.float64)))
    counts = np.diff(indptr.astype(np.int64))
    return (np.abs(x.astype(np.float64)) @ absdense.T) * (counts[None, :] + 2) * 2.0**-23


def _check(y, x, w, alpha, csr=None, bias=None, table_bits=16):
    m = w.shape[0]
    alpha_m = np.broadcast_to(np.asarray(alpha), (m,))
    main, _ = linear_1xf_parts_ref(x, w, alpha_m, csr, table_bits)
    assert y.dtype == np.float32 and y.shape == (x.shape[0], m)
    if csr is None and bias is None:
        np.testing.assert_array_equal(y, main)  # the binary part is exact
        return
    ref = linear_1xf_ref(x, w, alpha_m, csr, bias, table_bits)
    # main + sparse + bias: two float32 additions after the exact main part.
    bound = _sparse_bound(x, csr, m) + 2.0**-23 * (np.abs(ref) + np.abs(main)) * 2 + 1e-30
    err = np.abs(y - ref)
    assert np.all(err <= bound), float(np.max(err / bound))


def test_panel_matches_the_oracle_whatever_the_padding_bits():
    rng = np.random.default_rng(0)
    for m in MS:
        for k in KS + [0]:
            w = _weights(rng, m, k)
            panel = kernels.linear_1xf_pack(w, k)
            assert panel.shape == kernels.linear_fp.panel_shape(m, k)
            np.testing.assert_array_equal(panel, pack_panel_ref(w, k))


@pytest.mark.parametrize("table_bits", [16, 8])
@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
def test_binary_part_is_exact_for_every_remainder(isa: str, table_bits: int) -> None:
    _require(isa)
    rng = np.random.default_rng(1)
    w_all = _weights(rng, max(MS), max(KS))
    with kernels.use_isa(isa):
        for k in KS:
            w = np.ascontiguousarray(w_all[:, : -(-k // 64)])
            x_all = (rng.standard_normal((max(NS), k)) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
            for m in MS:
                panel = kernels.linear_1xf_pack(w[:m], k)
                alpha = (rng.random(m) + 0.5).astype(np.float32)
                for n in NS if isa != "scalar" or k < 300 else NS[:3]:
                    a = alpha if n % 2 else alpha[:1]
                    y = kernels.linear_1xf(x_all[:n], panel, a, m, table_bits=table_bits)
                    _check(y, x_all[:n], w[:m], a, table_bits=table_bits)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
@pytest.mark.parametrize(
    ("index_dtype", "value_dtype", "indptr_dtype"),
    [(np.uint16, np.float32, np.int32), (np.uint8, np.float16, np.uint16),
     (np.int32, np.float32, np.int64), (np.uint16, np.float16, np.uint8)],
)
def test_sparse_part_and_bias(isa, index_dtype, value_dtype, indptr_dtype) -> None:
    _require(isa)
    rng = np.random.default_rng(2)
    with kernels.use_isa(isa):
        for k, m in [(130, 65), (255, 7), (64, 129)]:
            if indptr_dtype is np.uint8 and m * k * 0.05 > 200:
                k, m = 40, 20
            w = _weights(rng, m, k)
            panel = kernels.linear_1xf_pack(w, k)
            csr = _csr(rng, m, k, 0.05, index_dtype, value_dtype, indptr_dtype)
            bias = rng.standard_normal(m).astype(np.float32)
            alpha = np.array([0.3], np.float32)
            for n in (1, 3, 4, 5, 16, 17, 40):
                x = rng.standard_normal((n, k)).astype(np.float32)
                y = kernels.linear_1xf(x, panel, alpha, m, *csr, bias)
                _check(y, x, w, alpha, csr, bias)
                y8 = kernels.linear_1xf(x, panel, alpha, m, *csr, bias, table_bits=8)
                _check(y8, x, w, alpha, csr, bias, table_bits=8)
                y0 = kernels.linear_1xf(x, panel, alpha, m, *csr)
                _check(y0, x, w, alpha, csr)


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
def test_int16_sums_at_their_limit(isa: str) -> None:
    """All codes 127 and all weights +1 (or -1): every table entry read is +-508 and the
    int16 partial sums reach 64 * 508 = 32512 before each widening."""
    _require(isa)
    k, m = 64 * 4 * 3 + 4, 70
    x = np.ones((5, k), np.float32)
    with kernels.use_isa(isa):
        for word in (0, 2**64 - 1):
            w = np.full((m, -(-k // 64)), word, dtype=np.uint64)
            y = kernels.linear_1xf(x, kernels.linear_1xf_pack(w, k), np.array([1.0], np.float32), m)
            sign = 1.0 if word == 0 else -1.0
            np.testing.assert_array_equal(y, np.float32(sign * 127 * k) * np.float32(1 / 127))


@pytest.mark.parametrize("isa", kernels.ISA_NAMES)
def test_special_rows(isa: str) -> None:
    """A row with inf or NaN gives NaN outputs (as a float product would); an all-zero or
    tiny row gives the bias (and the sparse part)."""
    _require(isa)
    rng = np.random.default_rng(3)
    k, m = 70, 9
    w = _weights(rng, m, k)
    panel = kernels.linear_1xf_pack(w, k)
    x = rng.standard_normal((4, k)).astype(np.float32)
    x[0, 5] = np.inf
    x[1, 7] = np.nan
    x[2] = 0.0
    x[3] = 1e-38
    bias = np.arange(m, dtype=np.float32)
    for table_bits in (16, 8):
        with kernels.use_isa(isa):
            y = kernels.linear_1xf(x, panel, np.array([2.0], np.float32), m, bias=bias,
                                   table_bits=table_bits)
        assert np.isnan(y[:2]).all()
        np.testing.assert_array_equal(y[2:], np.stack([bias, bias]))


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_and_isas_agree_exactly(threads: int) -> None:
    rng = np.random.default_rng(4)
    k, m, n = 515, 300, 37
    w = _weights(rng, m, k)
    panel = kernels.linear_1xf_pack(w, k)
    csr = _csr(rng, m, k, 0.02)
    x = rng.standard_normal((n, k)).astype(np.float32)
    alpha = (rng.random(m) + 0.5).astype(np.float32)
    previous = kernels.get_num_threads()
    kernels.set_num_threads(threads)
    try:
        results = {}
        for isa in kernels.available_isas():
            with kernels.use_isa(isa):
                for bits in (16, 8):
                    results[isa, bits] = kernels.linear_1xf(x, panel, alpha, m, table_bits=bits)
                _check(kernels.linear_1xf(x, panel, alpha, m, *csr), x, w, alpha, csr)
    finally:
        kernels.set_num_threads(previous)
    for (isa, bits), y in results.items():
        np.testing.assert_array_equal(y, results["scalar", bits], err_msg=f"{isa} {bits}")


def test_fidelity_against_the_float_product():
    """The int8 codes are the only approximation with exact tables (relative error ~0.9 %
    on Gaussian inputs); int8 tables add one rounding per 4 columns (~1.2 %)."""
    rng = np.random.default_rng(5)
    k, m, n = 768, 256, 8
    weight = rng.standard_normal((m, k)).astype(np.float32)
    w = kernels.pack_signs(weight)
    x = rng.standard_normal((n, k)).astype(np.float32)
    panel = kernels.linear_1xf_pack(w, k)
    exact = x.astype(np.float64) @ np.where(weight < 0, -1.0, 1.0).T
    errors = {}
    for bits in (16, 8):
        y = kernels.linear_1xf(x, panel, np.array([1.0], np.float32), m, table_bits=bits)
        errors[bits] = np.linalg.norm(y - exact) / np.linalg.norm(exact)
    assert errors[16] < 0.012 and errors[8] < 0.016 and errors[16] < errors[8], errors


def test_torch_in_torch_out_and_direct():
    rng = np.random.default_rng(6)
    k, m = 100, 30
    weight = torch.randn(m, k)
    w = kernels.pack_signs(weight)
    panel = kernels.linear_1xf_pack(w, k)
    assert isinstance(panel, torch.Tensor) and panel.dtype == torch.uint8
    x = torch.randn(3, k, requires_grad=True)
    csr = tuple(torch.from_numpy(a) for a in _csr(rng, m, k, 0.1))
    alpha, bias = torch.tensor([0.5]), torch.randn(m)
    y = kernels.linear_1xf(x, panel, alpha, m, *csr, bias)
    assert isinstance(y, torch.Tensor) and y.shape == (3, m)
    y_direct = direct.linear_1xf(x.detach().numpy(), panel.numpy(), alpha.numpy(), m,
                                 *(a.numpy() for a in csr), bias.numpy())
    np.testing.assert_array_equal(y.numpy(), y_direct)
    np.testing.assert_array_equal(direct.linear_1xf_pack(w.numpy().view(np.uint64), k), panel.numpy())


def test_lookup_rate_and_kernel_name():
    assert kernels.linear_1xf_lookup_rate(2) > 0 and kernels.linear_1xf_lookup_rate(2, 8) > 0
    for isa in kernels.available_isas():
        with kernels.use_isa(isa):
            names = {kernels.linear_1xf_kernel(16), kernels.linear_1xf_kernel(8)}
        assert names <= {"scalar", "lut16", "vbmi", "vbmi8"}
    with pytest.raises(ValueError, match="16 or 8"):
        kernels.linear_1xf_kernel(4)


# ---- bad input: clear exceptions, from the wrapper and from apb._C itself ---------------

def _ok():
    rng = np.random.default_rng(7)
    x = np.zeros((3, 10), np.float32)
    panel = kernels.linear_1xf_pack(_weights(rng, 5, 10), 10)
    csr = _csr(rng, 5, 10, 0.5)
    return x, panel, np.array([1.0], np.float32), 5, csr


X, PANEL, ALPHA, M, CSR = _ok()
BAD_INPUTS = [
    pytest.param((X.astype(np.float64), PANEL, ALPHA, M), TypeError, "float32", id="x-float64"),
    pytest.param((X[None], PANEL, ALPHA, M), ValueError, "2-D", id="x-3-D"),
    pytest.param((np.zeros((10, 3), np.float32).T, PANEL, ALPHA, M), ValueError, "contiguous", id="x-T"),
    pytest.param((X, PANEL.astype(np.int8), ALPHA, M), TypeError, "uint8", id="panel-int8"),
    pytest.param((X, PANEL[:, :2], ALPHA, M), ValueError, r"ceil\(K/4\)", id="panel-short"),
    pytest.param((X, PANEL, ALPHA, 65), ValueError, r"ceil\(M/64\)", id="panel-too-few-tiles"),
    pytest.param((X, PANEL, np.ones(3, np.float32), M), ValueError, "alpha", id="alpha-3"),
    pytest.param((X, PANEL, ALPHA.astype(np.float64), M), TypeError, "float32", id="alpha-f64"),
    pytest.param((X, PANEL, ALPHA, M, *CSR[:2], None), ValueError, "all of", id="csr-partial"),
    pytest.param((X, PANEL, ALPHA, M, CSR[0][:-1], *CSR[1:]), ValueError, "M\\+1", id="indptr-short"),
    pytest.param((X, PANEL, ALPHA, M, CSR[0], CSR[1].astype(np.int64), CSR[2]), TypeError,
                 "indices", id="indices-int64"),
    pytest.param((X, PANEL, ALPHA, M, CSR[0], CSR[1], CSR[2][:-1]), ValueError, "same length",
                 id="values-short"),
    pytest.param((X, PANEL, ALPHA, M, *CSR, np.zeros(4, np.float32)), ValueError, "bias",
                 id="bias-short"),
    pytest.param((X, PANEL, ALPHA, M, *CSR, None, 4), ValueError, "table_bits", id="table-bits-4"),
]


@pytest.mark.parametrize(("args", "error", "words"), BAD_INPUTS)
def test_rejects(args, error, words) -> None:
    with pytest.raises(error, match=words):
        kernels.linear_1xf(*args)


@pytest.mark.parametrize(("args", "error", "words"), BAD_INPUTS)
def test_extension_rejects_without_the_wrapper(args, error, words) -> None:
    from apb import _C

    x, panel, alpha, m, *rest = args
    rest = list(rest) + [None] * (4 - len(rest)) if len(rest) < 5 else rest
    with pytest.raises(error, match=words):
        _C.linear_1xf(x, panel, m, alpha, *rest)


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda p, i, v: (p, np.where(np.arange(len(i)) == 3, 10, i).astype(i.dtype), v),
         r"indices\[3\]=10 is out of range"),
        (lambda p, i, v: (p, np.where(np.arange(len(i)) == 0, 65535, i).astype(i.dtype), v),
         r"indices\[0\]=65535"),
        (lambda p, i, v: (np.concatenate([[1], p[1:]]).astype(p.dtype), i, v), r"indptr\[0\]"),
        (lambda p, i, v: (np.concatenate([p[:1], [p[2]], [p[1]], p[3:]]).astype(p.dtype), i, v),
         "non-decreasing"),
    ],
)
def test_invalid_csr_structure_is_caught_by_the_extension(mutate, words) -> None:
    x, panel, alpha, m, csr = _ok()
    x = np.ones((7, 10), np.float32)  # above the small-N limit too
    for n in (1, 7):
        with pytest.raises(ValueError, match=words):
            direct.linear_1xf(x[:n], panel, alpha, m, *mutate(*csr), None)


def test_pack_rejects():
    w = np.zeros((3, 2), np.uint64)
    with pytest.raises(ValueError, match=r"ceil\(K/64\)=1"):
        kernels.linear_1xf_pack(w, 64)
    with pytest.raises(TypeError, match="uint64"):
        kernels.linear_1xf_pack(w.astype(np.int64), 100)
    with pytest.raises(ValueError, match=">= 0"):
        kernels.linear_1xf_pack(w, -1)
    from apb import _C

    with pytest.raises(ValueError, match=r"ceil\(k/64\)=1"):
        _C.linear_1xf_pack(w, 64)
