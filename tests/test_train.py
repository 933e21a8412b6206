"""Tests of apb.train: config validation, exact resume, atomic checkpoints, metrics, freezes.

Every run trains a small MLP (two hidden layers, so the middle one is compressed) on the
real ``digits`` data for a few epochs: a few tenths of a second per epoch on two cores.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import apb
from apb.nn import scale_parameters
from apb.train import (
    CHECKPOINT_VERSION,
    CheckpointError,
    TrainConfig,
    build_model_from_checkpoint,
    evaluate,
    load_checkpoint,
    read_metrics,
    save_checkpoint,
    seed_everything,
    train,
)
from apb.train import checkpoint as checkpoint_module
from apb.train.distributed import DistContext
from apb.train.optim import warmup_cosine
from apb.train.seeding import rng_state, set_rng_state
from apb.train.trainer import make_train_loader

EPOCH_FIELDS = {
    "epoch", "step", "lr", "scale_lr", "train_loss", "train_acc", "test_loss", "test_acc",
    "bits_per_weight", "fp_fraction", "model_bytes", "samples_per_rank", "events", "seconds",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one thread beats two contending for a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(out_dir: Path, **changes) -> TrainConfig:
    values = {
        "model": "mlp", "model_options": {"hidden": [32, 32]}, "dataset": "digits",
        "method": "apb", "epochs": 3, "batch_size": 64, "out_dir": str(out_dir),
        "progress": False,
    }
    values.update(changes)
    return TrainConfig(**values)


def assert_same(a, b, where="checkpoint"):
    """Recursive equality, tensors compared bit for bit with ``torch.equal``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# -- configuration ------------------------------------------------------------------------------
def test_config_defaults_validate_and_round_trip_through_json():
    config = TrainConfig()
    assert config.model == "lenet5" and config.dataset == "mnist5k" and config.method == "apb"
    text = json.dumps(config.to_dict())
    assert TrainConfig.from_dict(json.loads(text)) == config
    custom = TrainConfig(method="apb", method_options={"fp_fraction": 0.02}, resume="x/last.pt",
                         freeze_scales_epoch=3, freeze_masks_epoch=5, model_options={"hidden": [8]})
    assert TrainConfig.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": -1e-3}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"scheduler": "step"}, "scheduler"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"freeze_scales_epoch": 10}, "freeze_scales_epoch"),
        ({"freeze_masks_epoch": -1}, "freeze_masks_epoch"),
        ({"warmup_epochs": 11}, "warmup_epochs"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"momentum": 1.5}, "momentum"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"delta_weight_decay": float("nan")}, "delta_weight_decay"),
        ({"seed": -1}, "seed"),
        ({"device": "tpu"}, "device"),
        ({"activation": "gelu"}, "activation"),
        ({"resume": ""}, "resume"),
        ({"model": "alexnet"}, "unknown model"),
        ({"dataset": "imagenet21k"}, "unknown dataset"),
        ({"method": "magic"}, "unknown method"),
        ({"method_options": {"no_such_option": 1}}, "no_such_option"),
    ],
)
def test_config_rejects_bad_values_with_a_clear_message(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


@pytest.mark.parametrize(("changes", "message"), [
    ({"lr": "0.1"}, "lr"), ({"epochs": 2.5}, "epochs"), ({"progress": "yes"}, "progress"),
    ({"method_options": [1]}, "method_options"),
])
def test_config_rejects_wrong_types(changes, message):
    with pytest.raises(TypeError, match=message):
        TrainConfig(**changes)


def test_config_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})


# -- schedule and seeding -----------------------------------------------------------------------
def test_warmup_cosine_matches_the_formula():
    factor = warmup_cosine(total_steps=100, warmup_steps=10, cosine=True)
    assert [factor(t) for t in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5)  # half way through the 90 cosine steps
    assert factor(100) == pytest.approx(0.0, abs=1e-12)
    constant = warmup_cosine(total_steps=100, warmup_steps=0, cosine=False)
    assert {constant(t) for t in range(100)} == {1.0}


