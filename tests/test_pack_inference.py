"""optimize_for_inference_: a packed model with folded BatchNorms, channels-last
full-precision convolutions and FastMaxPool2d computes what the packed model computes;
FastMaxPool2d gives max_pool2d's values exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import apb
from _packing import (
    TOLERANCE,
    one_thread,  # noqa: F401  (autouse fixture)
    packed_copy,
    prepare,
    relative_error,
)
from apb.methods import APBConfig
from apb.pack import FastMaxPool2d, optimize_for_inference_


@pytest.mark.parametrize("kernel", [1, 2, 3, (3, 2), 5])
@pytest.mark.parametrize("stride", [1, 2, 3, (2, 1)])
@pytest.mark.parametrize("shape", [(1, 3, 7, 7), (2, 5, 8, 9), (3, 1, 5, 6)])
def test_fast_max_pool_gives_max_pool2d_values(kernel, stride, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    x[0, 0, 1, 1] = float("nan")
    x[-1, -1, 2, 3] = float("inf")
    k = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    for padding in {(0, 0), (k[0] // 2, k[1] // 2), (0, k[1] // 2)}:
        if shape[2] + 2 * padding[0] < k[0] or shape[3] + 2 * padding[1] < k[1]:
            continue
        want = F.max_pool2d(x, kernel, stride, padding)
        got = FastMaxPool2d(kernel, stride, padding)(x)
        assert got.shape == want.shape
        assert torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got.nan_to_num(0.5), want.nan_to_num(0.5)), (kernel, stride, padding)


def test_fast_max_pool_leaves_other_cases_to_max_pool2d():
    x = torch.randn(2, 4, 9, 9)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(FastMaxPool2d(3, 2, 1)(channels_last), F.max_pool2d(x, 3, 2, 1))
    assert torch.equal(FastMaxPool2d(2, ceil_mode=True)(x), F.max_pool2d(x, 2, ceil_mode=True))
    assert torch.equal(FastMaxPool2d(3, dilation=2)(x), F.max_pool2d(x, 3, dilation=2))
    values, indices = FastMaxPool2d(2, return_indices=True)(x)
    assert torch.equal(indices, F.max_pool2d(x, 2, return_indices=True)[1])
    ints = torch.randint(-5, 5, (1, 2, 6, 6))
    assert torch.equal(FastMaxPool2d(2)(ints.float()), F.max_pool2d(ints.float(), 2))
    with pytest.raises(RuntimeError):  # max_pool2d's own check: padding over half a window
        FastMaxPool2d(2, padding=2)(x)


def _stem_pool_model() -> nn.Module:
    """A full-precision stem, a max-pool on its output, packed layers after it."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 3 * 3, 10),
    )


@pytest.mark.parametrize("act_bits", [32, 2])
def test_optimized_model_gives_the_packed_logits(act_bits):
    skip_stem = lambda m, name: name not in ("0", "12")  # noqa: E731  fp stem and classifier
    model = prepare(_stem_pool_model(), APBConfig(fp_fraction=0.05, act_bits=act_bits),
                    (4, 3, 23, 25), filter_fn=skip_stem)
    x = torch.randn(3, 3, 23, 25)
    with torch.no_grad():
        want = model(x)
        packed = packed_copy(model)
        fast = optimize_for_inference_(packed)
        got = fast(x)
        assert optimize_for_inference_(fast) is fast  # idempotent
        again = fast(x)
    assert relative_error(got, want) < TOLERANCE
    assert torch.equal(got, again)
    assert [type(m) for m in fast if isinstance(m, nn.MaxPool2d)] == [FastMaxPool2d] * 2
    assert fast[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast)
    assert len(list(apb.pack.packed_layers(fast))) == 2


def test_optimized_model_exports():
    model = prepare(_stem_pool_model(), APBConfig(fp_fraction=0.05, act_bits=2),
                    (4, 3, 23, 25), filter_fn=lambda m, name: name not in ("0", "12"))
    fast = optimize_for_inference_(packed_copy(model))
    x = torch.randn(2, 3, 23, 25)
    with torch.no_grad():
        want = fast(x)
        got = torch.export.export(fast, (x,)).module()(x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


class _Uses(nn.Module):
    """Activations in each position the drop rule distinguishes."""

    def __init__(self, activation: str):
        super().__init__()
        act = nn.Hardtanh if activation == "hardtanh" else nn.ReLU
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)  # full precision
        self.act1 = act()       # feeds a packed layer only: dropped
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act2 = act()       # feeds a packed layer and the residual add: kept
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.shared = act()     # called twice: kept
        self.conv4 = nn.Conv2d(8, 8, 3, padding=1)
        self.act4 = act()       # feeds the full-precision classifier: kept
        self.fc = nn.Linear(8 * 6 * 6, 5)

    def forward(self, x):
        x = self.conv2(self.act1(self.conv1(x)))
        y = self.act2(x)
        x = self.conv3(y) + y
        x = self.conv4(self.shared(x))
        return self.fc(self.act4(self.shared(x)).flatten(1))


