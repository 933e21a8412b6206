r"""What a training run learns and how it is measured: the trainer's two tasks.

- :class:`Classification` (the default): a model of the zoo on a labelled dataset,
  cross-entropy, test accuracy.
- :class:`Distillation` (``TrainConfig.hf_model`` set): the encoder of a local pretrained
  Hugging Face / sentence-transformers model, its ``nn.Linear`` layers compressed by the
  method, trained on unlabelled text to reproduce the original full-precision model (the
  teacher, frozen). With token states :math:`s^{(l)}, t^{(l)}` of layer :math:`l`
  (:math:`l = 0` the embeddings), the mask :math:`m` and the pooled sentence embeddings
  :math:`\bar s, \bar t`, the loss of a batch is

  .. math:: \mathcal L = \operatorname{mean}_i\big(1 - \cos(\bar s_i, \bar t_i)\big)
            + \lambda\,\frac{1}{L}\sum_{l=1}^{L}
              \frac{\sum_{i,t} m_{it}\,\|s^{(l)}_{it} - t^{(l)}_{it}\|^2}
                   {\sum_{i,t} m_{it}\,\|t^{(l)}_{it}\|^2}

  (:math:`\lambda` = ``hidden_weight``): the embedding itself, and every layer's token states
  relative to their size, so that each block learns from its own target and not only through
  the 6 layers above it. Dropout is off in both models: the teacher's embeddings are
  deterministic targets. It is measured on held-out texts by the fidelity of
  :func:`apb.hf.fidelity` (mean cosine to the teacher's embeddings, Spearman of pairwise
  similarities, top-10 neighbour overlap); its score is the cosine.

  With ``hf_init="ptq"`` (method ``apb``) the student does not start from the pretrained
  weights binarized as they are, but from post-training APB (:func:`apb.methods.ptq_`, the
  settings of docs/ptq.md) calibrated on the ``eval_skip`` texts of ``eval_texts`` before the
  held-out ones; which weights stay at full precision is then fixed, and training moves the
  signs, ``α`` and the full-precision values.

  With ``hf_train="compressed"`` (the default) only the compressed layers learn (weights,
  biases, scales); embeddings, normalisations and the pooler keep the teacher's values,
  which the unlabelled training texts, of another domain than the held-out ones, would
  otherwise pull towards their own vocabulary.

A task gives the trainer its data (:meth:`load_data`), its model and method
(:meth:`build_model`), the loss of a batch (:meth:`loss`) and the test measurements
(:meth:`evaluate`); the loop, optimizers, checkpoints, resume and DDP are the trainer's own.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .. import data, methods
from ..data.subsets import evenly_spaced_indices
from ..data.texts import corpus
from ..hf import (
    MIN_CALIBRATION_TEXTS,
    MIN_EVAL_TEXTS,
    embed,
    fidelity,
    load_local,
    pool,
    text_batches,
)
from .build import build_model, model_kwargs_for
from .checkpoint import CheckpointError, check_model_size
from .config import TrainConfig
from .distributed import DistContext
from .evaluation import evaluate_sharded

HF_MODEL = "hf"
"""The model name a distillation checkpoint records (its kwargs: the directory)."""

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}

PTQ_INIT = {"dampening": 0.1, "block_size": 32, "bias_correction": True}
"""Solver settings of ``hf_init="ptq"``: those docs/ptq.md measured best on MiniLM."""


class Classification:
    """A model of the zoo on a labelled dataset (see the module docstring)."""

    score = "acc"

    def __init__(self, config: TrainConfig, ctx: DistContext):
        self.config, self.ctx = config, ctx
        self.collate = None

    def load_data(self, ckpt: dict[str, Any] | None) -> tuple[Dataset, Dataset]:
        c = self.config
        split = data.load(c.dataset, c.data_dir, **c.data_options)
        self.model_kwargs = (
            ckpt["model"]["kwargs"] if ckpt is not None else model_kwargs_for(
                c.model, split.input_shape, split.num_classes, c.activation, c.model_options)
        )
        self.test_set = data.evenly_spaced_subset(split.test, c.test_samples)
        return data.evenly_spaced_subset(split.train, c.train_samples), self.test_set

    def check_checkpoint(self, ckpt: dict[str, Any], source: str) -> None:
        check_model_size(ckpt, source)

    def build_model(self) -> tuple[nn.Module, methods.Method, dict[str, Any]]:
        c = self.config
        model, method = build_model(c.model, self.model_kwargs, c.method, c.method_options)
        return model, method, {"name": c.model, "kwargs": self.model_kwargs}

    def loss(self, net: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(loss, number of correct predictions, samples)`` of one batch."""
        inputs, labels = (t.to(self.ctx.device, non_blocking=True) for t in batch)
        logits = net(inputs)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)
        return loss, (logits.detach().argmax(dim=1) == labels).sum(), labels.numel()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        acc, loss = evaluate_sharded(model, self.test_set, self.config.eval_batch_size,
                                     self.ctx)
        return {"test_loss": loss, "test_acc": acc}


