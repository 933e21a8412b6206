"""The four implementations ``apb bench model`` times, built from one zoo architecture:

- ``apb``: the architecture compressed with APB (``fp_fraction`` full-precision weights,
  ``act_bits`` activations; first layer and classifier in fp32 as usual), a few
  training-mode forwards on the calibration inputs to set the activation scales and
  BatchNorm statistics, packed (:func:`apb.pack_`) and prepared for inference
  (:func:`apb.pack.optimize_for_inference_`: BatchNorms folded into the layers' epilogues,
  full-precision convolutions channels-last, max-pooling on strided views).
- ``torch_fp32``: the same architecture in eval mode, BatchNorms folded into the
  convolutions the same way, run in the memory layout (NCHW or channels-last) that is
  faster for that model (:func:`fastest_layout`).
- ``torch_int8``: torch's FX graph mode static int8 (per-channel weights, ``x86`` engine:
  fbgemm/oneDNN kernels) of the fp32 architecture, calibrated on the calibration inputs.
  torch 2.13 ships no PT2E quantizer (``torch.ao.quantization.quantizer``) any more, and
  FX mode gives the real quantized modules that run without a compiler.
- ``ort_int8``: the folded fp32 model exported to ONNX (in eval mode) and quantized by
  ONNX Runtime's ``quantize_static`` (QDQ, calibrated on the same inputs), one session on
  the benchmark's threads (:func:`apb.bench.ort.static_int8_session`).

Weights are random (the time does not depend on their values; nothing is downloaded);
the calibration inputs are random too, the same batches for every implementation.
"""

from __future__ import annotations

import copy
import statistics
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.ao.quantization import get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from .. import models
from ..methods import APBConfig, compress_
from ..pack import PackedRuntime, fold_batchnorm_, optimize_for_inference_, pack_
from .ort import static_int8_session
from .timing import interleaved_ms, median_ratio

INT8_ENGINE = "x86"
CALIBRATION_BATCH = 8
"""Images per calibration batch (whatever the benchmark's batch is)."""

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def input_shape(name: str) -> tuple[int, int, int]:
    """``(C, H, W)`` the zoo model ``name`` takes."""
    return tuple(models.create(name).input_shape)


def calibration_inputs(name: str, batches: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """``batches`` random batches of :data:`CALIBRATION_BATCH` inputs of model ``name``."""
    generator = torch.Generator().manual_seed(seed + 1)
    shape = input_shape(name)
    return [torch.randn(CALIBRATION_BATCH, *shape, generator=generator)
            for _ in range(batches)]


def _architecture(name: str, act_bits: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return models.create(name, activation="hardtanh" if act_bits == 1 else "relu")


def build_apb(name: str, act_bits: int, fp_fraction: float = 0.02, seed: int = 0,
              calibration: list[torch.Tensor] | None = None) -> tuple[nn.Module, nn.Module]:
    """``(packed, training)``: the packed APB model prepared for inference
    (:func:`~apb.pack.optimize_for_inference_`) and run by its plan
    (:class:`~apb.pack.PackedRuntime`), and the eval-mode training model it reproduces."""
    model = _architecture(name, act_bits, seed)
    compress_(model, APBConfig(fp_fraction=fp_fraction, act_bits=act_bits))
    model.train()
    with torch.no_grad():  # activation scales and BatchNorm statistics away from defaults
        for x in calibration if calibration is not None else calibration_inputs(name, 1):
            model(x)
    model.eval()
    packed = pack_(copy.deepcopy(model))
    return PackedRuntime(optimize_for_inference_(packed)), model


def build_fp32(name: str, act_bits: int, seed: int = 0,
               across_max_pools: bool = True) -> nn.Module:
    """The architecture in fp32, eval mode, BatchNorms folded into the convolutions
    (``across_max_pools``: :func:`~apb.pack.fold_batchnorm_`'s option; the ONNX Runtime
    peer is exported without it, which its int8 quantizer runs fastest)."""
    return fold_batchnorm_(_architecture(name, act_bits, seed).eval(),
                           across_max_pools=across_max_pools)


def build_int8(name: str, act_bits: int, seed: int = 0,
               calibration: list[torch.Tensor] | None = None,
               engine: str = INT8_ENGINE) -> nn.Module:
    """The architecture quantized to static int8 by torch's FX graph mode on ``engine``,
    calibrated on ``calibration`` (default: :func:`calibration_inputs`)."""
    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"this torch build has no {engine} quantized engine")
    model = _architecture(name, act_bits, seed).eval()
    calibration = calibration if calibration is not None else calibration_inputs(name)
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        # FX graph mode warns that it is deprecated in favour of the PT2E flow, which this
        # torch no longer ships; the peer is what runs here.
        warnings.simplefilter("ignore")
        prepared = prepare_fx(model, get_default_qconfig_mapping(engine), (calibration[0],))
        with torch.no_grad():
            for x in calibration:
                prepared(x)
        return convert_fx(prepared)


def build_ort_int8(fp32: nn.Module, calibration: list[torch.Tensor], threads: int,
                   folder: Path) -> Callable[[torch.Tensor], object]:
    """``x -> logits`` of ONNX Runtime static int8 (QDQ) of ``fp32``, exported to
    ``folder`` with a dynamic batch axis and calibrated on ``calibration``."""
    path = folder / "model.onnx"
    # eval() on the very module exported: the exporter returns a module to the mode it
    # found it in, and one left in training mode would use batch statistics from then on
    fp32.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings
        torch.onnx.export(fp32, (calibration[0],), str(path), input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}},
                          dynamo=False, opset_version=17)
    if fp32.training:
        raise RuntimeError("the ONNX export left the fp32 model in training mode")
    session = static_int8_session(path, "x", [x.numpy() for x in calibration], threads)
    return lambda x: session.run(None, {"x": x.numpy()})[0]


def torch_runner(model: nn.Module, x: torch.Tensor,
                 layout: str = "contiguous") -> Callable[[], torch.Tensor]:
    """``() -> model(x)`` under inference mode, the input converted to ``layout`` inside
    the call (a caller's images arrive NCHW)."""
    memory_format = LAYOUTS[layout]

    def run():
        with torch.inference_mode():
            return model(x.contiguous(memory_format=memory_format))

    return run


def fastest_layout(fp32: nn.Module, x: torch.Tensor, rounds: int = 5) -> tuple[str, dict]:
    """``(layout, ms by layout)``: ``fp32`` and a copy in the other memory layout timed
    in ``rounds`` interleaved rounds on ``x``; ``fp32`` is left in the faster one (NCHW
    on a tie). A model without 4-D weights computes the same either way: it stays NCHW,
    untimed (``{}``)."""
    if not any(p.dim() == 4 for p in fp32.parameters()):
        return "contiguous", {}
    copies = {"contiguous": fp32, "channels_last": copy.deepcopy(fp32)}
    copies["channels_last"].to(memory_format=torch.channels_last)
    times = interleaved_ms({layout: torch_runner(model, x, layout)
                            for layout, model in copies.items()}, rounds, per_round=1,
                           warmup=1, settle=1)
    ms = {layout: statistics.median(t) for layout, t in times.items()}
    best = ("channels_last" if median_ratio(times["contiguous"], times["channels_last"]) > 1
            else "contiguous")
    fp32.to(memory_format=LAYOUTS[best])
    return best, ms
