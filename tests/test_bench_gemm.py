"""The GEMM benchmark harness runs every peer and kernel and reports consistently.

Timings are never asserted; what is checked is that each implementation computes the
product it claims (against numpy) and that the report has the documented structure.
"""

import json

import numpy as np
import pytest
import torch

from apb.bench import gemm


def test_every_impl_runs_and_report_structure(tmp_path):
    report = gemm.run_gemm_benchmark([(8, 70, 5), (4, 64, 3)], rounds=1)
    impls = [r["impl"] for r in report["results"]]
    assert impls == ["torch_fp32", "torch_int8_fbgemm", "torch_int8_onednn", "ort_int8",
                     "apb_1x1", "apb_1x2", "apb_2x2", "apb_layer"]
    for r in report["results"]:
        assert "error" not in r, r
        assert len(r["per_shape_ms"]) == 2 and r["total_ms"] == sum(r["per_shape_ms"])
    assert report["roofline_gbitops"] > 0 and report["threads"] == 1
    assert report["roofline_gbitops"] == max(report["roofline_methods_gbitops"].values())
    assert "vs ort_int8" in gemm.report_table(report)
    json.dumps(report)
    gemm.plot_report(report, tmp_path / "g.png")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_ort_peer_computes_the_integer_product():
    rng = np.random.default_rng(0)
    run = gemm.implementations(1)["ort_int8"](6, 40, 3, rng)
    (y,) = run()
    rng = np.random.default_rng(0)
    b = rng.integers(-64, 64, size=(40, 6), dtype=np.int8)
    a = rng.integers(0, 256, size=(3, 40), dtype=np.uint8)
    assert np.array_equal(y, a.astype(np.int64) @ b.astype(np.int64))


def _bits(words: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` bits of each row of little-endian uint64 words, as 0/1 int64 (numpy
    only: no apb packer)."""
    raw = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=-1, bitorder="little")
    return raw[..., :k].astype(np.int64)


def _draw_bits(rng, *shape):  # the harness's documented operand draw
    return rng.integers(0, 2**63, size=shape, dtype=np.int64).view(np.uint64)


@pytest.mark.parametrize("shape", [(5, 100, 4), (3, 64, 2), (7, 129, 6)])
def test_apb_kernel_peers_compute_the_products_they_claim(shape):
    """Each ``apb_*`` entry of the benchmark, run as the harness runs it, against a numpy
    product of the same random operands (padding bits past K are random too)."""
    m, k, n = shape
    words = -(-k // 64)
    impls = gemm.implementations(1)
    for impl, planes in (("apb_1x1", (None, None)), ("apb_1x2", (None, 2)),
                         ("apb_2x2", (2, 2))):
        got = np.asarray(impls[impl](m, k, n, np.random.default_rng(7))())
        rng = np.random.default_rng(7)
        w = _bits(_draw_bits(rng, *((planes[0],) if planes[0] else ()), m, words), k)
        x = _bits(_draw_bits(rng, *((planes[1],) if planes[1] else ()), n, words), k)
        weights = 1 - 2 * w if planes[0] is None else w[0] + 2 * w[1]
        inputs = 1 - 2 * x if planes[1] is None else x[0] + 2 * x[1]
        assert got.shape == (m, n) and got.dtype == np.int32, impl
        assert np.array_equal(got, weights @ inputs.T), impl
    assert gemm.bit_ops("apb_1x2", (2, 3, 4)) == 48 and gemm.bit_ops("torch_fp32", (1, 1, 1)) is None


@pytest.mark.parametrize("shape", [(8, 72, 16), (5, 70, 3)])
def test_apb_layer_peer_computes_its_convolution(shape):
    """The whole packed layer against torch's float64 conv2d of the same weights
    (``α·(1 − 2b) + S``) and 2-bit quantized inputs, drawn from the same generator."""
    m, k, n = shape
    out = gemm.implementations(1)["apb_layer"](m, k, n, np.random.default_rng(3))()
    conv = gemm.conv_of_gemm(m, k, n)
    rng = np.random.default_rng(3)
    fp = rng.random((m, k)) < gemm.LAYER_FP_FRACTION
    rows, cols = np.nonzero(fp)
    s = np.zeros((m, k))
    s[rows, cols] = rng.standard_normal(len(cols), dtype=np.float32)
    signs = rng.random((m, k)) < 0.5
    x = rng.random((1, conv["channels"], conv["height"], conv["width"]), dtype=np.float32)
    weight = float(np.float32(0.05)) * (1 - 2 * signs.astype(np.float64)) + s
    codes = np.round(np.clip(x.astype(np.float64), 0, 1) * 3) / 3
    want = torch.nn.functional.conv2d(
        torch.from_numpy(codes), torch.from_numpy(weight.reshape(
            m, conv["channels"], conv["kernel"], conv["kernel"])))
    assert out.shape == want.shape
    assert torch.allclose(out.double(), want, rtol=1e-5, atol=1e-5)


def test_apb_layer_is_the_convolution_of_the_gemm_shape():
    """Each ResNet-18 shape is a 3x3 valid convolution; others a 1x1 one over 1 x N."""
    assert gemm.conv_of_gemm(64, 576, 2916) == {"channels": 64, "kernel": 3, "height": 56,
                                                 "width": 56}
    assert gemm.conv_of_gemm(512, 4608, 25)["height"] == 7
    assert gemm.conv_of_gemm(64, 64, 64) == {"channels": 64, "kernel": 1, "height": 1,
                                             "width": 64}
    for shape in [(8, 72, 16), (5, 70, 3)]:
        out = gemm.implementations(1)["apb_layer"](*shape, np.random.default_rng(0))()
        assert out.shape == (1, shape[0], *{16: (4, 4), 3: (1, 3)}[shape[2]])
        assert torch.isfinite(out).all()


def test_bad_arguments_and_the_quantized_engine_is_restored():
    with pytest.raises(ValueError, match="unknown implementation"):
        gemm.run_gemm_benchmark([(1, 1, 1)], impls=["nope"])
    with pytest.raises(ValueError, match="need rounds >= 1"):
        gemm.run_gemm_benchmark([(1, 1, 1)], rounds=0)
    with pytest.raises(ValueError, match="threads >= 1"):
        gemm.run_gemm_benchmark([(1, 1, 1)], threads=0)
    before = torch.backends.quantized.engine
    engines = [e for e in torch.backends.quantized.supported_engines if e != "none"]
    assert {"fbgemm", "onednn"} & set(engines)
    try:
        for engine in engines:  # whatever the engine before, the int8 peers switch it back
            torch.backends.quantized.engine = engine
            report = gemm.run_gemm_benchmark(
                [(4, 64, 3)], impls=["torch_int8_fbgemm", "torch_int8_onednn"], rounds=1)
            assert torch.backends.quantized.engine == engine
            assert all("error" not in r or e not in engines
                       for r, e in zip(report["results"], ("fbgemm", "onednn"), strict=True))
    finally:
        torch.backends.quantized.engine = before
