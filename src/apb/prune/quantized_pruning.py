r"""Automatic filter pruning of quantized networks, per-layer ratios by Bayesian optimisation.

Seed: Guerra et al., "Automatic Pruning for Quantized Neural Networks" (2020). A network that
is already binary or DoReFa k-bit loses whole filters, so the result is a smaller *dense*
quantized network that packs and runs on the same bitwise kernels; each layer's pruning
ratio is chosen by Bayesian optimisation under a budget on the model's bytes
(:mod:`apb.memory`, the one accounting), then the network is fine-tuned.

1. Channel groups (:func:`apb.prune.channel_graph.channel_groups`): the channels that go
   together (a filter, its BatchNorm entries, the next layers' input channels, every layer
   on the same residual stream). The network input and the logits are never pruned; the
   first layer's filters are (they shrink the second layer's inputs even when the first layer
   stays full precision).
2. Saliency (:mod:`apb.prune.filter_saliency`): a score per channel; a group pruned at
   ratio :math:`r_g` of its :math:`C_g` channels loses its
   :math:`\min(C_g - m, \lfloor r_g C_g \rfloor)` least salient ones (:math:`m` =
   ``min_channels``).
3. Budget: :math:`\mathrm{bytes}(r) \le B`, with :math:`B` = ``budget_bytes`` or
   :math:`(1 - \text{budget\_ratio})\,\mathrm{bytes}(\text{unpruned})`. Ratios come from
   *intensities* :math:`w_g \in [w_{min}, 1]` as :math:`r_g = \min(r_{max}, s\,w_g)` with the
   smallest :math:`s` that meets the budget (bisection: bytes never grow with :math:`s`), so
   every candidate meets the budget and spends it. Uniform ratios are :math:`w_g = 1`.
4. Bayesian optimisation (optuna's ``GPSampler``: a Gaussian-process surrogate with log
   expected improvement; or ``TPESampler``) over the intensities, maximising a cheap proxy:
   validation accuracy (a held-out part of the *training* split, never the test set) after
   the pruned network's BatchNorm statistics are re-estimated on a few training batches
   (and ``proxy_steps`` fine-tuning steps when asked). The uniform ratios are the first
   trial; the best trial wins, ties broken by validation loss.
5. Fine-tune the winner (Adam, cosine schedule) on the rest of the training split.

>>> pruned, report = prune_quantized(model, split.train, budget_ratio=0.25, trials=40,
...                                  finetune_epochs=2, seed=0)
>>> report.model_bytes <= report.budget_bytes
True
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data import held_out_split
from ..methods.obc_calib import recalibrate_batchnorm
from ..nn import BinaryWeightQuantizer, DoReFaWeightQuantizer, compressed_layers
from ..summary import summary
from ..train import TrainConfig, build_optimizers, build_scheduler, evaluate, train_step
from .channel_graph import ChannelGraphError, ChannelGroup, channel_groups, remove_channels
from .filter_saliency import CRITERIA, DATA_DRIVEN, filter_saliency

SAMPLERS = ("gp", "tpe")
RATIO_MODES = ("bo", "uniform")
MIN_INTENSITY = 0.02


class BudgetError(ValueError):
    """The size budget cannot be met by removing filters."""


@dataclass
class QuantizedPruningConfig:
    """Attributes:
    budget_ratio: size reduction asked for: model bytes at most (1 - budget_ratio) times the
        unpruned quantized model's (0.25: a quarter smaller). Ignored when budget_bytes is set.
    budget_bytes: the budget in model bytes (apb.memory accounting), instead of budget_ratio.
    criterion: filter saliency: bn_scale (the default: the most consistent in
        docs/quantized_pruning.md), variance or taylor (data-driven, on the quantized
        network), latent_l1 or random (see apb.methods.filter_saliency).
    trials: Bayesian-optimisation trials, the first being the uniform ratios.
    sampler: gp (optuna GPSampler: Gaussian process, log expected improvement) or tpe.
    max_ratio: no group loses more than this fraction of its channels.
    min_channels: every group keeps at least this many channels.
    val_samples: training samples held out (evenly spaced) for the proxy and its validation.
    proxy_batches: training batches that re-estimate BatchNorm statistics in each trial.
    proxy_steps: fine-tuning steps in each trial before that (0: BatchNorm re-estimation only).
    saliency_batches: training batches for the data-driven criteria (variance, taylor).
    batch_size: samples per training batch.
    finetune_epochs: epochs of fine-tuning after pruning (0: none).
    lr: peak learning rate of the fine-tuning Adam (cosine to 0); a tenth of the usual
        training rate, as fine-tuning a trained network goes.
    seed: seeds the sampler, the batches and the fine-tuning.
    """

    budget_ratio: float | None = 0.25
    budget_bytes: int | None = None
    criterion: str = "bn_scale"
    trials: int = 40
    sampler: str = "gp"
    max_ratio: float = 0.9
    min_channels: int = 1
    val_samples: int = 500
    proxy_batches: int = 8
    proxy_steps: int = 0
    saliency_batches: int = 8
    batch_size: int = 128
    finetune_epochs: int = 2
    lr: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number, got {value}")
        if self.budget_bytes is None and self.budget_ratio is None:
            raise ValueError("give a budget: budget_ratio (e.g. 0.25) or budget_bytes")
        if self.budget_bytes is None and not 0.0 < self.budget_ratio < 1.0:
            raise ValueError(f"budget_ratio is the size reduction, in (0, 1); got "
                             f"{self.budget_ratio}")
        if self.budget_bytes is not None and (
                isinstance(self.budget_bytes, bool) or not isinstance(self.budget_bytes, int)
                or self.budget_bytes < 1):
            raise ValueError(f"budget_bytes must be a positive integer, got {self.budget_bytes!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; criteria: "
                             f"{', '.join(CRITERIA)}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; samplers: {', '.join(SAMPLERS)}")
        if not 0.0 < self.max_ratio < 1.0:
            raise ValueError(f"max_ratio must lie in (0, 1), got {self.max_ratio}")
        for name, low in (("trials", 1), ("min_channels", 1), ("val_samples", 1),
                          ("proxy_batches", 1), ("proxy_steps", 0), ("saliency_batches", 1),
                          ("batch_size", 1), ("finetune_epochs", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PruningReport:
    """What :func:`prune_quantized` did. ``per_layer_ratio`` maps every layer whose filters
    were pruned to its group's ratio; ``channels`` maps each group to ``[kept, total]``;
    ``trials`` lists the Bayesian-optimisation trials (empty for uniform ratios)."""

    ratios: str
    seed: int
    criterion: str
    budget_bytes: int
    base_bytes: int
    model_bytes: int
    bits_per_weight: float
    base_params: int
    params: int
    per_layer_ratio: dict[str, float]
    channels: dict[str, list[int]]
    proxy_val_acc: float
    val_acc: float | None
    trials: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def check_quantized(model: nn.Module) -> None:
    """Raise ``ValueError`` unless ``model`` is a binary / DoReFa network: at least one
    compressed layer, every one with binary or DoReFa weights."""
    layers = list(compressed_layers(model))
    if not layers:
        raise ValueError("the network has no quantized layer (it is full precision); quantized "
                         "pruning takes a binary (bnn) or DoReFa network: train one with "
                         "--method bnn or --method dorefa")
    for name, layer in layers:
        wq = layer.weight_quantizer
        if not isinstance(wq, (BinaryWeightQuantizer, DoReFaWeightQuantizer)):
            raise ValueError(f"layer {name!r} is compressed with {type(wq).__name__} (method "
                             f"{wq.method!r}); quantized pruning takes binary (bnn) or DoReFa "
                             "networks")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _loader(dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    drop = len(dataset) > batch_size and len(dataset) % batch_size == 1  # no 1-sample BN batch
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      drop_last=drop)


def _first_batches(dataset: Dataset, count: int, batch_size: int, seed: int) -> list:
    batches = []
    for batch in _loader(dataset, batch_size, seed):
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


class QuantizedPruner:
    """The search state for one trained network: its channel groups, saliency, budget and
    data. ``model`` itself is never changed; :meth:`prune` returns pruned copies."""

    def __init__(self, model: nn.Module, train_data: Dataset,
                 config: QuantizedPruningConfig | None = None, *,
                 val_data: Dataset | None = None, example: torch.Tensor | None = None):
        self.config = config = config or QuantizedPruningConfig()
        config.validate()
        check_quantized(model)
        self.model = model
        self.groups: list[ChannelGroup] = channel_groups(model, example)
        if not self.groups:
            raise ChannelGraphError("the network has no channel that can be removed (only its "
                                    "input and output channels)")
        if val_data is None and config.val_samples >= len(train_data):
            raise ValueError(f"val_samples={config.val_samples} leaves nothing of the "
                             f"{len(train_data)} training samples to re-estimate BatchNorm and "
                             "fine-tune on")
        self.fit_data, self.val_data = (held_out_split(train_data, config.val_samples)
                                        if val_data is None else (train_data, val_data))
        self.base_bytes = summary(model).model_bytes
        self.base_params = parameter_count(model)
        self.budget_bytes = config.budget_bytes if config.budget_bytes is not None else (
            math.floor((1.0 - config.budget_ratio) * self.base_bytes))
        self._bytes_cache: dict[tuple[int, ...], int] = {}
        self.min_bytes = self.bytes_for(self.counts({g.name: config.max_ratio
                                                     for g in self.groups}))
        if self.min_bytes > self.budget_bytes:
            raise BudgetError(
                f"the budget of {self.budget_bytes:,} bytes is below what filter pruning can "
                f"reach: {self.min_bytes:,} bytes with every group at max_ratio="
                f"{config.max_ratio} (unpruned: {self.base_bytes:,}); raise the budget or "
                "max_ratio")
        saliency_batches = (_first_batches(self.fit_data, config.saliency_batches,
                                           config.batch_size, config.seed)
                            if config.criterion in DATA_DRIVEN else None)
        self.saliency = filter_saliency(model, self.groups, config.criterion, saliency_batches,
                                        seed=config.seed)

    # -- ratios and bytes -------------------------------------------------------------------
    def counts(self, ratios: dict[str, float]) -> tuple[int, ...]:
        """Channels each group keeps at ``ratios``."""
        m = self.config.min_channels
        return tuple(g.size - max(0, min(g.size - m, math.floor(ratios[g.name] * g.size + 1e-9)))
                     for g in self.groups)

    def bytes_for(self, counts: tuple[int, ...]) -> int:
        """Model bytes (apb.summary) of the network keeping ``counts`` channels per group."""
        if counts not in self._bytes_cache:
            keep = {g.name: torch.arange(n) for g, n in zip(self.groups, counts)}
            self._bytes_cache[counts] = summary(
                remove_channels(copy.deepcopy(self.model), self.groups, keep)).model_bytes
        return self._bytes_cache[counts]

    def ratios_for(self, intensities: Sequence[float]) -> dict[str, float]:
        """Per-group ratios :math:`\\min(r_{max}, s\\,w_g)` with the smallest ``s`` that meets
        the budget (see the module docstring), as applied: channels removed over channels.

        Group ``g`` loses its ``k``-th channel at :math:`s = k / (C_g w_g)`; bytes never grow
        with ``s``, so a binary search over these breakpoints finds the smallest one that fits.
        """
        w = [max(MIN_INTENSITY, float(x)) for x in intensities]
        if len(w) != len(self.groups):
            raise ValueError(f"need {len(self.groups)} intensities, got {len(w)}")
        r_max = self.config.max_ratio

        def counts(s: float) -> tuple[int, ...]:
            return self.counts({g.name: min(r_max, s * x) for g, x in zip(self.groups, w)})

        steps = sorted({0.0} | {k / (g.size * x) for g, x in zip(self.groups, w)
                                for k in range(1, math.floor(r_max * g.size + 1e-9) + 1)})
        lo, hi = 0, len(steps) - 1  # the last step has every group at max_ratio: it fits
        while lo < hi:
            mid = (lo + hi) // 2
            if self.bytes_for(counts(steps[mid])) <= self.budget_bytes:
                hi = mid
            else:
                lo = mid + 1
        kept = counts(steps[lo])
        return {g.name: (g.size - n) / g.size for g, n in zip(self.groups, kept)}

    def uniform_ratios(self) -> dict[str, float]:
        return self.ratios_for([1.0] * len(self.groups))

    # -- pruning and the proxy ----------------------------------------------------------------
    def prune(self, ratios: dict[str, float]) -> nn.Module:
        """A pruned copy of the network (not fine-tuned): each group keeps its most salient
        channels; the copy records its architecture (``apb_architecture``) when the network
        reports its widths."""
        keep = {}
        for group, n in zip(self.groups, self.counts(ratios)):
            top = torch.argsort(self.saliency[group.name], descending=True, stable=True)[:n]
            keep[group.name] = top.sort().values
        pruned = remove_channels(copy.deepcopy(self.model), self.groups, keep)
        arch = getattr(self.model, "apb_architecture", None)
        if arch is not None and hasattr(pruned, "width_kwargs"):
            pruned.apb_architecture = {"name": arch["name"],
                                       "kwargs": {**arch["kwargs"], **pruned.width_kwargs()}}
        return pruned

    def proxy(self, pruned: nn.Module, seed: int) -> tuple[float, float]:
        """``(val accuracy, val loss)`` of ``pruned`` after ``proxy_steps`` fine-tuning steps
        and BatchNorm re-estimation on ``proxy_batches`` training batches."""
        c = self.config
        if c.proxy_steps:
            batches = _first_batches(self.fit_data, c.proxy_steps, c.batch_size, seed + 1)
            _finetune_steps(pruned, batches, c.lr)
        recalibrate_batchnorm(pruned, _first_batches(self.fit_data, c.proxy_batches,
                                                     c.batch_size, seed),
                              next(pruned.parameters()).device)
        return evaluate(pruned, self.val_data, max(c.batch_size, 256))

    def search(self, seed: int, progress: bool = False) -> tuple[dict[str, float], list[dict]]:
        """The ratios of the best of ``trials`` Bayesian-optimisation trials, and every
        trial as ``{"per_group_ratio", "model_bytes", "val_acc", "val_loss"}``."""
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # not a line per trial
        sampler = (optuna.samplers.GPSampler(seed=seed) if self.config.sampler == "gp"
                   else optuna.samplers.TPESampler(seed=seed, multivariate=True))
        study = optuna.create_study(direction="maximize", sampler=sampler)
        keys = [f"w{i}" for i in range(len(self.groups))]
        study.enqueue_trial(dict.fromkeys(keys, 1.0))  # the uniform ratios come first
        log: list[dict] = []

        def objective(trial) -> float:
            ratios = self.ratios_for([trial.suggest_float(k, MIN_INTENSITY, 1.0)
                                      for k in keys])
            acc, loss = self.proxy(self.prune(ratios), seed)
            log.append({"per_group_ratio": ratios, "val_acc": acc, "val_loss": loss,
                        "model_bytes": self.bytes_for(self.counts(ratios))})
            return acc

        study.optimize(objective, n_trials=self.config.trials, show_progress_bar=progress)
        best = max(range(len(log)), key=lambda i: (log[i]["val_acc"], -log[i]["val_loss"], -i))
        return log[best]["per_group_ratio"], log

    def finetune(self, pruned: nn.Module, seed: int, progress: bool = False) -> nn.Module:
        """``finetune_epochs`` epochs of Adam (cosine to 0) on the fitting data, in place."""
        c = self.config
        if c.finetune_epochs == 0:
            return pruned
        loader = _loader(self.fit_data, c.batch_size, seed)
        tc = TrainConfig(epochs=c.finetune_epochs, lr=c.lr, scale_lr=c.lr,
                         batch_size=c.batch_size)
        main, scales = build_optimizers(pruned, tc)
        optimizers = [o for o in (main, scales) if o is not None]
        schedulers = [build_scheduler(o, tc, len(loader)) for o in optimizers]
        device = next(pruned.parameters()).device
        pruned.train()
        bar = tqdm(total=c.finetune_epochs * len(loader), desc="fine-tune", leave=False,
                   disable=not progress)
        for _ in range(c.finetune_epochs):
            for inputs, labels in loader:
                train_step(pruned, inputs.to(device), labels.to(device), optimizers, schedulers)
                bar.update(1)
        bar.close()
        if not all(torch.isfinite(p).all() for p in pruned.parameters()):
            raise FloatingPointError("fine-tuning diverged (NaN/Inf weights); lower lr")
        return pruned.eval()

    def run(self, ratios: str = "bo", seed: int | None = None, progress: bool = False
            ) -> tuple[nn.Module, PruningReport]:
        """Choose ratios (``"bo"`` or ``"uniform"``), prune, fine-tune: ``(model, report)``."""
        if ratios not in RATIO_MODES:
            raise ValueError(f"ratios must be one of {', '.join(RATIO_MODES)}, got {ratios!r}")
        seed = self.config.seed if seed is None else seed
        started = time.perf_counter()
        torch.manual_seed(seed)
        if ratios == "bo":
            chosen, trials = self.search(seed, progress)
        else:
            chosen, trials = self.uniform_ratios(), []
        pruned = self.prune(chosen)
        proxy_acc, _ = self.proxy(copy.deepcopy(pruned), seed)  # fine-tuning starts unchanged
        torch.manual_seed(seed)
        self.finetune(pruned, seed, progress)
        val_acc = evaluate(pruned, self.val_data, max(self.config.batch_size, 256))[0] \
            if self.config.finetune_epochs else proxy_acc
        pruned_summary = summary(pruned)
        model_bytes = pruned_summary.model_bytes
        if model_bytes > self.budget_bytes:  # the accounting and the solver must agree
            raise RuntimeError(f"pruned model holds {model_bytes} bytes, over the budget of "
                               f"{self.budget_bytes}: please report this bug")
        counts = self.counts(chosen)
        report = PruningReport(
            ratios=ratios, seed=seed, criterion=self.config.criterion,
            budget_bytes=self.budget_bytes, base_bytes=self.base_bytes, model_bytes=model_bytes,
            bits_per_weight=pruned_summary.bits_per_weight,
            base_params=self.base_params, params=parameter_count(pruned),
            per_layer_ratio={p: chosen[g.name] for g in self.groups for p in g.producers},
            channels={g.name: [n, g.size] for g, n in zip(self.groups, counts)},
            proxy_val_acc=proxy_acc, val_acc=val_acc, trials=trials,
            seconds=round(time.perf_counter() - started, 3),
        )
        return pruned, report


def _finetune_steps(model: nn.Module, batches: list, lr: float) -> None:
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    device = next(model.parameters()).device
    model.train()
    for inputs, labels in batches:
        train_step(model, inputs.to(device), labels.to(device), [optimizer])
    model.eval()


def prune_quantized(
    model: nn.Module,
    train_data: Dataset,
    config: QuantizedPruningConfig | None = None,
    *,
    val_data: Dataset | None = None,
    ratios: str = "bo",
    progress: bool = False,
    **options,
) -> tuple[nn.Module, PruningReport]:
    """Prune the filters of a trained binary / DoReFa ``model`` to a size budget and
    fine-tune it; returns ``(pruned copy, report)`` and leaves ``model`` as it was.

    ``train_data``: the training split, ``(input, label)`` pairs; ``val_samples`` of it are held
    out for the proxy unless ``val_data`` is given. ``ratios``: ``"bo"`` (Bayesian-optimised
    per-layer ratios) or ``"uniform"``. ``options`` set fields of
    :class:`QuantizedPruningConfig` (``budget_ratio=0.25``, ``trials=40``,
    ``finetune_epochs=2``, ``seed=0``, ``criterion="taylor"``, ...).

    Raises ``ValueError`` for a network that is not binary / DoReFa, :class:`BudgetError`
    for a budget filter pruning cannot reach, :class:`ChannelGraphError` for an architecture
    whose channels cannot be removed consistently.
    """
    if options:
        names = {f.name for f in fields(QuantizedPruningConfig)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"prune_quantized got unknown option(s) {', '.join(unknown)}; "
                            f"options: {', '.join(sorted(names))}")
        base = asdict(config) if config is not None else {}
        if "budget_bytes" in options and "budget_ratio" not in options:
            base["budget_ratio"] = None
        config = QuantizedPruningConfig(**{**base, **options})
    pruner = QuantizedPruner(model, train_data, config, val_data=val_data)
    return pruner.run(ratios, progress=progress)
