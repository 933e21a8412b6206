"""`apb bench linear` runs every peer and both apb rows on a small shape and writes the
documented report; the apb row computes the layer it claims. Timings are never asserted."""

import json

import numpy as np

from apb.bench import linear
from apb.cli import main
from apb.kernels import direct


def test_smoke_run_writes_the_documented_json(tmp_path):
    out, plot = tmp_path / "l.json", tmp_path / "l.png"
    assert main(["bench", "linear", "--tokens", "1,3", "--layers", "64x70", "--rounds", "1",
                 "--json", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    assert report["shapes"] == [[1, 64, 70], [3, 64, 70]]
    assert report["threads"] == 1 and report["isa"]
    assert report["limits"]["bandwidth_gbytes_per_s"] > 0 and report["limits"]["lookup_gops"] > 0
    impls = [r["impl"] for r in report["results"]]
    assert impls[:4] == ["torch_fp32", "torch_int8_dynamic", "ort_int8", "apb"]
    for r in report["results"]:
        assert "error" not in r, r
        assert len(r["per_shape_ms"]) == 2 and all(ms > 0 for ms in r["per_shape_ms"])
    assert set(report["apb_speedup"]["apb"]) == {"torch_fp32", "torch_int8_dynamic", "ort_int8"}
    assert report["apb_share_of_limit"]["apb"][0]["bandwidth"] > 0
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_apb_layer_is_signs_plus_two_percent_corrections():
    rng = np.random.default_rng(0)
    layer = linear.apb_layer(130, 90, rng)
    nnz = len(layer["values"])
    assert abs(nnz / (130 * 90) - linear.FP_FRACTION) < 0.01
    x = rng.standard_normal((2, 130), dtype=np.float32)
    y = direct.linear_1xf(x, layer["panel"], layer["alpha"], 90, layer["indptr"],
                          layer["indices"], layer["values"], layer["bias"])
    assert y.shape == (2, 90) and np.isfinite(y).all()
    assert linear.apb_weight_bytes(layer) == sum(
        layer[k].nbytes for k in ("panel", "indptr", "indices", "values", "alpha", "bias"))
    assert layer["panel"].shape == (2, 33, 32)
