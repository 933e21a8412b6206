"""Training checkpoints: written atomically, read with ``weights_only=True``.

A checkpoint is a dict of tensors and plain Python values only (docs/design.md §4: nothing a
``weights_only`` load refuses), with these entries:

========================  =====================================================================
``format``                ``"apb.train.checkpoint"``: tells our files from any other ``.pt``
``format_version``        :data:`CHECKPOINT_VERSION`; a newer one is refused
``epoch``                 epochs completed; training resumes at this (0-based) epoch index
``global_step``           optimizer steps taken
``finalized``             ``method.finalize`` ran (the run is over)
``best_test_acc``         best test accuracy so far, and ``best_epoch`` where it was reached
``model``                 ``{"name", "kwargs"}`` for ``apb.models.create``
``method``                ``{"name", "config"}`` for ``apb.methods.create``
``train_config``          :meth:`TrainConfig.to_dict`
``model_state``           the model's ``state_dict`` (after ``method.prepare``)
``optimizer_state``       main optimizer; ``scale_optimizer_state`` (None without scales)
``scheduler_state``       the two LR schedulers likewise (``scale_scheduler_state``)
``rng``                   one entry per rank: torch / CUDA / numpy / Python RNG states
``world_size``            processes that trained it
``history``               the metrics records of the completed epochs
``versions``              ``{"apb", "torch"}`` that wrote it
``ptq``                   (post-training results only) what ``apb ptq`` did: method, target,
                          calibration, test accuracy, per-layer levels and errors, source file
``quantized_pruning``     (filter-pruned results only) what ``apb prune-quantized`` did:
                          budget, ratios per layer, channels kept, accuracies, source file
========================  =====================================================================

A post-training result (:func:`post_training_state`) is the source checkpoint with
``method`` and ``model_state`` replaced, ``ptq`` added and the optimizer and scheduler states
dropped (None: there is nothing to resume); ``train_config`` and ``history`` still describe
how the source model was trained. It loads like any other checkpoint. A filter-pruned result
(:func:`pruned_state`) likewise keeps its method and replaces ``model`` too: its kwargs record
the pruned widths.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import models
from ..io import atomic_write
from ..pack.limits import LoadLimitError, check_budget, check_kwargs
from .build import FREEZES, build_model, freezes_due
from .config import TrainConfig

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "apb.train.checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = (
    "format", "format_version", "epoch", "global_step", "finalized", "best_test_acc",
    "best_epoch", "model", "method", "train_config", "model_state", "optimizer_state",
    "scale_optimizer_state", "scheduler_state", "scale_scheduler_state", "rng", "world_size",
    "history",
)


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, not ours, or does not fit the run."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`apb.io.atomic_write`: a temporary file
    in the same directory, fsync, ``os.replace``): a crash leaves the previous file or the
    new one, never a mixture, and no temporary file behind."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, *, max_bytes: int | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``, on CPU).

    Before anything is unpickled, the file must be a zip archive (as ``torch.save`` writes)
    whose entries, uncompressed, fit the load's memory budget (``max_bytes``, default as for
    :func:`apb.pack.load_packed`: 64 times the file's size, at least 64 MiB, or
    ``APB_MAX_LOAD_BYTES``).

    Raises :class:`CheckpointError` when the file is missing, cannot be read as a PyTorch
    file (truncated, corrupt, a text file), would need more memory than its budget, holds
    objects a ``weights_only`` load refuses, is another program's ``.pt``, or was written by
    a newer format version.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint path {path} is not a file")
    _check_archive(path, max_bytes)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "unsupported global" not in str(err).lower():
            raise CheckpointError(
                f"cannot read {path} as a checkpoint: it is corrupt or not a PyTorch file "
                f"({type(err).__name__})"
            ) from err
        raise CheckpointError(
            f"{path} holds Python objects that a safe (weights_only) load refuses, so it is "
            f"not an apb checkpoint, which holds only tensors and plain values "
            f"({_refused_global(err)})"
        ) from err
    except Exception as err:  # torch raises RuntimeError, EOFError, ... for damaged files
        raise CheckpointError(
            f"cannot read {path} as a checkpoint: it is truncated, corrupt or not a PyTorch "
            f"file ({_first_line(err)})"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not an apb training checkpoint (it has no "
            f"'format': {CHECKPOINT_FORMAT!r} entry); apb writes last.pt and best.pt into "
            "its out_dir"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this apb reads versions up to "
            f"{CHECKPOINT_VERSION}: upgrade apb to read it"
        )
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks the entries {', '.join(missing)}: it is damaged")
    if not isinstance(ckpt["model_state"], dict) or not all(
        isinstance(v, torch.Tensor) for v in ckpt["model_state"].values()
    ):
        raise CheckpointError(f"{path}: 'model_state' is not a state dict of tensors")
    model = ckpt["model"]
    if (not isinstance(model, dict) or not isinstance(model.get("name"), str)
            or not isinstance(model.get("kwargs"), dict)):
        raise CheckpointError(f"{path}: 'model' must be {{'name': str, 'kwargs': {{...}}}}")
    try:
        check_kwargs(model["kwargs"], f"the model kwargs of {model['name']!r}")
    except LoadLimitError as err:
        raise CheckpointError(f"{path}: {err}") from None
    return ckpt


def _check_archive(path: Path, max_bytes: int | None) -> None:
    """The zip archive ``torch.save`` writes, whose entries fit the memory budget (checked
    from its directory, before ``torch.load`` allocates anything)."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise CheckpointError(
            f"cannot read {path} as a checkpoint: it is truncated, corrupt or not a PyTorch "
            f"file (not the zip archive torch.save writes: {err})"
        ) from None
    try:
        check_budget(sum(e.file_size for e in entries), f"reading {path}",
                     path.stat().st_size, max_bytes)
    except LoadLimitError as err:
        raise CheckpointError(f"{path}: {err}") from None


