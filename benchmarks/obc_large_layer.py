"""Time OBC on one large layer: ResNet-18's last 3x3 convolution (512 -> 512 channels,
512x4608 as a matrix) on 7x7 feature maps, calibrated on 1,024 samples.

    PYTHONPATH=src python benchmarks/obc_large_layer.py --json obc_large_layer.json

Each method runs the whole ``apb.methods.ptq_`` pipeline on a one-layer model: calibration
capture through the hook (1,024 x 49 input rows of 4,608 values), the dampened Hessian and
its inverse, the greedy OBS loop in column blocks, writing the compressed layer. Times are
wall-clock seconds on this machine; the calibration pass is timed apart once.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from apb.methods import APBPTQConfig, OBCConfig, ptq_
from apb.methods.obc_calib import collect_hessians

METHODS = {
    "obc-prune 50%": OBCConfig(mode="prune", sparsity=0.5, keep_first=False, keep_last=False),
    "obc-quant 4-bit": OBCConfig(mode="quant", bits=4, keep_first=False, keep_last=False),
    "apb-ptq 1.6 bits/weight": APBPTQConfig(bits_per_weight=1.6, keep_first=False,
                                            keep_last=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--side", type=int, default=7, help="feature-map side")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    conv = nn.Conv2d(512, 512, 3, padding=1, bias=False)
    x = torch.relu(torch.randn(args.samples, 512, args.side, args.side))
    batches = [x[i:i + 64] for i in range(0, args.samples, 64)]
    report = {"layer": "Conv2d(512, 512, 3, padding=1)", "matrix": [512, 4608],
              "samples": args.samples, "input_rows": args.samples * args.side**2,
              "threads": torch.get_num_threads(), "results": {}}
    started = time.perf_counter()
    collect_hessians(nn.Sequential(conv), ["0"], batches)
    report["calibration_seconds"] = round(time.perf_counter() - started, 1)
    print(f"calibration pass alone: {report['calibration_seconds']} s")
    for name in args.methods.split(","):
        model = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1, bias=False))
        model[0].load_state_dict(conv.state_dict())
        started = time.perf_counter()
        result = ptq_(model, METHODS[name], batches)
        seconds = time.perf_counter() - started
        layer = result.layers[0]
        report["results"][name] = {"seconds": round(seconds, 1),
                                   "solve_seconds": layer.seconds,
                                   "relative_error": layer.relative_error}
        print(f"{name}: {seconds:.1f} s in all ({layer.seconds:.1f} s solving), "
              f"relative output error {layer.relative_error:.4g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
