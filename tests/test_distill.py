"""Distilling a compressed transformer from its own full-precision original through the
trainer (apb.train.tasks.Distillation): a tiny BERT built here with random weights runs the
whole path, a few steps; the real MiniLM runs in docs/results.md."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import apb  # noqa: E402
from apb.data.texts import corpus, python_docs_sentences  # noqa: E402
from apb.train import CheckpointError, TrainConfig, load_checkpoint, read_metrics, train  # noqa: E402
from apb.train.distributed import DistContext  # noqa: E402
from apb.train.tasks import Distillation  # noqa: E402
from test_hf import save_tiny_bert  # noqa: E402

pytestmark = pytest.mark.xdist_group("distill")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-bert")
    save_tiny_bert(directory, hidden=32, seed=1)
    return directory


def config(bert_dir, out_dir, **changes) -> TrainConfig:
    values = {"hf_model": str(bert_dir), "method": "apb",
              "method_options": {"fp_fraction": 0.05}, "texts": "python-docs",
              "train_samples": 48, "test_samples": 20, "eval_skip": 0, "epochs": 2,
              "batch_size": 16, "eval_batch_size": 16, "lr": 1e-3, "out_dir": str(out_dir),
              "progress": False, "hidden_weight": 0.5}
    values.update(changes)
    return TrainConfig(**values)


def test_the_stdlib_corpus_is_real_prose_disjoint_from_the_held_out_texts():
    stdlib = corpus("python-stdlib")
    assert len(stdlib) > 5000 and len(set(stdlib)) == len(stdlib)
    assert all(20 <= len(s) <= 300 and s[0].isupper() and s[-1] in ".!?" for s in stdlib)
    assert corpus("python-stdlib") == stdlib  # the same order every time


def test_loss_is_the_documented_formula(bert_dir, tmp_path):
    c = config(bert_dir, tmp_path)
    task = Distillation(c, DistContext(0, 1, 0, torch.device("cpu")))
    train_set, held_out = task.load_data(None)
    assert not set(train_set.texts) & set(held_out)
    assert held_out == python_docs_sentences()[:20]
    student, _, record = task.build_model()
    assert record == {"name": "hf", "kwargs": {"directory": str(bert_dir)}}
    assert sum(isinstance(m, apb.nn.QuantLinear) for m in student.modules()) == 12  # 2 layers
    batch = task.collate(train_set.texts[:5])
    loss, cos_sum, count = task.loss(student, batch)
    # Independently: mean-pooled embeddings, then each layer's masked relative error.
    teacher = task.teacher.model
    with torch.no_grad():
        t = teacher(**batch, output_hidden_states=True).hidden_states
        s = student(**batch, output_hidden_states=True).hidden_states
    m = batch["attention_mask"].float()
    mean = lambda h: (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)  # noqa: E731
    cos = F.cosine_similarity(mean(s[-1]), mean(t[-1]), dim=1)
    hidden = [((a - b) ** 2 * m[..., None]).sum() / (b ** 2 * m[..., None]).sum()
              for a, b in zip(s[1:], t[1:])]
    expected = (1 - cos).mean() + 0.5 * sum(hidden) / len(hidden)
    assert count == 5
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cos_sum, cos.sum(), rtol=1e-5, atol=1e-6)
    assert loss.requires_grad


def test_distillation_learns_checkpoints_and_resumes_bit_identically(bert_dir, tmp_path,
                                                                     monkeypatch):
    # bnn from random weights: far from the teacher at first, so there is something to learn.
    common = {"method": "bnn", "method_options": {}, "epochs": 3}
    straight = train(config(bert_dir, tmp_path / "straight", **common))
    first, last = straight.history[0], straight.history[-1]
    assert straight.score == "cosine"
    assert {"test_cosine", "test_spearman", "test_top10_overlap", "train_cosine",
            "bits_per_weight"} <= set(last)
    assert last["test_loss"] == pytest.approx(1 - last["test_cosine"])
    assert last["train_loss"] < first["train_loss"]
    assert straight.best_test_acc == max(r["test_cosine"] for r in straight.history)
    assert read_metrics(straight.metrics_path) == straight.history
    ckpt = load_checkpoint(straight.last_checkpoint)
    assert ckpt["model"]["name"] == "hf" and ckpt["epoch"] == 3

    method_class = type(apb.methods.create("bnn"))
    original = method_class.on_step

    class Preempted(Exception):
        pass

    def on_step(self, model, progress):
        if progress >= 0.5:
            raise Preempted
        return original(self, model, progress)

    monkeypatch.setattr(method_class, "on_step", on_step)
    with pytest.raises(Preempted):
        train(config(bert_dir, tmp_path / "resumed", **common))
    monkeypatch.setattr(method_class, "on_step", original)
    resumed = train(config(bert_dir, tmp_path / "resumed", resume=True, **common))
    assert resumed.epochs_run == 2
    timeless = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert timeless(resumed.history) == timeless(straight.history)
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    with pytest.raises(CheckpointError, match="hf_model|texts"):
        train(config(bert_dir, tmp_path / "resumed", resume=True, texts="python-stdlib",
                     **common))


def test_cli_distils_and_bad_input_is_one_line(bert_dir, tmp_path):
    out = tmp_path / "cli"
    args = [sys.executable, "-m", "apb.cli", "train", "--hf-model", str(bert_dir),
            "--texts", "python-docs", "--eval-skip", "0", "--train-samples", "32",
            "--test-samples", "12", "--epochs", "1", "--batch-size", "16", "--method", "bnn",
            "--out-dir", str(out), "--no-progress"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < record["test_cosine"] <= 1 and record["bits_per_weight"] > 1
    args[args.index("--hf-model") + 1] = str(tmp_path / "missing")
    args[args.index("--out-dir") + 1] = str(tmp_path / "bad")
    bad = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "not a directory" in bad.stderr


def test_ptq_start_keeps_the_post_training_masks(bert_dir, tmp_path):
    options = {"fp_fraction": 0.05, "per_channel": True}
    with pytest.raises(ValueError, match="hf_init='ptq'"):
        config(bert_dir, tmp_path / "x", hf_init="ptq", method="bnn", method_options={})
    with pytest.raises(ValueError, match="at least 8"):
        train(config(bert_dir, tmp_path / "few", hf_init="ptq", method_options=options,
                     eval_skip=4))
    c = config(bert_dir, tmp_path / "ptq", hf_init="ptq", method_options=options, eval_skip=32,
               epochs=1)
    task = Distillation(c, DistContext(0, 1, 0, torch.device("cpu")))
    task.load_data(None)
    student, method, _ = task.build_model()
    layers = [m for m in student.modules() if isinstance(m, apb.nn.QuantLinear)]
    assert len(layers) == 12
    masks = [m.weight_quantizer.frozen_mask.clone() for m in layers]
    assert all(bool(m.weight_quantizer.mask_frozen) for m in layers)
    # Binary latent weights carry their pretrained magnitudes (so training can flip the
    # small ones); what the layer computes with is still ±α there.
    teacher = dict(task.teacher.model.named_modules())
    for name, m in student.named_modules():
        if isinstance(m, apb.nn.QuantLinear):
            binary = m.weight_quantizer.frozen_mask
            torch.testing.assert_close(m.weight.abs()[binary],
                                       teacher[name].weight.abs()[binary], rtol=0, atol=1e-6)
            alpha = m.weight_quantizer.alpha.detach().view(-1, 1).expand_as(m.weight)
            torch.testing.assert_close(m.quantized_weight().detach().abs()[binary],
                                       alpha[binary])
    fp = sum(int((~mask).sum()) for mask in masks)
    total = sum(mask.numel() for mask in masks)
    assert fp == pytest.approx(0.05 * total, abs=len(layers))
    result = train(c)
    trained = [m for m in result.model.modules() if isinstance(m, apb.nn.QuantLinear)]
    assert all(torch.equal(a, m.weight_quantizer.frozen_mask) for a, m in zip(masks, trained))
    assert result.stats["fp_fraction"] == pytest.approx(fp / total)