def repair_best(last_path: Path, best_path: Path, last: dict[str, Any]) -> bool:
    """Make ``best.pt`` the checkpoint ``last.pt`` records as the best, after a crash.

    The trainer writes ``last.pt`` first, then ``best.pt`` when the epoch just finished is
    the best. A crash between the two leaves a ``last.pt`` whose best epoch is its own and
    an older ``best.pt``; then ``last.pt`` is copied over ``best.pt`` (atomically). Returns
    whether it was; a mismatch it cannot repair (the best state is lost) is logged."""
    want = (last["best_epoch"], last["best_test_acc"])
    try:
        best = load_checkpoint(best_path) if best_path.exists() else None
    except CheckpointError:
        best = None
    if best is not None and (best["best_epoch"], best["best_test_acc"]) == want \
            and best["epoch"] == last["best_epoch"] + 1:
        return False
    if last["best_epoch"] == last["epoch"] - 1:
        data = last_path.read_bytes()
        atomic_write(best_path, lambda f: f.write(data))
        logger.warning("%s was not the best checkpoint %s records (epoch %d): repaired from it",
                       best_path, last_path, last["best_epoch"])
        return True
    if last["best_epoch"] >= 0:
        logger.warning("%s does not hold the best epoch (%d) that %s records, and that state "
                       "is gone: it cannot be repaired", best_path, last["best_epoch"], last_path)
    return False