@pytest.mark.parametrize("activation, act_bits, dropped", [
    ("relu", 2, ["act1"]), ("hardtanh", 1, ["act1"]), ("relu", 1, []), ("hardtanh", 2, []),
])
def test_activations_the_packed_quantizer_repeats_are_dropped(activation, act_bits, dropped):
    model = prepare(_Uses(activation), APBConfig(fp_fraction=0.05, act_bits=act_bits),
                    (4, 3, 6, 6), filter_fn=lambda m, name: name not in ("conv1", "fc"))
    x = torch.randn(3, 3, 6, 6)
    x[0, 0, 0, 0] = float("nan")  # NaN: code 0 / sign +1 with and without the activation
    with torch.no_grad():
        want = packed_copy(model)(x)
        fast = optimize_for_inference_(packed_copy(model))
        got = fast(x)
    assert [name for name, m in fast.named_children() if isinstance(m, nn.Identity)] == dropped
    assert fast.conv1.weight.is_contiguous()  # a 3x3 stride-1 convolution stays NCHW
    # in place where the input is a layer's output read by nothing else
    assert fast.act2.inplace and (dropped or fast.act1.inplace)
    assert not fast.shared.inplace  # called twice
    assert not fast.act4.inplace  # its input is an activation's output
    # The tuned full-precision layers (conv1, fc) may sum in another order: float rounding.
    # A quantizer the drop changed would move a code, far more than that.
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize(("shape", "conv"), [
    ((1, 1, 28, 28), nn.Conv2d(1, 6, 5, padding=2)),
    ((2, 3, 17, 19), nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False)),
    ((1, 4, 9, 9), nn.Conv2d(4, 5, (3, 2), stride=(1, 2), padding=(1, 0))),
    ((2, 3, 8, 21), nn.Conv2d(3, 11, (3, 5), padding=(1, 2), bias=False)),
])
def test_tuned_convolution_computes_the_convolution(shape, conv):
    """Every algorithm (forced in turn; apb's direct one for stride-1 convolutions of
    contiguous inputs) and the tuned choice agree with nn.Conv2d to float rounding, in
    either input layout; with autograd it is nn.Conv2d itself."""
    from apb.pack import TunedConv2d

    tuned = TunedConv2d.from_module(conv)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = conv(x)
        for layout in (torch.contiguous_format, torch.channels_last):
            xl = x.contiguous(memory_format=layout)
            key = (tuple(xl.shape), xl.is_contiguous())
            choices = ["onednn", "im2col"]
            if tuple(conv.stride) == (1, 1) and xl.is_contiguous():
                choices.append("direct")
            for choice in choices:
                tuned._choices[key] = choice
                torch.testing.assert_close(tuned(xl), want, rtol=1e-5, atol=1e-5)
            del tuned._choices[key]
            torch.testing.assert_close(tuned(xl), want, rtol=1e-5, atol=1e-5)
            assert tuned._choices[key] in choices
    assert torch.equal(tuned(x), conv(x))  # grad mode, parameters requiring grad
    assert tuned(x).requires_grad


@pytest.mark.parametrize("folded", [False, True])
def test_tuned_linear_computes_the_linear_layer(folded):
    """Both algorithms and the tuned choice agree with nn.Linear to float rounding for
    each batch size; a changed weight is packed again; other input goes to nn.Linear (a
    folded layer refuses 3-D input as before); with autograd it is nn.Linear itself."""
    from apb.pack.dense import TunedFoldedLinear, TunedLinear
    from apb.pack.fold import FoldedLinear

    linear = nn.Linear(37, 45, bias=not folded)
    tuned = (TunedFoldedLinear.from_module(FoldedLinear.of(linear)) if folded
             else TunedLinear.from_module(linear))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rows in (1, 3, 8):
            x = torch.randn(rows, 37, generator=g)
            for choice in ("torch", "dense"):
                tuned._choices[rows] = choice
                torch.testing.assert_close(tuned(x), linear(x), rtol=1e-5, atol=1e-5)
            del tuned._choices[rows]
            torch.testing.assert_close(tuned(x), linear(x), rtol=1e-5, atol=1e-5)
            assert tuned._choices[rows] in ("torch", "dense")
        tuned._choices[2] = "dense"
        x = torch.randn(2, 37, generator=g)
        tuned(x)  # packs the weight
        tuned.weight.mul_(-2.0)  # changed in place
        torch.testing.assert_close(tuned(x), F.linear(x, tuned.weight, tuned.bias))
        tuned.load_state_dict({k: v * 3 for k, v in tuned.state_dict().items()})
        torch.testing.assert_close(tuned(x), F.linear(x, tuned.weight, tuned.bias))
        tuned.weight = nn.Parameter(torch.randn(45, 37, generator=g))  # replaced
        torch.testing.assert_close(tuned(x), F.linear(x, tuned.weight, tuned.bias))
        x3 = torch.randn(2, 4, 37, generator=g)
        if folded:
            with pytest.raises(ValueError, match="BatchNorm1d folded in"):
                tuned(x3)
        else:
            torch.testing.assert_close(tuned(x3), F.linear(x3, tuned.weight, tuned.bias))
    x = torch.randn(2, 37, generator=g)
    assert tuned(x).requires_grad  # grad mode, parameters requiring grad


def test_optimizing_tunes_the_full_precision_convolutions():
    from apb.pack import TunedConv2d

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, groups=2),
                          nn.Conv2d(4, 4, 3, dilation=2)).eval()
    optimize_for_inference_(model)
    assert [type(m) for m in model] == [TunedConv2d, nn.Conv2d, nn.Conv2d]
    optimize_for_inference_(model)  # idempotent
    assert type(model[0]) is TunedConv2d
