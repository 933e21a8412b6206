"""The training loop: ``train(config)`` compresses a model while it learns.

One run, in order: load the data, build the model (``models.create``), let the method
rewrite it (``method.prepare``), build the two optimizers (main + quantizer scales) and
their per-step schedules, then per epoch:

1. freezes due at the start of the epoch (``freeze_scales_epoch``, ``freeze_masks_epoch``);
2. one pass over the training set, calling ``method.on_step(model, step / total_steps)``
   before every forward;
3. after the last epoch, ``method.finalize(model)``;
4. test accuracy and loss, ``method.stats``, one line in ``metrics.jsonl``, ``last.pt``
   (and ``best.pt`` when the test accuracy improved), written atomically by rank 0.

Exact resume: the data order is a function of (seed, epoch) alone and the checkpoint holds
every optimizer, scheduler and RNG state, so ``resume=True`` continues bit for bit where an
uninterrupted run would have been.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from .._version import __version__
from ..io import atomic_write_text
from . import distributed
from .build import FREEZES, freeze_epoch, freezes_due
from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointError,
    load_checkpoint,
    load_model_state,
    repair_best,
    save_checkpoint,
)
from .config import TrainConfig
from .distributed import DistContext
from .evaluation import accuracy_and_loss
from .metrics import MetricsLog, jsonable
from .optim import build_optimizers, build_scheduler
from .seeding import determinism, rng_state, seed_everything, set_rng_state
from .step import optimizer_step
from .tasks import make_task

logger = logging.getLogger("apb.train")

RESUME_MUST_MATCH = (
    "model", "model_options", "dataset", "data_options", "train_samples", "activation",
    "method", "method_options", "optimizer", "hf_model", "texts", "layers", "hf_init",
    "hf_train",
)
"""Fields a resumed run must share with its checkpoint: they decide the model's structure,
its data and its optimizer state."""

RESUME_FREE = (
    "out_dir", "resume", "overwrite", "progress", "log_every", "num_workers", "device",
    "data_dir", "eval_batch_size", "test_samples", "deterministic", "eval_texts", "eval_skip",
)
"""Fields a resumed run may change without a warning; any other change is allowed but
logged, since the run then no longer reproduces an uninterrupted one."""


@dataclass
class TrainResult:
    """What :func:`train` returns (accuracies are fractions in [0, 1]).

    Attributes:
        best_test_acc, best_epoch: best test accuracy over the epochs and its 0-based epoch
            (distillation: the held-out embedding cosine, ``score`` says which).
        final_test_acc, final_test_loss: after the last epoch and ``method.finalize``.
        score: what ``*_test_acc`` hold: ``"acc"``, or ``"cosine"`` for distillation.
        final_metrics: every test measurement after the last epoch.
        epochs_run: epochs trained by this call (fewer than ``epochs`` after a resume).
        epochs_completed: epochs the model has been trained for in total.
        stats: ``method.stats(model)`` at the end (bits_per_weight, fp_fraction, model_bytes).
        out_dir, last_checkpoint, best_checkpoint, metrics_path: where the files are.
        history: the per-epoch metrics records (also in ``metrics.jsonl``).
        model: the trained model (not wrapped in DDP), on the training device.
    """

    best_test_acc: float
    best_epoch: int
    final_test_acc: float
    final_test_loss: float
    epochs_run: int
    epochs_completed: int
    stats: dict[str, Any]
    out_dir: str
    last_checkpoint: str
    best_checkpoint: str
    metrics_path: str
    history: list[dict[str, Any]]
    score: str = "acc"
    final_metrics: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Every field but ``model``, JSON-serialisable."""
        return jsonable({
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"
        })


def train(config: TrainConfig) -> TrainResult:
    """Train ``config.model`` on ``config.dataset`` compressed with ``config.method``.

    Seeds the global RNGs (:func:`seed_everything`) and, with ``deterministic``, asks for
    deterministic kernels for the duration of the call. Under ``torchrun`` every process
    calls this; they train data-parallel and only rank 0 writes files.

    Raises ``ValueError`` for a bad configuration, :class:`CheckpointError` for a
    checkpoint that cannot be resumed, ``FloatingPointError`` when the loss diverges.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train() takes a TrainConfig, got {type(config).__name__}")
    config.validate()
    ctx = distributed.setup(config.device)
    try:
        with determinism(config.deterministic):
            return _Run(config, ctx).run()
    finally:
        distributed.teardown(ctx)


# -- data -----------------------------------------------------------------------------------
def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of the DataLoader's generator (worker seeds, random transforms in workers)
    for one epoch on one rank: a function of (seed, epoch, rank) alone."""
    return ((seed * 1_000_003 + epoch) * 1_009 + rank) % (2**63)