def post_training_state(
    source: dict[str, Any], model: nn.Module, method: tuple[str, dict[str, Any]],
    ptq: dict[str, Any], stats: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint of ``model`` compressed after training from the checkpoint ``source``;
    ``method`` is ``(name, config)`` for ``apb.methods.create`` (see the module docstring)."""
    state = dict(source)
    state.update(
        method={"name": method[0], "config": method[1]},
        model_state=model.state_dict(),
        finalized=True,
        optimizer_state=None, scale_optimizer_state=None,
        scheduler_state=None, scale_scheduler_state=None,
        best_test_acc=ptq.get("test_acc", source.get("best_test_acc")),
        ptq=ptq,
    )
    if stats is not None:
        state["stats"] = stats
    return state


def pruned_state(source: dict[str, Any], model: nn.Module, report: dict[str, Any]
                 ) -> dict[str, Any]:
    """The checkpoint of ``model``, filter-pruned from the checkpoint ``source``: the
    architecture it records (``model.apb_architecture``, with its pruned widths) and its state
    replace the source's, ``quantized_pruning`` holds ``report``; the method stays."""
    arch = getattr(model, "apb_architecture", None)
    if not isinstance(arch, dict) or "name" not in arch or "kwargs" not in arch:
        raise ValueError("the pruned model does not record its architecture "
                         "(apb_architecture), so a checkpoint of it could not be rebuilt")
    state = dict(source)
    state.update(
        model={"name": arch["name"], "kwargs": dict(arch["kwargs"])},
        model_state=model.state_dict(),
        finalized=True,
        optimizer_state=None, scale_optimizer_state=None,
        scheduler_state=None, scale_scheduler_state=None,
        best_test_acc=report.get("test_acc", source.get("best_test_acc")),
        quantized_pruning=report,
    )
    return state


def _first_line(err: BaseException) -> str:
    """The error's type and its most telling line (torch's messages run to a page)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines if "error:" in line.lower()]
    detail = (telling or lines or [""])[0]
    detail = detail if len(detail) <= 160 else detail[:157] + "..."
    return f"{type(err).__name__}: {detail}"


def load_model_state(model: nn.Module, ckpt: dict[str, Any], source: str = "checkpoint") -> None:
    """``model.load_state_dict(ckpt["model_state"])`` with a :class:`CheckpointError` that
    says which entries did not fit."""
    try:
        model.load_state_dict(ckpt["model_state"])
    except RuntimeError as err:
        raise CheckpointError(
            f"the model state in {source} does not fit the model rebuilt from its own "
            f"description ({ckpt['model']['name']} + {ckpt['method']['name']}): {err}"
        ) from err


def build_model_from_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, checkpoint)``: the trained model rebuilt on CPU, in eval mode.

    The architecture and compression come from the checkpoint itself (``models.create`` with
    the stored kwargs, ``methods.create(...).prepare``), then the state is loaded and the
    freezes that had happened are re-applied. ``apb.methods.create(ckpt["method"]["name"],
    **ckpt["method"]["config"])`` gives the method again (for ``stats``).
    """
    ckpt = load_checkpoint(path)
    check_model_size(ckpt, str(path))
    try:
        config = TrainConfig.from_dict(ckpt["train_config"])
        model, _ = build_model(
            ckpt["model"]["name"], ckpt["model"]["kwargs"], ckpt["method"]["name"],
            ckpt["method"]["config"],
        )
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"cannot rebuild the model described in {path}: {err}") from err
    load_model_state(model, ckpt, str(path))
    done = ckpt["epoch"] - 1  # the last completed epoch; its freezes had happened
    for name in freezes_due(config, done):
        FREEZES[name](model)
    return model.eval(), ckpt


def check_model_size(ckpt: dict[str, Any], source: str) -> None:
    """CheckpointError unless the model ``ckpt["model"]`` describes, built on the meta device
    (nothing allocated), has no more values than ``model_state`` holds: its kwargs cannot
    ask for a model larger than the file."""
    name, kwargs = ckpt["model"]["name"], ckpt["model"]["kwargs"]
    try:
        with torch.device("meta"):
            skeleton = models.create(name, **kwargs)
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"cannot rebuild the model described in {source}: {err}") from err
    need = sum(t.numel() for t in skeleton.state_dict().values())
    have = sum(t.numel() for t in ckpt["model_state"].values())
    if need > have:
        raise CheckpointError(
            f"{source}: its model kwargs describe a {name} of {need:,} values, but its "
            f"model_state holds only {have:,}: the description does not match the weights "
            "(damaged file)"
        )


def _refused_global(err: Exception) -> str:
    """The object a weights_only load refused, without torch's advice to allow it."""
    match = re.search(r"GLOBAL (\S+)", str(err))
    return f"it refers to {match.group(1)}" if match else type(err).__name__
