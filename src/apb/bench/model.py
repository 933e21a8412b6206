"""Model benchmark: batch-1 latency of a packed APB network against the same
architecture in torch fp32 and torch int8, measured in one process, on the same threads.

- ``apb``: the architecture compressed with APB (``fp_fraction`` full-precision weights,
  ``act_bits`` activations; first convolution and classifier in fp32 as usual), a few
  training-mode forwards on random inputs to set the activation scales and BatchNorm
  statistics, packed (:func:`apb.pack_`) with BatchNorms folded into the layers'
  epilogues (:func:`apb.pack.fold_batchnorm_`).
- ``torch_fp32``: the same architecture in eval mode, BatchNorms folded into the
  convolutions the same way (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`).
- ``torch_int8``: the same architecture quantized by torch's FX graph mode (static int8,
  per-channel weights, ``x86`` engine: fbgemm/oneDNN kernels), calibrated on random
  inputs. torch 2.13 has no PT2E quantizer (``torch.ao.quantization.quantizer``) any
  more, and FX mode gives the real quantized modules that run without a compiler.

Every model sees the same random input under ``torch.inference_mode`` and is timed on its
own: warm-up forwards, then ``repeats`` consecutive timed ones, median reported (as the
GEMM benchmark does). Alternating the models between timed runs was tried and rejected:
each model then starts from caches the others filled (the fp32 weights alone are 47 MB,
more than the 32 MB L3 here), which measures the interference, not the model. Weights
are random: the time does not depend on their values, and nothing is downloaded.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from rich.table import Table
from torch import nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from .. import models
from ..console import table_text
from ..kernels import active_isa
from ..methods import APBConfig, compress_
from ..pack import fold_batchnorm_, pack_
from .timing import thread_count, time_ms

MODELS = {"resnet18": (3, 224, 224), "resnet20": (3, 32, 32)}
"""The architectures (``apb.models`` names) and their input ``(C, H, W)``."""

ACT_BITS = (1, 2)
IMPLS = ("torch_fp32", "torch_int8", "apb")
INT8_ENGINE = "x86"


def build_apb(name: str, act_bits: int, fp_fraction: float = 0.02, seed: int = 0,
              calibration_batches: int = 1) -> tuple[nn.Module, nn.Module]:
    """``(packed, training)``: the packed APB model (BatchNorms folded) and the eval-mode
    training model it reproduces."""
    torch.manual_seed(seed)
    activation = "hardtanh" if act_bits == 1 else "relu"
    model = models.create(name, activation=activation)
    compress_(model, APBConfig(fp_fraction=fp_fraction, act_bits=act_bits))
    model.train()
    with torch.no_grad():  # activation scales and BatchNorm statistics away from defaults
        for _ in range(calibration_batches):
            model(torch.randn(2, *MODELS[name]))
    model.eval()
    packed = pack_(copy.deepcopy(model))
    return fold_batchnorm_(packed), model


def build_fp32(name: str, act_bits: int, seed: int = 0) -> nn.Module:
    """The architecture in fp32, eval mode, BatchNorms folded into the convolutions."""
    torch.manual_seed(seed)
    activation = "hardtanh" if act_bits == 1 else "relu"
    return fold_batchnorm_(models.create(name, activation=activation).eval())


def build_int8(name: str, act_bits: int, seed: int = 0, calibration_batches: int = 4,
               engine: str = INT8_ENGINE) -> nn.Module:
    """The architecture quantized to static int8 by torch's FX graph mode on ``engine``,
    calibrated on random inputs."""

    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"this torch build has no {engine} quantized engine")
    torch.manual_seed(seed)
    activation = "hardtanh" if act_bits == 1 else "relu"
    model = models.create(name, activation=activation).eval()
    example = torch.randn(1, *MODELS[name])
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        # FX graph mode warns that it is deprecated in favour of the PT2E flow, which this
        # torch no longer ships; the peer is what runs here.
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping(engine), (example,))
        with torch.no_grad():
            for _ in range(calibration_batches):
                prepared(torch.randn(1, *MODELS[name]))
        return convert_fx(prepared)


def run_model_benchmark(name: str, act_bits: int, threads: int = 1, repeats: int = 10,
                        warmup: int = 3, fp_fraction: float = 0.02, seed: int = 0,
                        progress: Callable[[str], None] | None = None) -> dict:
    """Build the three models and time them; the JSON report as a dict::

        {"model", "act_bits", "fp_fraction", "threads", "repeats", "int8_engine", "isa",
         "apb_max_rel_error", "results": [{"impl", "ms"}, ...]}

    ``apb_max_rel_error`` is ``max |packed − training| / max |training|`` of the logits
    on the benchmark input: the packed model computes what was trained.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if act_bits not in ACT_BITS:
        raise ValueError(f"act_bits must be 1 or 2 for the packed model, got {act_bits}")
    if threads < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need threads >= 1, repeats >= 1, warmup >= 0; got {threads}, "
                         f"{repeats}, {warmup}")
    if not 0.0 <= fp_fraction < 1.0:
        raise ValueError(f"fp_fraction must be in [0, 1), got {fp_fraction}")
    say = progress or (lambda _: None)
    previous_engine = torch.backends.quantized.engine
    with thread_count(threads):
        try:
            say(f"building the packed APB {name} ({act_bits}-bit activations)")
            packed, training = build_apb(name, act_bits, fp_fraction, seed)
            say(f"building the torch fp32 and int8 {name}")
            models = {"torch_fp32": build_fp32(name, act_bits, seed),
                      "torch_int8": build_int8(name, act_bits, seed), "apb": packed}
            x = torch.randn(1, *MODELS[name], generator=torch.Generator().manual_seed(seed))
            with torch.inference_mode():
                want = training(x)
                error = float((packed(x) - want).abs().max() / want.abs().max())
                say(f"timing {repeats} forwards per model after {warmup} warm-up ones")
                ms = {impl: time_ms(_runner(models[impl], x), repeats, warmup)
                      for impl in IMPLS}
        finally:
            torch.backends.quantized.engine = previous_engine
    return {
        "model": name, "act_bits": act_bits, "fp_fraction": fp_fraction, "threads": threads,
        "repeats": repeats, "int8_engine": INT8_ENGINE, "isa": active_isa(),
        "apb_max_rel_error": error,
        "results": [{"impl": impl, "ms": ms[impl]} for impl in IMPLS],
    }


def _runner(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run():
        with torch.inference_mode():
            return model(x)

    return run


def report_table(report: dict) -> str:
    """Median milliseconds per model with the speed-ups over torch fp32 and int8."""
    ms = {r["impl"]: r["ms"] for r in report["results"]}
    t = Table(title=f"{report['model']}, batch 1, {report['threads']} thread(s), apb with "
                    f"{report['act_bits']}-bit activations and {report['fp_fraction']:.0%} "
                    f"fp weights, median of {report['repeats']} (isa {report['isa']})")
    for column in ("impl", "ms", "speed-up vs torch_fp32", "speed-up vs torch_int8"):
        t.add_column(column, justify="left" if column == "impl" else "right")
    for impl, value in ms.items():
        t.add_row(impl, f"{value:.2f}", f"{ms['torch_fp32'] / value:.2f}x",
                  f"{ms['torch_int8'] / value:.2f}x")
    return table_text(t) + (f"apb logits vs the training model: max relative error "
                            f"{report['apb_max_rel_error']:.2e}\n")
