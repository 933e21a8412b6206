"""What every job does around its work: check the output paths before anything runs, read a
checkpoint with the data it was trained on, and write a JSON report atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from .. import data
from ..io import atomic_write_text, existing_parent
from ..train import build_model_from_checkpoint


def check_outputs(*paths: str | os.PathLike | None) -> None:
    """Raise before any work is done when an output file cannot be written: it is a
    directory, something on its way is a file, or its directory is not writable (the
    message names the path and says what to do)."""
    for path in paths:
        if path:
            _check_writable(Path(path), directory=False)


def check_output_dir(path: str | os.PathLike | None) -> None:
    """:func:`check_outputs` for an output directory (e.g. ``train --out-dir``): it may
    exist as a directory, nothing on its way may be a file, and it must be writable."""
    if path:
        _check_writable(Path(path), directory=True)


def _check_writable(path: Path, directory: bool) -> None:
    if path.exists() and path.is_dir() != directory:
        if directory:
            raise NotADirectoryError(f"cannot write into {path}: it is a file, not a directory")
        raise IsADirectoryError(f"{path} is a directory; give a file name")
    folder = path if directory and path.is_dir() else existing_parent(path)
    if folder is None:
        return
    try:  # a real probe: permissions, read-only file systems, /proc alike
        fd, probe = tempfile.mkstemp(prefix=".apb-write-check.", dir=folder)
    except OSError as err:
        raise PermissionError(f"cannot write {path}: {folder} is not writable "
                              f"({err.strerror or err}); choose another output") from None
    os.close(fd)
    os.unlink(probe)


def load_trained(
    checkpoint: str | os.PathLike, dataset: str | None = None, data_dir: str | None = None
) -> tuple[nn.Module, dict[str, Any], data.DataSplit]:
    """``(model, checkpoint dict, data split)``: the model rebuilt from ``checkpoint`` and
    ``dataset`` (default: the one it was trained on, with the same directory and options)."""
    model, ckpt = build_model_from_checkpoint(checkpoint)
    trained_on = ckpt["train_config"]
    dataset = dataset or trained_on["dataset"]
    same = dataset == trained_on["dataset"]
    split = data.load(dataset, data_dir or (trained_on.get("data_dir") if same else None),
                      **((trained_on.get("data_options") or {}) if same else {}))
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(expected) != tuple(split.input_shape):
        raise ValueError(f"{checkpoint} takes inputs of shape {tuple(expected)}, but {dataset} "
                         f"has {tuple(split.input_shape)}")
    return model, ckpt, split


def write_json(path: str | os.PathLike, report: dict) -> None:
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
