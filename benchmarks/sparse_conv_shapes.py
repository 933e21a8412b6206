"""The sparse correction of each packed convolution (``apb::sparse_conv2d``, with its
epilogue) on the layer shapes of the zoo's resnet18 and vgg_small, next to the binary
GEMM of the same layer (``apb::bgemm_1x2``), one thread.

    PYTHONPATH=src python benchmarks/sparse_conv_shapes.py --batch 1
    PYTHONPATH=src python benchmarks/sparse_conv_shapes.py --batch 1 --old /tmp/old/_C.cpython-311-x86_64-linux-gnu.so

Builds each model as ``apb bench model`` does (2 % full-precision weights, 2-bit
activations, packed, BatchNorms folded), runs one forward on a random batch and records
the arguments of every ``sparse_conv2d`` and ``bgemm_1x2`` call, then times those calls
alone. ``--old`` loads a second build of the extension (for example the one before a
kernel change, copied aside) into the same process: the two are timed in interleaved
rounds, layer by layer, and the table gives the median of the per-round ratios old/new
with the outputs compared. Times are medians over rounds of the median of ``--reps``
calls.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import statistics
import time
from types import ModuleType

import torch

import apb
import apb.kernels._ext as ext
from apb.bench.model_peers import build_apb, input_shape
from apb.pack import compiled
from apb.pack.apb_layers import PackedAPBConv2d


def layer_calls(model_name: str, batch: int) -> list[dict]:
    """One dict per packed convolution: the arguments of its ``sparse_conv2d`` and
    ``bgemm_1x2`` on the input it gets in a forward of a random batch (the packed layers
    call the two fused in one kernel, ``apb_conv2d``; these are its stages)."""
    packed, _ = build_apb(model_name, 2)
    x = torch.randn(batch, *input_shape(model_name), generator=torch.Generator().manual_seed(0))
    convs = [m for m in packed.modules() if isinstance(m, PackedAPBConv2d)]
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0].contiguous()))
             for m in convs]
    try:
        with torch.inference_mode():
            packed(x)
    finally:
        for hook in hooks:
            hook.remove()
    layers = []
    for conv in (m for m in convs if m in inputs):
        x_in, geometry = inputs[conv], conv._geometry()
        s, dot_scale, sparse_scale, shift = conv._scales()
        w = conv._input_order_bits("sign_bits")
        bits = compiled.im2col_pack_codes(x_in, s, 2, *geometry, "hwc")
        dot = compiled.bgemm_1x2(w, bits)
        layers.append({
            "shape": f"{tuple(x_in.shape[1:])} k{geometry[0][0]} s{geometry[1][0]} M{conv.rows}",
            "nnz": conv.nnz, "gemm": (w, bits),
            "sparse": (x_in, conv.csr_indptr, conv.csr_indices, conv.csr_values, *geometry, 2,
                       s, dot, dot_scale, sparse_scale, shift),
        })
    return layers


def load_extension(path: str) -> ModuleType:
    """A second build of ``apb._C`` from ``path``, loaded beside the first."""
    loader = importlib.machinery.ExtensionFileLoader("apb._C", path)
    spec = importlib.util.spec_from_file_location("apb._C", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    module.set_num_threads(1)
    return module


def time_call(module: ModuleType, fn, args, reps: int) -> tuple[float, torch.Tensor]:
    """Median ms of ``reps`` calls of ``fn(*args)`` with ``module`` as the extension."""
    saved, ext._extension = ext._extension, module
    try:
        out = fn(*args)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
    finally:
        ext._extension = saved
    return statistics.median(times) * 1e3, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,vgg_small")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--old", help="path of an older apb._C build to compare against")
    parser.add_argument("--no-gemm", action="store_true", help="do not time the binary GEMM")
    args = parser.parse_args()
    torch.set_num_threads(1)
    apb.set_num_threads(1)
    new = ext.extension()
    old = load_extension(args.old) if args.old else None
    print(f"isa {new.active_isa()}, batch {args.batch}, one thread, {args.rounds} rounds of "
          f"{args.reps} calls; ms are medians")
    for model_name in args.models.split(","):
        layers = layer_calls(model_name, args.batch)
        head = f"{'layer':<30} {'nnz':>7} {'gemm ms':>8} {'sparse ms':>9} {'GFMA/s':>7}"
        if old is not None:
            head += f" {'old ms':>8} {'old/new':>7} {'max diff':>9}"
        print(f"\n{model_name}\n{head}")
        totals = {"gemm": 0.0, "sparse": 0.0, "old": 0.0}
        for layer in layers:
            runs = {"gemm": [], "sparse": [], "old": [], "ratio": []}
            diff = 0.0
            for _ in range(args.rounds):
                if not args.no_gemm:
                    runs["gemm"].append(
                        time_call(new, compiled.bgemm_1x2, layer["gemm"], args.reps)[0])
                ms, out = time_call(new, compiled.sparse_conv2d, layer["sparse"], args.reps)
                runs["sparse"].append(ms)
                if old is not None:
                    old_ms, old_out = time_call(old, compiled.sparse_conv2d, layer["sparse"],
                                                args.reps)
                    runs["old"].append(old_ms)
                    runs["ratio"].append(old_ms / ms)
                    scale = old_out.abs().max().clamp_min(1e-30)
                    diff = max(diff, float((out - old_out).abs().max() / scale))
            med = {k: statistics.median(v) if v else float("nan") for k, v in runs.items()}
            fma = layer["nnz"] * out.shape[1]  # one FMA per nonzero and output position
            line = (f"{layer['shape']:<30} {layer['nnz']:>7} {med['gemm']:>8.3f} "
                    f"{med['sparse']:>9.3f} {fma / med['sparse'] / 1e6:>7.2f}")
            if old is not None:
                line += f" {med['old']:>8.3f} {med['ratio']:>7.2f} {diff:>9.1e}"
                totals["old"] += med["old"]
            totals["gemm"] += med["gemm"]
            totals["sparse"] += med["sparse"]
            print(line)
        line = f"{'total':<30} {'':>7} {totals['gemm']:>8.3f} {totals['sparse']:>9.3f} {'':>7}"
        if old is not None:
            line += f" {totals['old']:>8.3f} {totals['old'] / totals['sparse']:>7.2f}"
        print(line)


if __name__ == "__main__":
    main()