def test_seed_everything_and_rng_state_survive_a_weights_only_round_trip(tmp_path):
    seed_everything(123)
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.save(state, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]
    seed_everything(123)
    assert torch.equal(torch.rand(3), first[0])
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-5)


# -- evaluation -----------------------------------------------------------------------------------
def test_evaluate_matches_a_hand_computed_reference():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3))
    x, y = torch.randn(37, 5), torch.randint(0, 3, (37,))
    with torch.no_grad():
        logits = model(x).numpy().astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    ref_loss = -log_probs[np.arange(37), y.numpy()].mean()
    ref_acc = float((logits.argmax(axis=1) == y.numpy()).mean())
    dataset = TensorDataset(x, y)
    for data in (dataset, DataLoader(dataset, batch_size=8)):
        acc, loss = evaluate(model, data, batch_size=10)
        assert acc == pytest.approx(ref_acc) and loss == pytest.approx(ref_loss, rel=1e-6)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, TensorDataset(x[:0], y[:0]))


# -- a full run ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One 3-epoch run with scales frozen at the start of epoch 1 and masks at epoch 2."""
    out = tmp_path_factory.mktemp("run")
    config = tiny_config(out, freeze_scales_epoch=1, freeze_masks_epoch=2)
    return config, train(config)


def test_metrics_jsonl_has_one_parsable_line_per_epoch(finished_run):
    config, result = finished_run
    lines = Path(result.metrics_path).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records == read_metrics(result.metrics_path) == result.history
    steps_per_epoch = math.ceil(1437 / config.batch_size)
    for r in records:
        assert EPOCH_FIELDS <= set(r)
        assert r["step"] == steps_per_epoch * (r["epoch"] + 1)
        assert r["samples_per_rank"] == [1437]
        for key in ("train_loss", "test_loss", "seconds", "bits_per_weight", "lr"):
            assert math.isfinite(r[key])
        assert 0.0 <= r["train_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0
        assert 0.0 <= r["fp_fraction"] <= 1.0
    assert records[0]["lr"] == pytest.approx(config.lr)
    assert records[1]["lr"] < records[0]["lr"]  # cosine decay
    assert result.final_test_acc == records[-1]["test_acc"] > 0.5  # 10 classes: chance is 0.1
    assert result.best_test_acc == max(r["test_acc"] for r in records)
    assert result.stats == {k: records[-1][k] for k in ("bits_per_weight", "fp_fraction",
                                                          "model_bytes")}
    assert json.loads(json.dumps(result.to_dict()))["final_test_acc"] == result.final_test_acc


def test_freezes_happen_at_the_start_of_their_epochs(finished_run):
    config, result = finished_run
    assert [r["events"] for r in result.history] == [
        [], ["freeze_scales"], ["freeze_masks", "finalize"]
    ]
    scales = scale_parameters(result.model)
    assert {name.rsplit(".", 1)[-1] for name, _ in scales} == {"alpha", "delta"}
    assert all(not p.requires_grad for _, p in scales)
    quantizer = result.model.fc2.weight_quantizer
    assert bool(quantizer.mask_frozen)
    # Adam counts the steps that updated each scale: only those of epoch 0.
    ckpt = load_checkpoint(result.last_checkpoint)
    steps_per_epoch = math.ceil(1437 / config.batch_size)
    steps = [s["step"] for s in ckpt["scale_optimizer_state"]["state"].values()]
    assert steps and all(int(s) == steps_per_epoch for s in steps)
    main_steps = [s["step"] for s in ckpt["optimizer_state"]["state"].values()]
    assert all(int(s) == 3 * steps_per_epoch for s in main_steps)


def test_checkpoint_contents_and_rebuilt_model(finished_run):
    config, result = finished_run
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["format_version"] == CHECKPOINT_VERSION
    assert ckpt["epoch"] == 3 and ckpt["finalized"] is True
    assert ckpt["train_config"] == config.to_dict()
    assert ckpt["method"]["name"] == "apb"
    assert ckpt["method"]["config"] == dataclasses.asdict(apb.methods.create("apb").config)
    assert ckpt["model"] == {"name": "mlp", "kwargs": {
        "num_classes": 10, "activation": "relu", "in_features": 64, "input_shape": [1, 8, 8],
        "hidden": [32, 32]}}
    assert set(ckpt["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    model, ckpt2 = build_model_from_checkpoint(result.last_checkpoint)
    assert not model.training
    assert all(not p.requires_grad for _, p in scale_parameters(model))
    assert_same(model.state_dict(), result.model.state_dict(), "rebuilt model")
    test = apb.data.load("digits").test
    assert evaluate(model, test) == pytest.approx(
        (result.final_test_acc, result.final_test_loss))
    best = load_checkpoint(result.best_checkpoint)
    assert best["best_epoch"] == result.best_epoch and best["epoch"] == result.best_epoch + 1


def test_a_fresh_run_refuses_to_overwrite_and_resume_needs_a_checkpoint(finished_run, tmp_path):
    config, _ = finished_run
    with pytest.raises(ValueError, match="already holds a run"):
        train(config)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(tiny_config(tmp_path / "empty", resume=True))
    with pytest.raises(CheckpointError, match="method"):
        train(config.replace(method="bnn", resume=True))
    with pytest.raises(CheckpointError, match="finished"):
        train(config.replace(epochs=4, resume=True))


def test_resuming_a_finished_run_only_reports_it(finished_run, tmp_path):
    config, result = finished_run
    again = train(config.replace(resume=result.last_checkpoint, out_dir=str(tmp_path / "copy")))
    assert again.epochs_run == 0 and again.epochs_completed == 3
    assert again.final_test_acc == pytest.approx(result.final_test_acc)
    assert again.history == result.history
    assert read_metrics(again.metrics_path) == result.history


# -- exact resume --------------------------------------------------------------------------------
class Preempted(Exception):
    pass


def test_resume_after_a_crash_is_bit_identical_to_an_uninterrupted_run(tmp_path, monkeypatch):
    common = {"freeze_scales_epoch": 1, "freeze_masks_epoch": 2, "optimizer": "sgd",
              "weight_decay": 5e-4, "warmup_epochs": 0.5, "label_smoothing": 0.1,
              "delta_weight_decay": 1e-4, "method_options": {"act_bits": 2},
              "activation": "hardtanh"}
    method_class = type(apb.methods.create("apb"))
    original = method_class.on_step
    crash_at = [None]

    def on_step(self, model, progress):
        if crash_at[0] is not None and progress >= crash_at[0]:
            raise Preempted
        # Stands in for random augmentation: every global RNG moves on each step, so their
        # states must be resumed too.
        torch.rand(1), np.random.rand(), random.random()
        return original(self, model, progress)

    monkeypatch.setattr(method_class, "on_step", on_step)
    straight = train(tiny_config(tmp_path / "straight", **common))
    # The same run, killed in the middle of epoch 2 (after its checkpoint of epoch 1) ...
    crash_at[0] = 2.5 / 3
    with pytest.raises(Preempted):
        train(tiny_config(tmp_path / "resumed", **common))
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 2
    # ... then resumed in a fresh call.
    crash_at[0] = None
    resumed = train(tiny_config(tmp_path / "resumed", resume=True, **common))

    assert resumed.epochs_run == 1
    assert resumed.history[-1]["events"] == ["freeze_masks", "finalize"]
    a = load_checkpoint(straight.last_checkpoint)
    b = load_checkpoint(resumed.last_checkpoint)
    assert not torch.equal(a["rng"][0]["torch"], torch.manual_seed(0).get_state())
    for key in ("model_state", "optimizer_state", "scale_optimizer_state", "scheduler_state",
                "scale_scheduler_state", "rng", "global_step", "best_test_acc", "epoch"):
        assert_same(a[key], b[key], key)
    assert_same(dict(straight.model.named_parameters()), dict(resumed.model.named_parameters()),
                "parameters")
    assert_same(dict(straight.model.named_buffers()), dict(resumed.model.named_buffers()),
                "buffers")
    assert [p.requires_grad for p in straight.model.parameters()] == [
        p.requires_grad for p in resumed.model.parameters()]
    drop_time = [{k: v for k, v in r.items() if k != "seconds"}
                 for r in (straight.history, resumed.history) for r in r]
    assert drop_time[:3] == drop_time[3:]
    assert read_metrics(resumed.metrics_path) == resumed.history


def test_data_order_is_a_function_of_seed_and_epoch_and_ranks_get_disjoint_shards():
    dataset = TensorDataset(torch.arange(103), torch.zeros(103, dtype=torch.long))
    config = TrainConfig(batch_size=16, seed=7)

    def order(epoch, rank=0, world=1, seed=7):
        ctx = DistContext(rank, world, rank, torch.device("cpu"))
        loader, sampler = make_train_loader(dataset, config.replace(seed=seed), ctx)
        sampler.set_epoch(epoch)
        return torch.cat([x for x, _ in loader]).tolist()

    assert sorted(order(0)) == list(range(103))
    assert order(0) == order(0) and order(1) == order(1)
    assert order(0) != order(1) and order(0) != order(0, seed=8)
    shards = [order(3, rank, 2) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 52  # 103 padded to 104
    assert set(shards[0]) | set(shards[1]) == set(range(103))
    assert len(set(shards[0]) & set(shards[1])) == 1  # only the padding repeats a sample


# -- atomic, validated checkpoints -------------------------------------------------------------
def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    state = {"weights": torch.arange(1000.0), "epoch": 1}
    save_checkpoint(state, path)
    before = path.read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(100)  # half-written file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"weights": torch.zeros(1000), "epoch": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary left


def test_a_crash_while_training_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, epochs=2)
    calls = []
    real_save = torch.save

    def fail_on_second_save(obj, f, *args, **kwargs):
        calls.append(obj["epoch"])
        if obj["epoch"] == 2:
            raise KeyboardInterrupt
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", fail_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def good_checkpoint_bytes(finished_run):
    return Path(finished_run[1].last_checkpoint).read_bytes()


@pytest.mark.parametrize("damage", [
    "missing", "directory", "truncated", "empty", "text", "garbage", "alien_state_dict",
    "pickled_object", "newer_version", "missing_keys",
])
def test_damaged_or_alien_checkpoints_raise_checkpoint_error(damage, tmp_path,
                                                             good_checkpoint_bytes):
    path = tmp_path / "ckpt.pt"
    good = good_checkpoint_bytes
    if damage == "directory":
        path.mkdir()
    elif damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "text":
        path.write_text("epoch: 3\nweights: lots\n")
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    elif damage == "alien_state_dict":
        torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    elif damage == "pickled_object":
        torch.save({"format": "apb.train.checkpoint", "hook": Preempted()}, path)
    elif damage in ("newer_version", "missing_keys"):
        ckpt = torch.load(io.BytesIO(good), weights_only=True)
        if damage == "newer_version":
            ckpt["format_version"] = CHECKPOINT_VERSION + 1
        else:
            del ckpt["optimizer_state"]
        torch.save(ckpt, path)
    expected = {"missing": "no checkpoint", "newer_version": "upgrade apb",
                "missing_keys": "optimizer_state", "alien_state_dict": "not an apb training",
                "pickled_object": "weights_only"}.get(damage, "cannot read|not a file")
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=expected):
        build_model_from_checkpoint(path)
    assert issubclass(CheckpointError, ValueError)


def test_subset_and_model_kwargs_follow_the_dataset(tmp_path):
    result = train(tiny_config(tmp_path, model="lenet5", model_options={}, epochs=1,
                               train_samples=300, test_samples=100, method="fp"))
    assert result.history[0]["samples_per_rank"] == [300]
    ckpt = load_checkpoint(result.last_checkpoint)
    assert ckpt["model"]["kwargs"] == {"num_classes": 10, "activation": "relu",
                                       "in_channels": 1, "input_size": 8}
    assert ckpt["scale_optimizer_state"] is None  # fp: no quantizer scales
    assert result.stats["fp_fraction"] == 1.0

