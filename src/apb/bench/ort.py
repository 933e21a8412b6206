"""ONNX Runtime int8, the peer every benchmark measures the same way: an fp32 ONNX model
dynamically quantized by ONNX Runtime's own quantizer (int8 weights, activations quantized
per call), run on a fixed number of threads."""

from __future__ import annotations

import logging
import os


def dynamic_int8_session(fp32_model: str | os.PathLike, threads: int):
    """An ``onnxruntime.InferenceSession`` of the fp32 ONNX file ``fp32_model`` after
    ``quantize_dynamic`` (int8 weights), with ``threads`` intra-op threads. The quantized
    model is written beside the input."""
    import onnxruntime as ort  # optional peer: imported only when measured
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8 = f"{os.fspath(fp32_model)}.int8.onnx"
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice on every call
    try:
        quantize_dynamic(os.fspath(fp32_model), int8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(int8, options, providers=["CPUExecutionProvider"])