class _Texts(Dataset):
    def __init__(self, texts: list[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]


class Distillation:
    """A pretrained encoder compressed and distilled from itself (see the module docstring)."""

    score = "cosine"

    def __init__(self, config: TrainConfig, ctx: DistContext):
        self.config, self.ctx = config, ctx

    def load_data(self, ckpt: dict[str, Any] | None) -> tuple[Dataset, list[str]]:
        c = self.config
        held_out = corpus(c.eval_texts)[c.eval_skip:c.eval_skip + (c.test_samples or 512)]
        if len(held_out) < MIN_EVAL_TEXTS:
            raise ValueError(f"eval_texts {c.eval_texts!r} has {len(held_out)} texts after "
                             f"skipping {c.eval_skip}; at least {MIN_EVAL_TEXTS} are needed")
        unseen = set(held_out)
        train_texts = [t for t in corpus(c.texts) if t not in unseen]
        if c.train_samples is not None and c.train_samples < len(train_texts):
            train_texts = [train_texts[i] for i in
                           evenly_spaced_indices(len(train_texts), c.train_samples)]
        if not train_texts:
            raise ValueError(f"texts {c.texts!r} holds no text apart from the held-out ones")
        self.teacher = load_local(c.hf_model, **NO_DROPOUT)
        self.teacher.model.to(self.ctx.device).requires_grad_(False)
        self.tokenizer = self.teacher.tokenizer
        self.eval_batches = [
            {k: v.to(self.ctx.device) for k, v in b.items()}
            for b in text_batches(self.tokenizer, held_out, c.eval_batch_size, c.max_length)
        ]
        self.reference = embed(self.teacher.model, self.eval_batches, self.teacher.pooling)
        return _Texts(train_texts), held_out

    def check_checkpoint(self, ckpt: dict[str, Any], source: str) -> None:
        if ckpt["model"]["name"] != HF_MODEL:
            raise CheckpointError(f"{source} holds a {ckpt['model']['name']} model, not a "
                                  "distilled Hugging Face encoder")

    def build_model(self) -> tuple[nn.Module, methods.Method, dict[str, Any]]:
        c = self.config
        student = load_local(c.hf_model, **NO_DROPOUT).model
        pattern = re.compile(c.layers)
        chosen = lambda m, name: type(m) is nn.Linear and pattern.search(name) is not None  # noqa: E731
        method = methods.create(c.method, **c.method_options)
        if c.hf_init == "ptq":
            self._post_training(student, method.config, chosen)
            method = methods.APBMethod(dataclasses.replace(
                method.config, fp_fraction=None, bits_per_weight=None, budget_scope="layer"))
        else:
            student = method.prepare(student, chosen)
        if c.hf_train == "compressed":  # the rest stays the teacher's own, as it is stored
            keep = {f"{name}." for name, m in student.named_modules()
                    if hasattr(m, "weight_quantizer")}
            for name, p in student.named_parameters():
                p.requires_grad_(any(name.startswith(prefix) for prefix in keep))
        return student, method, {"name": HF_MODEL, "kwargs": {"directory": str(c.hf_model)}}

    def _post_training(self, student: nn.Module, apb: methods.APBConfig, chosen) -> None:
        """Post-training APB of ``student`` at the budget of ``apb``; the masks it chooses
        stay frozen through training."""
        c = self.config
        calibration = corpus(c.eval_texts)[:c.eval_skip]
        if len(calibration) < MIN_CALIBRATION_TEXTS:
            raise ValueError(f"hf_init='ptq' calibrates on the eval_skip={c.eval_skip} texts "
                             f"before the held-out ones; at least {MIN_CALIBRATION_TEXTS} are "
                             "needed")
        config = methods.APBPTQConfig(
            bits_per_weight=apb.bits_per_weight, fp_fraction=apb.fp_fraction,
            budget_scope=apb.budget_scope, per_channel=apb.per_channel,
            value_bits=apb.value_bits, **PTQ_INIT)
        pretrained = {name: m.weight.detach().clone() for name, m in student.named_modules()
                      if chosen(m, name)}
        methods.ptq_(student, config, text_batches(self.tokenizer, calibration, 64,
                                                   c.max_length), chosen, progress=False)
        with torch.no_grad():
            for name, weight in pretrained.items():
                layer = student.get_submodule(name)
                binary = layer.weight_quantizer.frozen_mask
                # Post-training leaves every binary latent weight at exactly ±α, as far from
                # a sign change as any other: give it back its pretrained magnitude (sign
                # kept) so that training can flip the weights that were close to zero.
                magnitude = weight.abs().clamp_min(1e-6 * float(weight.abs().mean()))
                layer.weight.copy_(torch.where(binary, layer.weight.sign() * magnitude,
                                               layer.weight))

    def collate(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(list(texts), padding=True, truncation=True,
                                   max_length=self.config.max_length, return_tensors="pt"))

    def loss(self, net: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(loss, sum of the embeddings' cosines to the teacher's, texts)`` of one batch."""
        batch = {k: v.to(self.ctx.device, non_blocking=True) for k, v in batch.items()}
        with torch.no_grad():
            target = self.teacher.model(**batch, output_hidden_states=True)
        out = net(**batch, output_hidden_states=True)
        mask = batch["attention_mask"]
        pooling = self.teacher.pooling
        cos = F.cosine_similarity(pool(out.last_hidden_state, mask, pooling),
                                  pool(target.last_hidden_state, mask, pooling), dim=-1)
        loss = (1 - cos).mean()
        if self.config.hidden_weight > 0:
            keep = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            layers = list(zip(out.hidden_states[1:], target.hidden_states[1:]))
            hidden = sum(((s - t).square() * keep).sum() / (t.square() * keep).sum()
                         for s, t in layers) / len(layers)
            loss = loss + self.config.hidden_weight * hidden
        return loss, cos.detach().sum(), cos.numel()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        result = fidelity(self.reference, embed(model, self.eval_batches, self.teacher.pooling))
        return {"test_loss": 1.0 - result["cosine"], "test_cosine": result["cosine"],
                "test_spearman": result["spearman"],
                "test_top10_overlap": result["top10_overlap"]}


def make_task(config: TrainConfig, ctx: DistContext) -> Classification | Distillation:
    """The task ``config`` asks for: distillation when ``hf_model`` is set."""
    return (Distillation if config.hf_model else Classification)(config, ctx)

