"""Loading a Hugging Face model and its tokenizer from a local directory, offline.

Accepted layouts:

- a ``save_pretrained`` directory: ``config.json``, ``model.safetensors`` (or sharded
  ``model-*.safetensors`` with ``model.safetensors.index.json``) and the tokenizer's files;
- a sentence-transformers directory: the same files at its root, or in the folder its
  ``modules.json`` names for the ``Transformer`` module, plus ``1_Pooling/config.json`` (the
  pooling: mean, CLS or max over tokens) and optionally a ``Normalize`` module.

Weights are read from safetensors only: a ``pytorch_model.bin`` is a pickle, and nothing is
unpickled or executed from a model directory (``trust_remote_code`` stays off).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

POOLINGS = ("mean", "cls", "max")


class HFError(ValueError):
    """A local model directory that cannot be used; the message says what was expected."""


@dataclass
class LocalModel:
    """A model read from a local directory: the ``transformers`` model (eval mode), its
    tokenizer, and how token states become one embedding (``pooling``, ``normalize``)."""

    model: nn.Module
    tokenizer: Any
    pooling: str
    normalize: bool
    directory: Path


def transformers_module():
    """``transformers``, or an :class:`HFError` saying how to install it."""
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise HFError("Hugging Face models need the optional dependency transformers: "
                      "pip install 'apb[hf]'") from None


def model_directory(path: str | os.PathLike) -> tuple[Path, str, bool]:
    """``(directory holding config.json, pooling, normalize)`` of a local model directory."""
    root = Path(path)
    if not root.is_dir():
        raise HFError(f"{root} is not a directory; give a local Hugging Face model directory "
                      "(config.json + model.safetensors)")
    weights_dir, pooling, normalize = root, "mean", False
    modules_file = root / "modules.json"
    if modules_file.is_file():
        weights_dir, pooling, normalize = _sentence_transformers_layout(root, modules_file)
    if not (weights_dir / "config.json").is_file():
        raise HFError(f"{root} is not a Hugging Face model directory: no config.json in "
                      f"{weights_dir} (expected config.json and model.safetensors, as "
                      "save_pretrained writes them)")
    if not any(weights_dir.glob("*.safetensors")):
        bins = sorted(p.name for p in weights_dir.glob("*.bin"))
        found = f" (found {', '.join(bins)}: pickles, which apb does not load)" if bins else ""
        raise HFError(f"{weights_dir} holds no safetensors weights{found}; save the model "
                      "with save_pretrained(..., safe_serialization=True)")
    return weights_dir, pooling, normalize


def _sentence_transformers_layout(root: Path, modules_file: Path) -> tuple[Path, str, bool]:
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        kinds = {str(m["type"]).rsplit(".", 1)[-1]: root / str(m.get("path", ""))
                 for m in modules}
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise HFError(f"{modules_file} is not a sentence-transformers modules.json: {err}"
                      ) from None
    weights_dir = kinds.get("Transformer", root)
    pooling = "mean"
    if "Pooling" in kinds:
        pooling = _pooling_mode(kinds["Pooling"] / "config.json")
    return weights_dir, pooling, "Normalize" in kinds


def _pooling_mode(config_file: Path) -> str:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise HFError(f"cannot read the pooling configuration {config_file}: {err}") from None
    modes = [mode for mode, key in (("mean", "pooling_mode_mean_tokens"),
                                    ("cls", "pooling_mode_cls_token"),
                                    ("max", "pooling_mode_max_tokens")) if config.get(key)]
    if len(modes) != 1:
        raise HFError(f"{config_file}: apb supports exactly one of mean, CLS or max pooling, "
                      f"the file asks for {modes or 'none'}")
    return modes[0]


def load_local(path: str | os.PathLike, **config_overrides: Any) -> LocalModel:
    """The model (eval mode, float32, CPU) and tokenizer of a local directory;
    ``config_overrides`` replace fields of its ``config.json`` (e.g.
    ``hidden_dropout_prob=0.0``)."""
    directory, pooling, normalize = model_directory(path)
    transformers = transformers_module()
    logging = transformers.utils.logging
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # a bar per load would drown apb's own output
    try:
        model = transformers.AutoModel.from_pretrained(
            directory, local_files_only=True, use_safetensors=True, trust_remote_code=False,
            **config_overrides)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            directory, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as err:
        raise HFError(f"cannot load the model in {directory}: "
                      f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                      ) from None
    finally:
        if bars:
            logging.enable_progress_bar()
    return LocalModel(model.float().eval(), tokenizer, pooling, normalize, directory)


def skeleton(path: str | os.PathLike) -> nn.Module:
    """The architecture of the model in ``path`` with no weights (on the meta device), for
    :func:`apb.pack.load_packed` to fill from a packed file."""
    directory, _, _ = model_directory(path)
    transformers = transformers_module()
    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as err:
        raise HFError(f"cannot read {directory / 'config.json'}: {err}") from None
    with torch.device("meta"):
        model = transformers.AutoModel.from_config(config)
    return model.eval()
