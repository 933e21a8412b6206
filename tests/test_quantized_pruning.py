"""Quantized filter pruning: channel groups by hand, physical removal against zeroed inputs,
pruned binary networks that pack, the budget solver, bad input, and `apb prune-quantized`."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import apb
import apb.models
from _packing import TOLERANCE, one_thread, packed_copy, relative_error  # noqa: F401
from apb.cli import main
from apb.methods import APBConfig, BNNConfig, DoReFaConfig
from apb.pack import load_packed, save_packed
from apb.prune.channel_graph import ChannelGraphError, channel_groups, remove_channels
from apb.prune.filter_saliency import CRITERIA, filter_saliency
from apb.prune.quantized_pruning import (
    BudgetError,
    QuantizedPruner,
    QuantizedPruningConfig,
    prune_quantized,
)
from apb.train import TrainConfig, build_model_from_checkpoint, load_checkpoint, train


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm statistics and affine terms far from 1/0, so that a wrong slice shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen))
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(n, generator=gen))
                m.bias.copy_(torch.randn(n, generator=gen))
    return model.eval()


def random_keep(groups, seed: int, fraction: float = 0.6) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {g.name: torch.randperm(g.size, generator=gen)[:max(1, int(fraction * g.size))]
            for g in groups}


def zero_removed_inputs(model: nn.Module, groups, keep) -> nn.Module:
    """The reference: the original network whose consumers ignore the removed channels
    (their weight columns zeroed; a flattened channel is ``expansion`` columns)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for g in groups:
            removed = sorted(set(range(g.size)) - set(keep[g.name].tolist()))
            for m in g.with_role("in"):
                w = ref.get_submodule(m.module).weight
                for c in removed:
                    w[:, c * m.expansion:(c + 1) * m.expansion] = 0
    return ref


def members(group, role):
    return [m.module for m in group.with_role(role)]


# -- channel groups -------------------------------------------------------------------------
def test_lenet5_groups_by_hand():
    groups = channel_groups(apb.models.create("lenet5"))
    assert [(g.name, g.size) for g in groups] == [
        ("conv1", 6), ("conv2", 16), ("fc1", 120), ("fc2", 84)]
    conv2 = groups[1]
    assert members(conv2, "out") == ["conv2"] and members(conv2, "norm") == ["bn2"]
    assert [(m.module, m.expansion) for m in conv2.with_role("in")] == [("fc1", 25)]
    assert members(groups[3], "in") == ["fc3"]  # the classifier loses inputs, never outputs


def test_resnet20_residual_streams_are_one_group_each():
    groups = {g.name: g for g in channel_groups(apb.models.create("resnet20"))}
    inner = [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    assert sorted(groups) == sorted(["conv1", "layer2.0.conv2", "layer3.0.conv2", *inner])
    stage1 = groups["conv1"]
    assert members(stage1, "out") == ["conv1", "layer1.0.conv2", "layer1.1.conv2",
                                      "layer1.2.conv2"]
    assert members(stage1, "norm") == ["bn1", "layer1.0.bn2", "layer1.1.bn2", "layer1.2.bn2"]
    assert members(stage1, "in") == ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1",
                                     "layer2.0.conv1", "layer2.0.shortcut.0"]
    stage2 = groups["layer2.0.conv2"]
    assert "layer2.0.shortcut.0" in members(stage2, "out")
    assert "layer2.0.shortcut.1" in members(stage2, "norm")
    assert members(groups["layer3.0.conv2"], "in")[-1] == "fc"
    block = groups["layer2.1.conv1"]
    assert (members(block, "out"), members(block, "norm"), members(block, "in")) == (
        ["layer2.1.conv1"], ["layer2.1.bn1"], ["layer2.1.conv2"])


