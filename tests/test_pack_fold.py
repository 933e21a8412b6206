"""fold_batchnorm_: BatchNorms folded into packed layers' epilogues (and plain convs)
give the training model's logits, only where the graph allows it; folded models are not
saved. Also: the layers' input-order weight copies follow load_state_dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import apb
import apb.models
from _packing import (
    ODD_INPUT,
    TOLERANCE,
    odd_model,
    one_thread,  # noqa: F401  (autouse fixture)
    packed_copy,
    prepare,
    relative_error,
)
from apb.methods import APBConfig, DoReFaConfig
from apb.pack import fold_batchnorm_, save_packed
from apb.pack.fold import batchnorm_affine


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("act_bits", [32, 2, 1])
@pytest.mark.parametrize("method", ["apb", "dorefa"])
def test_folded_odd_model_gives_the_training_logits(method, act_bits):
    activation = "hardtanh" if act_bits == 1 else "relu"
    config = (APBConfig(fp_fraction=0.1, act_bits=act_bits) if method == "apb"
              else DoReFaConfig(bits=2, act_bits=act_bits))
    model = prepare(odd_model(activation), config, ODD_INPUT)
    x = torch.randn(*ODD_INPUT)
    with torch.no_grad():
        want = model(x)
        packed = packed_copy(model)
        assert _batchnorms(packed) == 3
        fold_batchnorm_(packed)
        got = packed(x)
    # conv0 is plain (fp first layer, folded by fuse_conv_bn_eval), conv3 and conv8 are
    # packed; the dilated conv has no BatchNorm.
    assert _batchnorms(packed) == 0
    assert [name for name, layer in apb.pack.packed_layers(packed) if layer.folded] == ["3", "8"]
    assert relative_error(got, want) < TOLERANCE


def test_folded_resnet20_and_the_file_refusal(tmp_path):
    model = prepare(apb.models.create("resnet20"), APBConfig(fp_fraction=0.02, act_bits=2),
                    (4, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        packed = fold_batchnorm_(packed_copy(model))
        got = packed(x)
    assert _batchnorms(packed) == 0 and packed.apb_folded
    assert relative_error(got, want) < TOLERANCE
    with pytest.raises(ValueError, match="save it before folding"):
        save_packed(packed, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_batchnorm_affine_is_the_eval_batchnorm():
    bn = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias):
            t.copy_(torch.rand(5) + 0.5)
    y = torch.randn(2, 5, 3, 3)
    a, b = batchnorm_affine(bn)
    torch.testing.assert_close(a.view(1, 5, 1, 1) * y + b.view(1, 5, 1, 1), bn(y))


class _Shared(nn.Module):
    """The conv output feeds the BatchNorm and the residual sum: not foldable."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.conv(self.stem(x))
        return self.bn(h) + h


def test_only_batchnorms_whose_input_is_used_once_fold():
    model = prepare(_Shared(), APBConfig(fp_fraction=0.1, act_bits=2), (2, 3, 6, 6),
                    filter_fn=lambda m, name: name == "conv")
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        want = model(x)
        packed = fold_batchnorm_(packed_copy(model))
        got = packed(x)
    assert isinstance(packed.bn, nn.BatchNorm2d) and not packed.conv.folded
    assert relative_error(got, want) < TOLERANCE