def _seed_worker(worker_id: int) -> None:
    worker_seed = torch.initial_seed() % 2**32  # the DataLoader gave each worker its own
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_train_loader(
    dataset: Dataset, config: TrainConfig, ctx: DistContext, collate_fn=None
) -> tuple[DataLoader, DistributedSampler]:
    """The training loader. Its order is a function of (seed, epoch): a ``DistributedSampler``
    (one replica when alone) shuffled with ``seed + epoch`` after ``set_epoch``; each rank
    gets a disjoint shard (padded by repeating a few samples to equal length)."""
    sampler = DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=config.seed,
        drop_last=False,
    )
    per_rank = len(sampler)
    if per_rank == 0:
        raise ValueError("the training set is empty")
    # BatchNorm cannot normalise a batch of one sample in training mode.
    drop_last = per_rank > 1 and per_rank % config.batch_size == 1
    loader = DataLoader(
        dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
        drop_last=drop_last, generator=torch.Generator(), worker_init_fn=_seed_worker,
        pin_memory=ctx.device.type == "cuda", collate_fn=collate_fn,
    )
    return loader, sampler


# -- the run ----------------------------------------------------------------------------------
class _Run:
    """The state of one call of :func:`train`."""

    def __init__(self, config: TrainConfig, ctx: DistContext):
        self.config = config
        self.ctx = ctx
        self.task = make_task(config, ctx)
        self.out_dir = Path(config.out_dir)
        self.last_path = self.out_dir / "last.pt"
        self.best_path = self.out_dir / "best.pt"
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl")
        self.epoch = 0
        self.global_step = 0
        self.best_acc = -1.0
        self.best_epoch = -1
        self.history: list[dict[str, Any]] = []
        self.frozen: set[str] = set()
        self.final_metrics: dict[str, float] = {}

    # -- set-up ------------------------------------------------------------------------------
    def _resume_checkpoint(self) -> dict[str, Any] | None:
        c = self.config
        if c.resume is False:
            if self.last_path.exists() and not c.overwrite:
                raise ValueError(
                    f"{self.out_dir} already holds a run ({self.last_path.name}); pass "
                    "resume=True to continue it, overwrite=True to start over, or another out_dir"
                )
            return None
        path = self.last_path if c.resume is True else Path(c.resume)
        if not path.exists():
            raise CheckpointError(
                f"cannot resume: no checkpoint at {path}"
                + (" (resume=True continues from out_dir/last.pt)" if c.resume is True else "")
            )
        ckpt = load_checkpoint(path)
        self.task.check_checkpoint(ckpt, str(path))
        self._check_resumable(ckpt, path)
        if path == self.last_path and self.ctx.is_main:
            repair_best(self.last_path, self.best_path, ckpt)
        return ckpt

    def _check_resumable(self, ckpt: dict[str, Any], path: Path) -> None:
        c, old = self.config, ckpt["train_config"]
        clashes = [k for k in RESUME_MUST_MATCH if old.get(k) != getattr(c, k)]
        if clashes:
            was = ", ".join(f"{k}={old.get(k)!r}" for k in clashes)
            now = ", ".join(f"{k}={getattr(c, k)!r}" for k in clashes)
            raise CheckpointError(
                f"cannot resume from {path}: it was trained with {was}, this run asks for "
                f"{now}; use the same values or a new out_dir"
            )
        if ckpt["epoch"] > c.epochs:
            raise CheckpointError(
                f"cannot resume from {path}: it has trained {ckpt['epoch']} epochs, more than "
                f"epochs={c.epochs}"
            )
        if ckpt["finalized"] and ckpt["epoch"] < c.epochs:
            raise CheckpointError(
                f"cannot resume from {path}: that run finished (finalized) after "
                f"{ckpt['epoch']} epochs; train a new run to go further"
            )
        changed = [
            k for k in c.to_dict()
            if k not in RESUME_MUST_MATCH + RESUME_FREE and old.get(k) != getattr(c, k)
        ]
        if changed:
            logger.warning(
                "resuming with changed %s: the result will differ from an uninterrupted run",
                ", ".join(f"{k} ({old.get(k)!r} -> {getattr(c, k)!r})" for k in changed),
            )
        if ckpt["world_size"] != self.ctx.world_size:
            logger.warning(
                "resuming a run trained by %d process(es) with %d: the data order changes",
                ckpt["world_size"], self.ctx.world_size,
            )

    def _restore(self, ckpt: dict[str, Any], source: str) -> None:
        load_model_state(self.model, ckpt, source)
        try:
            self.main_opt.load_state_dict(ckpt["optimizer_state"])
            self.main_sched.load_state_dict(ckpt["scheduler_state"])
            if self.scale_opt is not None:
                self.scale_opt.load_state_dict(ckpt["scale_optimizer_state"])
                self.scale_sched.load_state_dict(ckpt["scale_scheduler_state"])
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(
                f"the optimizer state in {source} does not fit this run's optimizers: {err}"
            ) from err
        self.epoch = ckpt["epoch"]
        self.global_step = ckpt["global_step"]
        self.best_acc = ckpt["best_test_acc"]
        self.best_epoch = ckpt["best_epoch"]
        self.history = list(ckpt["history"])
        rngs = ckpt["rng"]
        if len(rngs) == self.ctx.world_size:
            set_rng_state(rngs[self.ctx.rank])
        # With another number of processes the rank-seeded state stands (warned above).

    def run(self) -> TrainResult:
        c, ctx = self.config, self.ctx
        ckpt = self._resume_checkpoint()
        train_set, _ = self.task.load_data(ckpt)
        seed_everything(c.seed)
        self.model, self.method, self.model_record = self.task.build_model()
        self.model.to(ctx.device)
        self.main_opt, self.scale_opt = build_optimizers(self.model, c)
        self.loader, self.sampler = make_train_loader(train_set, c, ctx, self.task.collate)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * c.epochs
        self.main_sched = build_scheduler(self.main_opt, c, self.steps_per_epoch)
        self.scale_sched = (
            build_scheduler(self.scale_opt, c, self.steps_per_epoch) if self.scale_opt else None
        )
        # Ranks share the initial weights but not their random streams (dropout, transforms).
        seed_everything((c.seed + ctx.rank) % 2**32)
        if ckpt is not None:
            self._restore(ckpt, str(c.resume if c.resume is not True else self.last_path))
            logger.info("resuming %s at epoch %d", c.out_dir, self.epoch)
        start_epoch = self.epoch
        if ctx.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / "config.json", json.dumps(c.to_dict(), indent=2))
            self.metrics.reset(self.history)

        net = None
        for epoch in range(start_epoch, c.epochs):
            events = self._apply_freezes(epoch)
            if net is None or events:  # DDP must learn which parameters still learn
                net = distributed.wrap(self.model, ctx)
            self._train_epoch(net, epoch, events)

        if start_epoch == c.epochs:  # nothing left to train: report the checkpoint's model
            self._evaluate()
            self.stats = jsonable(self.method.stats(self.model))
        return TrainResult(
            best_test_acc=self.best_acc, best_epoch=self.best_epoch,
            final_test_acc=self.final_acc, final_test_loss=self.final_loss,
            epochs_run=c.epochs - start_epoch, epochs_completed=c.epochs, stats=self.stats,
            out_dir=str(self.out_dir), last_checkpoint=str(self.last_path),
            best_checkpoint=str(self.best_path), metrics_path=str(self.metrics.path),
            history=self.history, score=self.task.score, final_metrics=self.final_metrics,
            model=self.model,
        )

    def _evaluate(self) -> None:
        self.final_metrics = self.task.evaluate(self.model)
        self.final_loss = self.final_metrics["test_loss"]
        self.final_acc = self.final_metrics[f"test_{self.task.score}"]

    # -- one epoch ----------------------------------------------------------------------------
    def _apply_freezes(self, epoch: int) -> list[str]:
        """Apply the freezes due at the start of ``epoch``; returns those that happen now.

        A resumed run re-applies the earlier ones too, without recording them again, so
        its metrics read as those of an uninterrupted run.
        """
        events = []
        for name in freezes_due(self.config, epoch):
            if name in self.frozen:
                continue
            FREEZES[name](self.model)
            self.frozen.add(name)
            at = freeze_epoch(self.config, name)
            if at == epoch:
                events.append(name)
            if self.ctx.is_main:
                logger.info("epoch %d: %s%s", epoch, name,
                            "" if at == epoch else f" (of epoch {at}, re-applied on resume)")
        return events

    def _train_epoch(self, net: nn.Module, epoch: int, events: list[str]) -> None:
        c, ctx = self.config, self.ctx
        started = time.perf_counter()
        self.sampler.set_epoch(epoch)
        self.loader.generator.manual_seed(_epoch_seed(c.seed, epoch, ctx.rank))
        optimizers = [o for o in (self.main_opt, self.scale_opt) if o is not None]
        schedulers = [s for s in (self.main_sched, self.scale_sched) if s is not None]
        lr = self.main_opt.param_groups[0]["lr"]
        scale_lr = self.scale_opt.param_groups[0]["lr"] if self.scale_opt else None
        sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)
        bar = tqdm(
            total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{c.epochs}", leave=False,
            dynamic_ncols=True,
            disable=not (c.progress and ctx.is_main and sys.stderr.isatty()),
        )
        net.train()
        score = self.task.score
        for step, batch in enumerate(self.loader):
            self.method.on_step(self.model, self.global_step / self.total_steps)
            loss, batch_score, count = self.task.loss(net, batch)
            optimizer_step(loss, optimizers, schedulers)
            self.global_step += 1
            with torch.no_grad():
                sums[0] += loss.detach().double() * count
                sums[1] += batch_score
                sums[2] += count
            bar.update(1)
            if (step + 1) % c.log_every == 0 and ctx.is_main:
                loss_so_far, score_so_far = float(sums[0] / sums[2]), float(sums[1] / sums[2])
                if bar.disable:  # no terminal: leave a trace in the log instead
                    logger.info("epoch %d/%d step %d/%d  loss %.4f %s %.4f", epoch + 1,
                                c.epochs, step + 1, self.steps_per_epoch, loss_so_far, score,
                                score_so_far)
                else:
                    bar.set_postfix({"loss": f"{loss_so_far:.4f}", score: f"{score_so_far:.4f}"})
        bar.close()
        samples_per_rank = [int(n) for n in distributed.all_gather_objects(ctx, int(sums[2]))]
        train_acc, train_loss = accuracy_and_loss(distributed.all_reduce_sum(ctx, sums))
        if not math.isfinite(train_loss):
            raise FloatingPointError(
                f"training diverged: the mean train loss of epoch {epoch} is {train_loss}; "
                "lower lr or scale_lr"
            )

        distributed.broadcast_buffers(self.model, ctx)
        finished = epoch == c.epochs - 1
        if finished:
            self.method.finalize(self.model)
            events = [*events, "finalize"]
        self._evaluate()
        test_acc = self.final_acc
        self.stats = stats = jsonable(self.method.stats(self.model))
        if test_acc > self.best_acc:
            self.best_acc, self.best_epoch = test_acc, epoch
        self.epoch = epoch + 1
        record = {
            "epoch": epoch, "step": self.global_step, "lr": lr, "scale_lr": scale_lr,
            "train_loss": train_loss, f"train_{score}": train_acc, **self.final_metrics,
            **stats,
            "samples_per_rank": samples_per_rank, "events": events,
            "seconds": round(time.perf_counter() - started, 3),
        }
        self.history.append(jsonable(record))
        rngs = distributed.all_gather_objects(ctx, rng_state())
        if ctx.is_main:
            state = self._checkpoint_state(finished, rngs)
            # last.pt first: it records whether this epoch is the best, so a crash before
            # best.pt is written is repaired on resume (repair_best) from last.pt itself.
            save_checkpoint(state, self.last_path)
            if self.best_epoch == epoch:
                save_checkpoint(state, self.best_path)
            self.metrics.append(self.history[-1])
            logger.info(
                "epoch %d/%d  train loss %.4f %s %.4f  test loss %.4f %s %.4f  "
                "fp_fraction %s  bits/weight %s  %.1fs",
                epoch + 1, c.epochs, train_loss, score, train_acc, self.final_loss, score,
                test_acc,
                stats.get("fp_fraction"), stats.get("bits_per_weight"), record["seconds"],
            )
        distributed.barrier(ctx)

    def _checkpoint_state(self, finished: bool, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything a resumed run needs (see :mod:`apb.train.checkpoint` for the layout)."""
        c = self.config
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "finalized": finished,
            "best_test_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "model": jsonable(self.model_record),
            "method": {"name": self.method.name,
                       "config": jsonable(dataclasses.asdict(self.method.config))},
            "train_config": c.to_dict(),
            "model_state": self.model.state_dict(),
            "optimizer_state": self.main_opt.state_dict(),
            "scale_optimizer_state": self.scale_opt.state_dict() if self.scale_opt else None,
            "scheduler_state": self.main_sched.state_dict(),
            "scale_scheduler_state": self.scale_sched.state_dict() if self.scale_sched else None,
            "rng": rngs,
            "world_size": self.ctx.world_size,
            "history": self.history,
            "stats": self.stats,
            "versions": {"apb": str(__version__), "torch": str(torch.__version__)},
        }