# -- physical removal: exact where exactly checkable ------------------------------------------
@pytest.mark.parametrize("name, kwargs, shape", [
    ("lenet5", {}, (3, 1, 28, 28)),
    ("lenet5", {"input_size": 8}, (3, 1, 8, 8)),
    ("resnet20", {}, (2, 3, 32, 32)),
    ("vgg_small", {}, (2, 3, 32, 32)),
    ("mlp", {"hidden": [32, 24]}, (3, 1, 28, 28)),
])
def test_full_precision_pruning_equals_zeroed_inputs(name, kwargs, shape):
    torch.manual_seed(0)
    model = randomize_norms(apb.models.create(name, **kwargs))
    groups = channel_groups(model)
    keep = random_keep(groups, seed=1)
    pruned = remove_channels(copy.deepcopy(model), groups, keep)
    ref = zero_removed_inputs(model, groups, keep)
    x = torch.randn(*shape)
    with torch.no_grad():
        want, got = ref(x), pruned(x)
    assert relative_error(got, want) < 1e-5
    assert sum(p.numel() for p in pruned.parameters()) < sum(
        p.numel() for p in model.parameters())
    rebuilt = apb.models.create(name, **{**kwargs, **pruned.width_kwargs()})
    rebuilt.load_state_dict(pruned.state_dict())  # the recorded widths rebuild the network


def test_binary_pruning_is_exact_where_the_consumer_is_full_precision():
    """Removing fc2's filters keeps its other binary rows (α_c is per row) and only drops
    inputs of the full-precision classifier: exactly the zeroed-input network."""
    torch.manual_seed(0)
    model = randomize_norms(apb.compress_(apb.models.create("lenet5"), BNNConfig()))
    groups = [g for g in channel_groups(model) if g.name == "fc2"]
    keep = {"fc2": torch.tensor([0, 3, 4, 10, 50, 83])}
    pruned = remove_channels(copy.deepcopy(model), groups, keep)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        want = zero_removed_inputs(model, groups, keep)(x)
        got = pruned(x)
        assert torch.equal(pruned.fc2.quantized_weight(), model.fc2.quantized_weight()[keep["fc2"]])
    assert relative_error(got, want) < 1e-6


@pytest.mark.parametrize("name, config, shape", [
    ("lenet5", BNNConfig(), (4, 1, 28, 28)),
    ("lenet5", DoReFaConfig(bits=2, act_bits=2), (4, 1, 28, 28)),
    ("resnet20", BNNConfig(act_bits=1), (2, 3, 32, 32)),
    ("resnet20", DoReFaConfig(bits=2, act_bits=2), (2, 3, 32, 32)),
    ("vgg_small", BNNConfig(act_bits=2), (2, 3, 32, 32)),
])
def test_pruned_quantized_networks_pack_smaller(name, config, shape, tmp_path):
    torch.manual_seed(0)
    activation = "hardtanh" if config.act_bits == 1 else "relu"
    model = apb.compress_(apb.models.create(name, activation=activation), config)
    model.train()
    with torch.no_grad():
        model(torch.randn(*shape))  # activation clips and BatchNorm statistics move
    model.eval()
    groups = channel_groups(model)
    keep = random_keep(groups, seed=2, fraction=0.7)
    pruned = remove_channels(copy.deepcopy(model), groups, keep)
    pruned.apb_architecture = {"name": name,
                               "kwargs": {"activation": activation, **pruned.width_kwargs()}}
    x = torch.randn(*shape)
    with torch.no_grad():
        want = pruned(x)
        packed = packed_copy(pruned)
        assert relative_error(packed(x), want) < TOLERANCE
    before, after = apb.summary(model).model_bytes, apb.summary(pruned).model_bytes
    assert after < before
    info = save_packed(packed, tmp_path / "p.safetensors")
    assert info.model_bytes == after
    with torch.no_grad():
        assert torch.equal(load_packed(tmp_path / "p.safetensors")(x), packed(x))


def test_remove_channels_checks_indices():
    model = apb.models.create("lenet5")
    groups = channel_groups(model)
    for keep, match in (({"conv1": torch.tensor([], dtype=torch.long)}, "lose all"),
                        ({"conv1": torch.tensor([0, 6])}, "must lie in 0..5"),
                        ({"conv1": torch.tensor([1, 1])}, "repeat"),
                        ({"nope": torch.tensor([0])}, "no channel group named nope")):
        with pytest.raises(ValueError, match=match):
            remove_channels(model, groups, keep)
    assert model.conv1.out_channels == 6  # nothing changed


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3), nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(8 * 26 * 26, 10)
        self.input_shape = (1, 28, 28)

    def forward(self, x):
        return self.fc(torch.cat([self.a(x), self.b(x)], 1).flatten(1))