def _pooled() -> nn.Module:
    """VGG-Small's order, conv -> max-pool -> BatchNorm, packed and plain, a padded
    pool included, and a pool whose output is read twice."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.MaxPool2d(3, 2, padding=1),
        nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 3 * 3, 5))


@pytest.mark.parametrize("negative_channel", [False, True])
def test_batchnorms_after_a_max_pool_fold_when_they_increase(negative_channel):
    """Folded across the pool when every channel's scale is positive (a map that
    increases commutes with the maximum); left as it is when one channel's scale is
    negative (the maximum would become a minimum)."""
    model = prepare(_pooled(), APBConfig(fp_fraction=0.1, act_bits=2), (2, 3, 11, 12),
                    filter_fn=lambda m, name: name == "4")
    with torch.no_grad():
        model[6].weight[3] = -0.5 if negative_channel else 0.5
        model[6].bias[3] = 0.25  # the channel's maximum is then not its maximum of BN
    x = torch.randn(3, 3, 11, 12)
    with torch.no_grad():
        want = model(x)
        packed = fold_batchnorm_(packed_copy(model))
        got = packed(x)
    assert isinstance(packed[2], nn.Identity)  # into the plain stem: fuse_conv_bn_eval
    assert isinstance(packed[5], nn.MaxPool2d)  # the pool stays, after the folded layer
    assert packed[4].folded != negative_channel
    assert isinstance(packed[6], nn.BatchNorm2d) == negative_channel
    assert relative_error(got, want) < TOLERANCE
    # On request the pools keep their BatchNorms (the ONNX Runtime peer's export).
    kept = fold_batchnorm_(packed_copy(model), across_max_pools=False)
    assert isinstance(kept[2], nn.BatchNorm2d) and isinstance(kept[6], nn.BatchNorm2d)
    assert not kept[4].folded


def test_fold_needs_eval_mode_and_a_traceable_model():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="model.eval"):
        fold_batchnorm_(odd_model("relu").train())
    with pytest.raises(ValueError, match="torch.fx-traceable"):
        fold_batchnorm_(Untraceable().eval())


def test_fold_affine_composes_and_checks():
    model = prepare(odd_model("relu"), APBConfig(fp_fraction=0.1, act_bits=2), ODD_INPUT)
    layer = packed_copy(model)[3]
    x = torch.randn(2, 5, 11, 9)
    with torch.no_grad():
        plain = layer(x)
        a, b = torch.rand(7) + 0.5, torch.randn(7)
        layer.fold_affine_(a, b)
        layer.fold_affine_(2 * torch.ones(7), torch.ones(7))
        torch.testing.assert_close(layer(x), 2 * (a.view(1, 7, 1, 1) * plain
                                                  + b.view(1, 7, 1, 1)) + 1)
    with pytest.raises(ValueError, match="shape"):
        layer.fold_affine_(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        layer.fold_affine_(torch.full((7,), float("nan")), torch.ones(7))


@pytest.mark.parametrize("act_bits", [2, 1])
@pytest.mark.parametrize("method", ["apb", "dorefa"])
def test_input_order_weights_follow_load_state_dict(method, act_bits):
    """The weights in input column order and, for ±1 inputs, the cached padding
    corrections (computed from the weights on the first forward) follow new weights."""
    config = (APBConfig(fp_fraction=0.1, act_bits=act_bits) if method == "apb"
              else DoReFaConfig(bits=2, act_bits=act_bits))
    activation = "hardtanh" if act_bits == 1 else "relu"
    a = packed_copy(prepare(odd_model(activation), config, ODD_INPUT, seed=0))
    b = packed_copy(prepare(odd_model(activation), config, ODD_INPUT, seed=1))
    x = torch.randn(*ODD_INPUT)
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))
        b.load_state_dict(copy.deepcopy(a.state_dict()))
        assert torch.equal(a(x), b(x))


def test_plain_linear_and_batchnorm1d_fold_for_2d_input_only():
    """A full-precision Linear → BatchNorm1d (an MLP's first layer, which stays full
    precision) folds into a FoldedLinear: the same logits, 3-D input refused, and a second
    fold finds nothing left."""
    from apb.pack.fold import FoldedLinear

    torch.manual_seed(0)
    model = apb.models.create("mlp", hidden=(32, 16))
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(torch.randn(8, 1, 28, 28) * 2 + 0.5)
    model.eval()
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        want = model(x)
        folded = fold_batchnorm_(copy.deepcopy(model))
        got = folded(x)
    assert isinstance(folded.fc1, FoldedLinear) and isinstance(folded.bn1, nn.Identity)
    assert _batchnorms(folded) == 0
    assert relative_error(got, want) < TOLERANCE
    with pytest.raises(ValueError, match=r"\[batch, features\]"):
        folded.fc1(torch.randn(2, 3, 784))
    again = fold_batchnorm_(copy.deepcopy(folded))
    with torch.no_grad():
        assert torch.equal(again(x), got)
