"""The GEMM benchmark harness runs every peer and kernel and reports consistently.

Timings are never asserted; what is checked is that each implementation computes the
product it claims (against numpy) and that the report has the documented structure.
"""

import json

import numpy as np
import torch

from apb.bench import gemm
from apb.kernels import bgemm_1x1, unpack_signs


def test_every_impl_runs_and_report_structure(tmp_path):
    report = gemm.run_gemm_benchmark([(8, 70, 5), (4, 64, 3)], repeats=1)
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


def test_apb_1x1_peer_computes_the_sign_product():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((5, 100)).astype(np.float32)
    x = rng.standard_normal((4, 100)).astype(np.float32)
    from apb.kernels import pack_signs

    got = bgemm_1x1(pack_signs(w), pack_signs(x), 100)
    sw = unpack_signs(pack_signs(w), 100)
    sx = unpack_signs(pack_signs(x), 100)
    assert np.array_equal(got, (sw @ sx.T).astype(np.int32))
    assert gemm.bit_ops("apb_1x2", (2, 3, 4)) == 48 and gemm.bit_ops("torch_fp32", (1, 1, 1)) is None


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


def test_bad_arguments():
    import pytest

    with pytest.raises(ValueError, match="unknown implementation"):
        gemm.run_gemm_benchmark([(1, 1, 1)], impls=["nope"])
    with pytest.raises(ValueError):
        gemm.run_gemm_benchmark([(1, 1, 1)], repeats=0)
    assert torch.backends.quantized.engine  # the engine switch is restored