@pytest.mark.parametrize("model, input_shape, match", [
    (Concat(), (1, 28, 28), "calls cat, whose effect on channels is unknown"),
    (nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 2)),
     (4, 6, 6), "grouped convolution"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.PReLU(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2)),
     (1, 6, 6), "PReLU, whose effect on channels is unknown"),
])
def test_architectures_whose_channels_cannot_be_followed(model, input_shape, match):
    model.input_shape = input_shape
    with pytest.raises(ChannelGraphError, match=match):
        channel_groups(model)


# -- saliency, budget, the pruner on a trained network ----------------------------------------
@pytest.fixture(scope="module")
def digits_bnn(tmp_path_factory):
    """A binary LeNet-5 trained on the 8x8 digits (a few seconds): its checkpoint."""
    out = tmp_path_factory.mktemp("bnn")
    train(TrainConfig(model="lenet5", dataset="digits", method="bnn", epochs=3,
                      out_dir=str(out), progress=False))
    return out / "last.pt"


@pytest.fixture(scope="module")
def digits_data():
    return apb.data.load("digits")


def test_criteria_score_every_channel_and_taylor_finds_dead_channels(digits_bnn, digits_data):
    model, _ = build_model_from_checkpoint(digits_bnn)
    groups = channel_groups(model)
    with torch.no_grad():  # channels 2 and 5 of conv1 now contribute nothing
        model.bn1.weight[[2, 5]] = 0
        model.bn1.bias[[2, 5]] = 0
    batches = [next(iter(torch.utils.data.DataLoader(digits_data.train, batch_size=64)))]
    for criterion in CRITERIA:
        scores = filter_saliency(model, groups, criterion, batches)
        assert {k: v.shape[0] for k, v in scores.items()} == {g.name: g.size for g in groups}
    for criterion in ("variance", "taylor", "bn_scale"):
        scores = filter_saliency(model, groups, criterion, batches)["conv1"]
        assert set(scores.argsort()[:2].tolist()) == {2, 5}
        assert float(scores[[2, 5]].max()) == 0.0


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(intensities=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
       reduction=st.sampled_from([0.1, 0.25, 0.4]))
def test_budget_solver_meets_the_budget(digits_bnn, digits_data, intensities, reduction):
    model, _ = build_model_from_checkpoint(digits_bnn)
    pruner = QuantizedPruner(model, digits_data.train,
                             QuantizedPruningConfig(budget_ratio=reduction, criterion="bn_scale",
                                                    val_samples=200))
    ratios = pruner.ratios_for(intensities)
    pruned = pruner.prune(ratios)
    assert apb.summary(pruned).model_bytes <= pruner.budget_bytes
    assert pruner.budget_bytes == int((1 - reduction) * pruner.base_bytes)
    # the smallest scaling s of the intensities that fits, by a linear scan over every s at
    # which some group loses one more channel (floor(s·w·C) steps at s = k / (w·C))
    w = [max(0.02, x) for x in intensities]
    candidates = sorted({0.0} | {k / (x * g.size) for g, x in zip(pruner.groups, w)
                                 for k in range(1, g.size + 1)})
    for s in candidates:
        trial = {g.name: min(0.9, s * x) for g, x in zip(pruner.groups, w)}
        if pruner.bytes_for(pruner.counts(trial)) <= pruner.budget_bytes:
            break
    assert pruner.counts(ratios) == pruner.counts(trial)


def test_prune_quantized_bo_and_uniform(digits_bnn, digits_data):
    model, _ = build_model_from_checkpoint(digits_bnn)
    state = copy.deepcopy(model.state_dict())
    results = {}
    for ratios in ("uniform", "bo"):
        pruned, report = prune_quantized(model, digits_data.train, ratios=ratios,
                                         budget_ratio=0.25, trials=4, finetune_epochs=1,
                                         val_samples=200, seed=3)
        results[ratios] = report
        assert report.model_bytes <= report.budget_bytes < report.base_bytes
        assert report.params < report.base_params
        assert apb.summary(pruned).model_bytes == report.model_bytes
        assert set(report.per_layer_ratio) == {"conv1", "conv2", "fc1", "fc2"}
        assert pruned.apb_architecture["kwargs"]["widths"] == [
            kept for kept, _ in report.channels.values()]
    bo = results["bo"]
    assert len(bo.trials) == 4 and bo.trials[0]["per_group_ratio"] == {
        g: r for g, r in results["uniform"].per_layer_ratio.items()}
    assert bo.proxy_val_acc >= bo.trials[0]["val_acc"]  # the uniform trial is a candidate
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # untouched


