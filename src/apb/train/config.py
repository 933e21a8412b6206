"""The training configuration: one dataclass whose fields are the ``apb train`` flags."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import data, methods, models

OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("cosine", "none")
DEVICES = ("auto", "cpu", "cuda")
ACTIVATIONS = ("relu", "hardtanh")
HF_INITS = ("pretrained", "ptq")
HF_TRAIN = ("compressed", "all")


@dataclass
class TrainConfig:
    """Everything :func:`apb.train.train` needs; the defaults train LeNet-5 on MNIST-5k with APB.

    Model and data:
        model: architecture name from ``apb.models.available()``.
        model_options: extra keyword arguments of the model builder (e.g. ``{"hidden": [64]}``
            for ``mlp``); ``num_classes``, ``in_channels`` and the input size come from the
            dataset and ``activation`` from the field below, unless given here.
        dataset: name from ``apb.data.available()``.
        data_dir: where the dataset's files are (ignored by the shipped mnist5k and digits).
        data_options: extra keyword arguments of the dataset loader.
        train_samples, test_samples: train / test on this many samples only, taken at evenly
            spaced positions of each split (a quick run); None uses all of them.
        activation: ``"relu"`` or ``"hardtanh"`` (use hardtanh with 1- or 2-bit activations).

    Distillation of a pretrained transformer (:class:`apb.train.tasks.Distillation`):
        hf_model: a local Hugging Face / sentence-transformers model directory. When set, the
            run distils that encoder, its ``nn.Linear`` layers compressed by ``method``,
            from the original (frozen) model on unlabelled text; ``model``, ``dataset`` and
            ``activation`` are unused, ``train_samples`` / ``test_samples`` count texts.
        texts: the training texts: ``python-stdlib`` (docstrings of Python's standard
            library, ~12,500 sentences), ``python-docs`` or a file of one text per line.
        eval_texts: the held-out texts, from ``eval_skip`` on (``test_samples`` of them, 512
            by default); any of them found in ``texts`` is left out of training. The default
            (python-docs after the 512 that ``apb ptq --hf`` calibrates on) measures
            distilled and post-training models on the same texts.
        eval_skip: held-out texts start after this many of ``eval_texts``.
        layers: regular expression; the ``nn.Linear`` layers whose names it matches are
            compressed.
        max_length: tokens per text at most (longer texts are truncated).
        hidden_weight: weight of the per-layer token-state term of the loss (0: the
            embedding cosine alone).
        hf_init: ``"pretrained"``: the compressed layers start from the pretrained weights
            as the method compresses them; ``"ptq"`` (method ``apb`` with a budget): from
            post-training APB, its full-precision positions then fixed.
        hf_train: ``"compressed"``: only the compressed layers learn; ``"all"``: the
            embeddings, normalisations and pooler too.

    Compression:
        method: name from ``apb.methods.available()`` (``fp``, ``bnn``, ``apb``, ...).
        method_options: overrides of the method's config, ``apb.methods.create(method,
            **method_options)`` (e.g. ``{"act_bits": 2, "fp_fraction": 0.01}``).

    Optimisation (docs/design.md §1: the quantizer scales ``α, δ`` and activation clips get their own
    Adam optimizer; every other parameter goes to the main one):
        epochs: number of passes over the training set.
        batch_size: samples per step *per process*; under torchrun the global batch is
            ``batch_size * world_size``.
        eval_batch_size: samples per forward when evaluating.
        optimizer: main optimizer, ``"adam"`` or ``"sgd"`` (SGD uses ``momentum``).
        lr: peak learning rate of the main optimizer.
        momentum: SGD momentum.
        weight_decay: L2 weight decay of the main optimizer (5e-4 is typical with SGD).
        scheduler: ``"cosine"`` (per step, to 0 at the end) or ``"none"`` (constant);
            applies to both optimizers.
        warmup_epochs: linear warm-up from 0 over this many epochs (may be fractional).
        scale_lr: learning rate of the scales' Adam.
        scale_weight_decay: weight decay of ``α`` and the activation clips.
        delta_weight_decay: weight decay of ``δ``, the paper's knob between memory and
            accuracy: it pulls ``δ`` towards 0, narrowing the band, so more weights stay at
            full precision (more bytes, usually more accuracy).
        freeze_scales_epoch: at the start of this epoch (0-based) ``α, δ`` stop learning.
        freeze_masks_epoch: at the start of this epoch the band masks become fixed.
        label_smoothing: cross-entropy label smoothing in [0, 1).

    Run:
        seed: seeds Python, numpy and torch; the data order is a function of (seed, epoch).
        deterministic: ``torch.use_deterministic_algorithms(True, warn_only=True)``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        num_workers: DataLoader worker processes.
        out_dir: where ``last.pt``, ``best.pt``, ``metrics.jsonl`` and ``config.json`` go.
        resume: False, True (continue from ``out_dir/last.pt``) or a checkpoint path.
        overwrite: allow a fresh run into an ``out_dir`` that already holds a checkpoint.
        log_every: steps between progress-bar / log updates.
        progress: show a progress bar (only on a terminal, only on rank 0).
    """

    model: str = "lenet5"
    model_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "mnist5k"
    data_dir: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    train_samples: int | None = None
    test_samples: int | None = None
    activation: str = "relu"
    hf_model: str | None = None
    texts: str = "python-stdlib"
    eval_texts: str = "python-docs"
    eval_skip: int = 512
    layers: str = r"^encoder\."
    max_length: int = 128
    hidden_weight: float = 1.0
    hf_init: str = "pretrained"
    hf_train: str = "compressed"
    method: str = "apb"
    method_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 256
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    warmup_epochs: float = 0
    scale_lr: float = 1e-3
    scale_weight_decay: float = 0.0
    delta_weight_decay: float = 0.0
    freeze_scales_epoch: int | None = None
    freeze_masks_epoch: int | None = None
    label_smoothing: float = 0.0
    seed: int = 0
    deterministic: bool = True
    device: str = "auto"
    num_workers: int = 0
    out_dir: str = "runs/exp"
    resume: bool | str = False
    overwrite: bool = False
    log_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.out_dir, Path):
            self.out_dir = str(self.out_dir)
        if isinstance(self.data_dir, Path):
            self.data_dir = str(self.data_dir)
        if isinstance(self.hf_model, Path):
            self.hf_model = str(self.hf_model)
        if isinstance(self.resume, Path):
            self.resume = str(self.resume)
        self.validate()

    # -- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` (``TypeError`` for a value of the wrong type) naming the first
        field that is out of range."""
        for name in ("model", "dataset", "method", "out_dir"):
            _check_type(self, name, str)
            if not getattr(self, name):
                raise ValueError(f"TrainConfig.{name} must not be empty")
        for name in ("model_options", "data_options", "method_options"):
            _check_type(self, name, dict)
        if self.data_dir is not None:
            _check_type(self, "data_dir", str)
        if self.hf_model is not None:
            _check_type(self, "hf_model", str)
            if not self.hf_model:
                raise ValueError("TrainConfig.hf_model must be a model directory or None")
        for name in ("texts", "eval_texts", "layers"):
            _check_type(self, name, str)
            if not getattr(self, name):
                raise ValueError(f"TrainConfig.{name} must not be empty")
        try:
            re.compile(self.layers)
        except re.error as err:
            raise ValueError(f"TrainConfig.layers is not a regular expression ({err}): "
                             f"{self.layers!r}") from None
        _check_int(self, "eval_skip", low=0)
        _check_int(self, "max_length", low=2)
        _check_float(self, "hidden_weight", low=0.0)
        _check_choice(self, "hf_init", HF_INITS)
        _check_choice(self, "hf_train", HF_TRAIN)
        if self.hf_init == "ptq" and (self.method != "apb" or not (
                "bits_per_weight" in self.method_options
                or "fp_fraction" in self.method_options)):
            raise ValueError("TrainConfig.hf_init='ptq' starts from post-training APB: it needs "
                             "method 'apb' with bits_per_weight or fp_fraction in method_options")
        _check_choice(self, "activation", ACTIVATIONS)
        _check_choice(self, "optimizer", OPTIMIZERS)
        _check_choice(self, "scheduler", SCHEDULERS)
        _check_int(self, "epochs", low=1)
        _check_int(self, "batch_size", low=1)
        _check_int(self, "eval_batch_size", low=1)
        _check_int(self, "num_workers", low=0)
        _check_int(self, "log_every", low=1)
        _check_int(self, "seed", low=0, high=2**32 - 1)
        for name in ("train_samples", "test_samples"):
            if getattr(self, name) is not None:
                _check_int(self, name, low=1)
        _check_float(self, "lr", low=0.0, low_open=True)
        _check_float(self, "scale_lr", low=0.0)
        _check_float(self, "momentum", low=0.0, high=1.0, high_open=True)
        for name in ("weight_decay", "scale_weight_decay", "delta_weight_decay"):
            _check_float(self, name, low=0.0)
        _check_float(self, "label_smoothing", low=0.0, high=1.0, high_open=True)
        _check_float(self, "warmup_epochs", low=0.0, high=float(self.epochs))
        for name in ("freeze_scales_epoch", "freeze_masks_epoch"):
            if getattr(self, name) is not None:
                _check_int(self, name, low=0, high=self.epochs - 1,
                           hint="it is the 0-based epoch at whose start the freeze happens")
        for name in ("deterministic", "overwrite", "progress"):
            _check_type(self, name, bool)
        if not isinstance(self.resume, (bool, str)) or self.resume == "":
            raise ValueError(
                f"TrainConfig.resume must be True, False or a checkpoint path, got {self.resume!r}"
            )
        device = self.device
        if not isinstance(device, str) or not (
            device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit())
        ):
            raise ValueError(
                f"TrainConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
            )
        self._validate_registries()

    def _validate_registries(self) -> None:
        """Names and options checked against the registries, so a typo fails before training."""
        if self.model not in models.available():
            raise ValueError(
                f"unknown model {self.model!r}; available: {', '.join(models.available())}"
            )
        if self.dataset not in data.available():
            raise ValueError(
                f"unknown dataset {self.dataset!r}; available: {', '.join(data.available())}"
            )
        if methods.is_post_training(self.method):
            raise ValueError(
                f"method {self.method!r} compresses a trained model without training; train "
                f"with method 'fp', then run apb ptq (apb.methods.ptq_) on the checkpoint"
            )
        methods.create(self.method, **self.method_options)  # raises on a bad name / option

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config with ``values`` set (missing fields keep their defaults); unknown keys
        raise ``ValueError``."""
        if not isinstance(values, dict):
            raise TypeError(f"a TrainConfig is read from a dict, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown TrainConfig field(s) {', '.join(unknown)}; "
                f"fields are: {', '.join(sorted(known))}"
            )
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


def _check_type(config: TrainConfig, name: str, kind: type) -> None:
    value = getattr(config, name)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise TypeError(f"TrainConfig.{name} must be a {kind.__name__}, got {value!r}")


def _check_choice(config: TrainConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(
            f"TrainConfig.{name} must be one of {', '.join(choices)}, got {value!r}"
        )


def _check_int(config: TrainConfig, name: str, low: int, high: int | None = None,
               hint: str = "") -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"TrainConfig.{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(
            f"TrainConfig.{name} must be {bound}, got {value}" + (f" ({hint})" if hint else "")
        )


def _check_float(config: TrainConfig, name: str, low: float, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"TrainConfig.{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"TrainConfig.{name} must be finite, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        bound = f"in {left}{low}, {high}{right}" if high is not None else (
            f"> {low}" if low_open else f">= {low}"
        )
        raise ValueError(f"TrainConfig.{name} must be {bound}, got {value}")
