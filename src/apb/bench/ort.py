"""ONNX Runtime int8, the peer every benchmark measures the same way: an fp32 ONNX model
quantized by ONNX Runtime's own quantizer, run on a fixed number of threads. Dynamic
quantization (int8 weights, activations quantized per call) for the Linear benchmarks,
static QDQ quantization (activation scales calibrated once) for whole convolutional
networks."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    import onnxruntime as ort  # optional peer: imported only when measured

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice on every call
    # its calibration session warns of every constant the exporter left unused
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        root.setLevel(level)
        ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings


def _session(model: str, threads: int):
    import onnxruntime as ort  # optional peer: imported only when measured

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle workers sleep instead of spinning: in a process that times other
    # implementations on the same cores right after, spinning ones take the cores
    # from them (two threads on two cores: apb 2.3x slower behind them).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def dynamic_int8_session(fp32_model: str | os.PathLike, threads: int):
    """An ``onnxruntime.InferenceSession`` of the fp32 ONNX file ``fp32_model`` after
    ``quantize_dynamic`` (int8 weights), with ``threads`` intra-op threads. The quantized
    model is written beside the input."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = f"{os.fspath(fp32_model)}.int8.onnx"
    with _quiet_quantizer():
        quantize_dynamic(os.fspath(fp32_model), int8, weight_type=QuantType.QInt8)
    return _session(int8, threads)


def static_int8_session(fp32_model: str | os.PathLike, input_name: str,
                        calibration: Sequence[np.ndarray], threads: int):
    """An ``onnxruntime.InferenceSession`` of the fp32 ONNX file ``fp32_model`` after
    ``quantize_static`` in the QDQ format, its activation ranges calibrated (min-max) on
    the arrays ``calibration`` fed to ``input_name``, with ``threads`` intra-op threads.
    Weights are int8 per output channel, activations uint8: the U8S8 pairing ONNX
    Runtime's x86 kernels (MLAS) are built for. The quantized model is written beside the
    input."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Batches(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(calibration)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    int8 = f"{os.fspath(fp32_model)}.qdq.onnx"
    with _quiet_quantizer():
        quantize_static(os.fspath(fp32_model), int8, _Batches(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=True)
    return _session(int8, threads)