def test_bad_inputs_raise_clear_errors(digits_bnn, digits_data):
    model, _ = build_model_from_checkpoint(digits_bnn)
    with pytest.raises(BudgetError, match="below what filter pruning can reach"):
        prune_quantized(model, digits_data.train, budget_bytes=500)
    fp = apb.models.create("lenet5", input_size=8)
    with pytest.raises(ValueError, match="full precision"):
        prune_quantized(fp, digits_data.train)
    apb_net = apb.compress_(apb.models.create("lenet5", input_size=8), APBConfig())
    with pytest.raises(ValueError, match="APBWeightQuantizer"):
        prune_quantized(apb_net, digits_data.train)
    with pytest.raises(ValueError, match="budget_ratio is the size reduction"):
        QuantizedPruningConfig(budget_ratio=1.5)
    with pytest.raises(TypeError, match="unknown option"):
        prune_quantized(model, digits_data.train, budgett=3)


# -- the command line -------------------------------------------------------------------------
def test_cli_writes_a_checkpoint_that_summary_pack_and_eval_read(digits_bnn, tmp_path):
    out, js = tmp_path / "p.pt", tmp_path / "p.json"
    assert main(["prune-quantized", str(digits_bnn), "--budget-ratio", "0.25", "--trials", "3",
                 "--dataset", "digits", "--seeds", "2", "--finetune-epochs", "1",
                 "--val-samples", "200", "-o", str(out), "--json", str(js),
                 "--no-progress"]) == 0
    result = json.loads(js.read_text())
    assert result["budget_bytes"] == int(0.75 * result["base_bytes"])
    runs = {(r["ratios"], r["seed"]) for r in result["results"]}
    assert runs == {("bo", 0), ("uniform", 0), ("bo", 1), ("uniform", 1)}
    for r in result["results"]:
        assert {"ratios", "seed", "test_acc", "model_bytes", "per_layer_ratio"} <= set(r)
        assert r["model_bytes"] <= result["budget_bytes"]
    ckpt = load_checkpoint(out)
    assert ckpt["method"]["name"] == "bnn" and ckpt["quantized_pruning"]["ratios"] == "bo"
    assert main(["summary", str(out), "--json", str(tmp_path / "s.json")]) == 0
    bo0 = next(r for r in result["results"] if r["ratios"] == "bo" and r["seed"] == 0)
    assert json.loads((tmp_path / "s.json").read_text())["model_bytes"] == bo0["model_bytes"]
    packed = tmp_path / "p.safetensors"
    assert main(["pack", str(out), "-o", str(packed)]) == 0
    assert main(["eval", str(packed), "--dataset", "digits", "--json",
                 str(tmp_path / "e.json")]) == 0
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["test_acc"] == pytest.approx(bo0["test_acc"])
    assert evaluated["model_bytes"] == bo0["model_bytes"]


@pytest.mark.parametrize("make_args, message", [
    (lambda ck, fp: [str(ck), "--budget-bytes", "500"], "below what filter pruning can reach"),
    (lambda ck, fp: [str(fp), "--budget-ratio", "0.25"], "takes a binary (bnn) or DoReFa"),
    (lambda ck, fp: [str(ck), "--budget-ratio", "2"], "budget_ratio is the size reduction"),
    (lambda ck, fp: [str(ck), "--budget-ratio", "0.25", "--criterion", "l2"],
     "unknown criterion 'l2'"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(digits_bnn, tmp_path, capsys, make_args,
                                                      message):
    fp = tmp_path / "fp.pt"
    ckpt = load_checkpoint(digits_bnn)
    ckpt["method"] = {"name": "fp", "config": {}}
    ckpt["model_state"] = apb.models.create("lenet5", input_size=8).state_dict()
    apb.train.save_checkpoint(ckpt, fp)
    out = tmp_path / "out"
    code = main(["prune-quantized", *make_args(digits_bnn, fp), "--dataset", "digits",
                 "--trials", "2", "-o", str(out / "p.pt"), "--json", str(out / "p.json"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
