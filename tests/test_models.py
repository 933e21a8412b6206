"""Tests of apb.models: output shapes, parameter counts by hand, layer-order rules, registry."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import apb.models
from apb.models import create, make_activation
from apb.models.registry import _BUILDERS
from apb.train import model_kwargs_for
from apb.train.pool import run_in_processes

ALL_MODELS = ["lenet5", "mlp", "resnet18", "resnet20", "vgg_small"]
EXPECTED_INPUT_SHAPES = {
    "lenet5": (1, 28, 28),
    "mlp": (1, 28, 28),
    "resnet18": (3, 224, 224),
    "resnet20": (3, 32, 32),
    "vgg_small": (3, 32, 32),
}
DEFAULT_CLASSES = {"lenet5": 10, "mlp": 10, "resnet18": 1000, "resnet20": 10, "vgg_small": 10}
STANDARD_LEAVES = (
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.ReLU,
    nn.Hardtanh,
    nn.Flatten,
    nn.Identity,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_bn(c_in: int, c_out: int, k: int) -> int:
    """Parameters of a bias-free k x k convolution followed by BatchNorm (scale + shift)."""
    return c_in * c_out * k * k + 2 * c_out


def compute_layers_in_execution_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    order: list[nn.Module] = []
    handles = [
        m.register_forward_hook(lambda mod, args, out: order.append(mod))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return order


# ---------------------------------------------------------------- registry


def test_available_lists_every_family():
    assert apb.models.available() == ALL_MODELS


def test_unknown_name_lists_available_models():
    with pytest.raises(ValueError, match="unknown model 'resnet21'") as info:
        create("resnet21")
    for name in ALL_MODELS:
        assert name in str(info.value)


def test_unexpected_keyword_names_accepted_ones():
    with pytest.raises(TypeError, match="num_classes, in_channels, activation") as info:
        create("resnet20", num_clases=10)
    assert "num_clases" in str(info.value)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("resnet20", {"num_classes": 0}, "num_classes must be a positive integer, got 0"),
        ("resnet18", {"num_classes": 2.5}, "num_classes must be a positive integer, got 2.5"),
        ("vgg_small", {"in_channels": -1}, "in_channels must be a positive integer, got -1"),
        ("lenet5", {"input_size": 3}, "needs input_size >= 4"),
        ("lenet5", {"num_classes": True}, "num_classes must be a positive integer, got True"),
        ("mlp", {"hidden": (256, 0)}, "every hidden width must be a positive integer, got 0"),
        ("mlp", {"in_features": 784, "input_shape": (1, 28, 27)},
         r"C\*H\*W == in_features=784, got \(1, 28, 27\)"),
    ],
)
def test_invalid_values_raise_value_error(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create(name, **kwargs)


def test_register_adds_a_builder_and_refuses_a_taken_name(monkeypatch):
    monkeypatch.setattr("apb.models.registry._BUILDERS", dict(_BUILDERS))

    @apb.models.register(name="tiny_linear")
    def tiny(num_classes: int = 3) -> nn.Module:
        return nn.Linear(4, num_classes)

    assert "tiny_linear" in apb.models.available()
    assert create("tiny_linear", num_classes=5).out_features == 5
    with pytest.raises(ValueError, match="already registered"):
        apb.models.register(lambda: nn.Identity(), name="resnet20")


# ---------------------------------------------------------------- shapes and sizes


@pytest.mark.parametrize("name", ALL_MODELS)
def test_batch_one_eval_output_shape_and_input_shape_attribute(name):
    torch.manual_seed(0)
    model = create(name).eval()
    assert type(model.input_shape) is tuple
    assert model.input_shape == EXPECTED_INPUT_SHAPES[name]
    with torch.no_grad():
        out = model(torch.randn(1, *EXPECTED_INPUT_SHAPES[name]))
    assert out.shape == (1, DEFAULT_CLASSES[name])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["lenet5", "mlp", "resnet20", "vgg_small"])
def test_train_mode_batch_and_backward(name):
    model = create(name, num_classes=7).train()
    out = model(torch.randn(4, *model.input_shape))
    assert out.shape == (4, 7)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_resnet18_parameter_count_matches_reference():
    assert n_params(create("resnet18")) == 11_689_512


def test_resnet20_parameter_count_by_hand():
    stem = conv_bn(3, 16, 3)
    stage1 = 3 * (2 * conv_bn(16, 16, 3))
    stage2 = conv_bn(16, 32, 3) + conv_bn(32, 32, 3) + conv_bn(16, 32, 1)
    stage2 += 2 * (2 * conv_bn(32, 32, 3))
    stage3 = conv_bn(32, 64, 3) + conv_bn(64, 64, 3) + conv_bn(32, 64, 1)
    stage3 += 2 * (2 * conv_bn(64, 64, 3))
    classifier = 64 * 10 + 10
    expected = stem + stage1 + stage2 + stage3 + classifier
    assert expected == 272_474
    assert n_params(create("resnet20")) == expected


def test_vgg_small_parameter_count_by_hand():
    widths = [3, 128, 128, 256, 256, 512, 512]
    convs = sum(conv_bn(a, b, 3) for a, b in itertools.pairwise(widths))
    assert n_params(create("vgg_small")) == convs + 512 * 4 * 4 * 10 + 10


@pytest.mark.parametrize("input_size, side", [(28, 5), (8, 2)])
def test_lenet5_parameter_count_by_hand(input_size, side):
    expected = (
        conv_bn(1, 6, 5)
        + conv_bn(6, 16, 5)
        + 16 * side * side * 120
        + 2 * 120
        + 120 * 84
        + 2 * 84
        + 84 * 10
        + 10
    )
    assert n_params(create("lenet5", input_size=input_size)) == expected


def test_mlp_parameter_count_by_hand():
    model = create("mlp", in_features=64, hidden=(32, 16), num_classes=3)
    assert model.input_shape == (1, 8, 8)
    assert n_params(model) == 64 * 32 + 2 * 32 + 32 * 16 + 2 * 16 + 16 * 3 + 3


def test_mlp_input_shape_default_and_explicit():
    assert create("mlp", in_features=12).input_shape == (12, 1, 1)
    model = create("mlp", in_features=48, input_shape=(3, 4, 4), hidden=()).eval()
    assert model(torch.randn(1, 3, 4, 4)).shape == (1, 10)
    with pytest.raises(TypeError, match="hidden"):
        create("mlp", hidden=256)


@settings(max_examples=15, deadline=None)
@given(
    input_size=st.integers(4, 40),
    in_channels=st.integers(1, 3),
    num_classes=st.integers(1, 12),
)
def test_lenet5_any_input_size_reaches_the_classifier(input_size, in_channels, num_classes):
    model = create(
        "lenet5", input_size=input_size, in_channels=in_channels, num_classes=num_classes
    ).eval()
    assert model.input_shape == (in_channels, input_size, input_size)
    with torch.no_grad():
        out = model(torch.randn(1, in_channels, input_size, input_size))
    assert out.shape == (1, num_classes)
    # The classic LeNet-5 geometry wherever it fits: 28 -> 28 -> 14 -> 10 -> 5.
    if input_size == 28:
        assert model.fc1.in_features == 16 * 5 * 5


@settings(max_examples=10, deadline=None)
@given(
    hidden=st.lists(st.integers(1, 20), max_size=3),
    in_features=st.integers(1, 50),
    num_classes=st.integers(1, 6),
    batch=st.integers(1, 3),
)
def test_mlp_any_widths(hidden, in_features, num_classes, batch):
    model = create("mlp", in_features=in_features, hidden=tuple(hidden), num_classes=num_classes)
    with torch.no_grad():
        out = model.eval()(torch.randn(batch, *model.input_shape))
    assert out.shape == (batch, num_classes)


# ---------------------------------------------------------------- rules compression relies on


@pytest.mark.parametrize("name", ALL_MODELS)
def test_registration_order_follows_data_flow(name):
    """First Conv/Linear in named_modules() sees the raw input; the last Linear produces the
    logits; every compute layer is registered in the order the forward pass runs it."""
    model = create(name, num_classes=5).eval()
    registered = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    x = torch.randn(1, *model.input_shape)
    seen: dict[str, torch.Tensor] = {}
    first = registered[0]
    last_linear = [m for m in registered if isinstance(m, nn.Linear)][-1]

    def keep_first_input(module, args, out):
        seen.setdefault("first_in", args[0])

    def keep_last_output(module, args, out):
        seen.setdefault("last_out", out)

    h1 = first.register_forward_hook(keep_first_input)
    h2 = last_linear.register_forward_hook(keep_last_output)
    with torch.no_grad():
        executed = compute_layers_in_execution_order(model, x)
        logits = model(x)
    h1.remove()
    h2.remove()
    # The raw input itself (the MLP sees a flattened view of the same memory).
    assert seen["first_in"].data_ptr() == x.data_ptr()
    assert torch.equal(seen["first_in"].reshape(x.shape), x)
    assert torch.equal(seen["last_out"], logits)
    assert last_linear.out_features == 5
    assert [id(m) for m in executed] == [id(m) for m in registered]


def test_stems_and_classifiers_are_the_expected_layers():
    r18 = create("resnet18")
    first = next(m for m in r18.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert first is r18.conv1
    assert (first.kernel_size, first.stride, first.out_channels) == ((7, 7), (2, 2), 64)
    r20 = create("resnet20")
    assert next(m for m in r20.modules() if isinstance(m, nn.Conv2d)) is r20.conv1
    assert r20.conv1.kernel_size == (3, 3) and r20.conv1.out_channels == 16
    assert [m for m in r20.modules() if isinstance(m, nn.Linear)] == [r20.fc]
    lenet = create("lenet5")
    assert [m for m in lenet.modules() if isinstance(m, nn.Linear)][-1] is lenet.fc3


@pytest.mark.parametrize(
    "name, n_conv, n_shortcut",
    [("resnet20", 21, 2), ("resnet18", 20, 3), ("vgg_small", 6, 0), ("lenet5", 2, 0)],
)
def test_conv_counts_and_downsampling_shortcuts(name, n_conv, n_shortcut):
    model = create(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == n_conv
    shortcuts = [m for n, m in model.named_modules() if n.endswith("shortcut.0")]
    assert len(shortcuts) == n_shortcut
    for conv in shortcuts:
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_only_standard_modules_and_no_conv_bias(name):
    model = create(name)
    for module in model.modules():
        if not list(module.children()):
            assert isinstance(module, STANDARD_LEAVES), type(module)
        if isinstance(module, nn.Conv2d):
            assert module.bias is None


def test_resnet20_block_attributes():
    block = create("resnet20").layer2[0]
    for attribute in ("conv1", "bn1", "conv2", "bn2", "shortcut"):
        assert isinstance(getattr(block, attribute), nn.Module)
    assert isinstance(create("resnet20").layer1[1].shortcut, nn.Identity)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_activation_choice_is_honoured(name):
    relu_model = create(name, activation="relu")
    ht_model = create(name, activation="hardtanh")
    assert any(isinstance(m, nn.ReLU) for m in relu_model.modules())
    assert not any(isinstance(m, nn.Hardtanh) for m in relu_model.modules())
    hardtanhs = [m for m in ht_model.modules() if isinstance(m, nn.Hardtanh)]
    assert hardtanhs and not any(isinstance(m, nn.ReLU) for m in ht_model.modules())
    assert len(hardtanhs) == sum(isinstance(m, nn.ReLU) for m in relu_model.modules())
    assert len({id(m) for m in hardtanhs}) == len(hardtanhs)  # one module per position


def test_hardtanh_network_has_symmetric_activations():
    torch.manual_seed(0)
    model = create("resnet20", activation="hardtanh").eval()
    outputs = []
    for m in model.modules():
        if isinstance(m, nn.Hardtanh):
            m.register_forward_hook(lambda mod, args, out: outputs.append(out))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    values = torch.cat([o.flatten() for o in outputs])
    assert values.min() >= -1 and values.max() <= 1
    assert (values < 0).float().mean() > 0.1  # a sign quantizer would see both signs


def test_make_activation():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0])
    assert torch.equal(make_activation("relu")(x), torch.tensor([0.0, 0.0, 0.0, 0.5, 3.0]))
    assert torch.equal(make_activation("hardtanh")(x), torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    assert make_activation("relu") is not make_activation("relu")
    with pytest.raises(ValueError, match="relu, hardtanh"):
        make_activation("sign")
    with pytest.raises(ValueError, match="expected one of"):
        create("vgg_small", activation="tanh")


@pytest.mark.parametrize("name", ["lenet5", "resnet20"])
def test_models_copy_and_send_to_worker_processes(name):
    model = create(name, activation="hardtanh").eval().requires_grad_(False)
    x = torch.randn(1, *model.input_shape)
    clone = copy.deepcopy(model)
    assert clone.input_shape == model.input_shape
    expected = model(x)
    assert torch.equal(clone(x), expected)
    # The pool spawns its workers, so the model itself goes to each one pickled.
    outputs = []
    run_in_processes(model, [(x,), (x,)], jobs=2, on_result=outputs.append)
    # (workers run one thread each: the sums may round differently, not differ)
    assert len(outputs) == 2
    for out in outputs:
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "resnet18"])
def test_image_side_follows_the_dataset(name):
    """A ResNet trained on 28x28 digits records 28x28 as its input shape (its global pool
    takes any size), so the jobs that check a dataset against it accept MNIST."""
    kwargs = model_kwargs_for(name, (1, 28, 28), 10, "relu")
    assert kwargs["input_size"] == 28 and "input_size" in apb.models.parameters(name)
    model = create(name, **kwargs).eval()
    assert model.input_shape == (1, 28, 28)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert "input_size" not in model_kwargs_for("vgg_small", (3, 32, 32), 10, "relu")
    with pytest.raises(ValueError, match="takes square images"):
        model_kwargs_for(name, (1, 28, 30), 10, "relu")
