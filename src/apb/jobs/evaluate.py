"""Measure a stored model: test accuracy, bytes and a fingerprint of its predictions.

The same numbers for a training checkpoint (the fake-quantized model, bytes as the summary
predicts them) and for a packed file (bytes as the file holds them), so the two can be
compared: a packed model that reproduces its checkpoint has the same
``predictions_sha256``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from torch import nn

from .. import data
from ..pack import PackedRuntime, load_packed, packed_layers, read_packed_info
from ..summary import summary
from ..train import build_model_from_checkpoint, predict


def is_packed_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like a safetensors file (an 8-byte header length, then
    ``{``): packed models are; checkpoints (zip archives) are not."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return struct.unpack("<Q", head[:8])[0] <= Path(path).stat().st_size - 8


def looks_like_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a ``torch.save`` file: a zip archive, or a legacy
    pickle (protocol 2+)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def load_for_inference(path: str | os.PathLike) -> tuple[nn.Module, int, float]:
    """``(model in eval mode, model_bytes, bits_per_weight)`` of a checkpoint or a packed
    file. For a packed file ``model_bytes`` is its size minus its header; for a checkpoint,
    what :func:`apb.summary` predicts the packed file will hold."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if is_packed_file(path):
        model = load_packed(path)
        return model, read_packed_info(path).model_bytes, summary(model).bits_per_weight
    if not looks_like_checkpoint(path):
        raise ValueError(
            f"{path} is neither an apb packed model (safetensors) nor a training checkpoint "
            "(a PyTorch .pt file)"
        )
    model, _ = build_model_from_checkpoint(path)
    s = summary(model)
    return model, s.model_bytes, s.bits_per_weight


def evaluate_file(path: str | os.PathLike, dataset: str, *, data_dir: str | None = None,
                  batch_size: int = 256) -> dict:
    """``{"test_acc", "model_bytes", "bits_per_weight", "predictions_sha256"}`` of the model
    stored at ``path`` (checkpoint or packed file) on ``dataset``'s test split;
    ``predictions_sha256`` is the sha256 of the int64 argmax vector in test-set order."""
    model, model_bytes, bits_per_weight = load_for_inference(path)
    split = data.load(dataset, data_dir)
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(expected) != tuple(split.input_shape):
        raise ValueError(
            f"{path} takes inputs of shape {tuple(expected)}, but {dataset} has "
            f"{tuple(split.input_shape)}"
        )
    if any(True for _ in packed_layers(model)):
        # The same layers, kernels and arithmetic (not optimized: the predictions stay
        # the model's bit for bit), with the per-layer Python overhead planned away.
        model = PackedRuntime(model)
    preds, acc = predict(model, split.test, batch_size)
    return {
        "test_acc": acc,
        "model_bytes": int(model_bytes),
        "bits_per_weight": float(bits_per_weight),
        "predictions_sha256": hashlib.sha256(preds.tobytes()).hexdigest(),
    }
