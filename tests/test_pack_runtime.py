"""PackedRuntime: a packed model run by its plan gives the model's output bit for bit
(zoo models, 1- and 2-bit activations, batch 1 and 3, optimized or not); the model runs
instead wherever the plan must not (autograd, tracing, the profiler, untraceable models,
other inputs, torch.export); bad input gets the model's own error; a reloaded state rebuilds the plan."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from _packing import (
    one_thread,  # noqa: F401  (autouse fixture)
    packed_copy,
    prepare,
)
from apb.bench.model_peers import build_apb, input_shape
from apb.methods import APBConfig
from apb.pack import PackedRuntime, optimize_for_inference_


def _refuse(*_):
    raise AssertionError("the plan ran where the model should have")


@pytest.mark.parametrize(("name", "act_bits"), [
    ("lenet5", 1), ("lenet5", 2), ("mlp", 1), ("mlp", 2), ("resnet20", 1), ("resnet20", 2),
    ("vgg_small", 2),
])
def test_zoo_models_match_their_packed_model_bit_for_bit(name, act_bits):
    runtime, _ = build_apb(name, act_bits)
    model = runtime.model
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 3):
        x = torch.randn(batch, *input_shape(name), generator=gen)
        with torch.inference_mode():
            want, got = model(x), runtime(x)
        assert runtime.planned, runtime.plan_error
        assert torch.equal(got, want)
    summary = repr(runtime)
    assert ("apb_linear" in summary) == (name in ("lenet5", "mlp"))  # packed classifiers
    assert ("apb_conv2d" in summary) == (name != "mlp")
    # Each of ResNet-20's nine residual blocks ends in one kernel call.
    act = "relu" if act_bits == 2 else "hardtanh"
    assert (f"9 apb_conv2d+add+{act}" in summary) == (name == "resnet20"), summary
    # An activation before a full-precision layer or a pool is its packed layer's epilogue.
    assert (f"apb_linear+{act}" in summary) == (name in ("lenet5", "mlp")), summary
    assert (f"apb_conv2d+{act}" in summary) == (name == "lenet5"), summary


def _stem_pool_model() -> nn.Module:
    """A channels-last stem (after optimizing), a max-pool with padding, a residual-free
    chain of packed layers, BatchNorms the optimizer folds and one it cannot."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(3, 2, padding=1),
        nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2),
        nn.BatchNorm2d(12),
        nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 3 * 3, 10),
    )


def _packed_stem_pool(act_bits: int) -> nn.Module:
    model = prepare(_stem_pool_model(), APBConfig(fp_fraction=0.05, act_bits=act_bits),
                    (4, 3, 23, 25), filter_fn=lambda m, name: name not in ("0", "13"))
    return packed_copy(model)


@pytest.mark.parametrize("act_bits", [1, 2, 32])
@pytest.mark.parametrize("optimize", [False, True])
def test_layouts_pools_and_unfolded_batchnorms(act_bits, optimize):
    packed = _packed_stem_pool(act_bits)
    if optimize:
        optimize_for_inference_(packed)
    runtime = PackedRuntime(packed)
    x = torch.randn(2, 3, 23, 25, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = packed(x), runtime(x)
        # A channels-last caller's input: the same values.
        got_cl = runtime(x.contiguous(memory_format=torch.channels_last))
    assert runtime.planned, runtime.plan_error
    assert torch.equal(got, want) and torch.equal(got_cl, want)


def test_max_pool_step_takes_a_channels_last_map_to_nchw():
    """An ImageNet stem's channels-last output (oneDNN's layout): the plan's max-pool step
    pools it and hands the next packed layer an NCHW array in one pass, with the stem's
    ReLU, which it took over, applied as it stores: torch's values."""
    packed = _packed_stem_pool(2)
    optimize_for_inference_(packed)
    runtime = PackedRuntime(packed)
    x = torch.randn(2, 3, 23, 25, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        runtime(x)
    step = next(s for s in runtime._plan.steps if s.kind.startswith("max_pool2d"))
    assert step.kind == "max_pool2d+relu", runtime._plan.summary()
    stem_out = torch.randn(2, 8, 12, 13, generator=torch.Generator().manual_seed(3))
    got = step.fn(stem_out.contiguous(memory_format=torch.channels_last))
    assert type(got) is np.ndarray and got.flags.c_contiguous
    assert torch.equal(torch.from_numpy(got), F.max_pool2d(F.relu(stem_out), 3, 2, 1))


def test_activations_move_into_the_max_pools_around_them():
    """A ReLU or Hardtanh before a max-pool (after a full-precision stem) or after one
    runs inside the pool's step; one after a packed layer stays in its epilogue. The
    plan's output is the model's, NaN and -inf included."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Hardtanh(-0.5, 0.75), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, 10),
    )
    packed = packed_copy(prepare(model, APBConfig(fp_fraction=0.05, act_bits=2), (2, 3, 16, 16),
                                 filter_fn=lambda m, name: name == "3"))
    optimize_for_inference_(packed)
    runtime = PackedRuntime(packed)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    x[0, 1, 3, 3], x[1, 2, 7, 8] = float("nan"), float("-inf")
    with torch.no_grad():
        want, got = packed(x), runtime(x)
    assert runtime.planned, runtime.plan_error
    summary = runtime._plan.summary()
    assert "max_pool2d+hardtanh" in summary and "apb_conv2d+relu" in summary, summary
    assert "max_pool2d+relu" in summary, summary  # the ReLU after the second pool
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.nan_to_num(0.5), want.nan_to_num(0.5))


class _Blocks(nn.Module):
    """Residual endings the runtime fuses (ReLU as a function, Hardtanh with odd bounds)
    and ones it must not or cannot: a convolution read twice, and a residual that only
    broadcasts to the output (a pooled [B, C, 1, 1] map)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv4 = nn.Conv2d(8, 8, 1)
        self.tanh = nn.Hardtanh(-0.7, 1.3)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.conv1(x) + x)          # fused, ReLU as a function
        x = self.tanh(x + self.conv2(x))           # fused, the residual first
        y = self.conv3(x)
        x = torch.relu(y + x) + y                  # conv3 read twice: not fused
        return torch.relu(self.conv4(x) + self.pool(x))  # broadcast: the steps run


@pytest.mark.parametrize("act_bits", [1, 2])
def test_residual_block_ends_fuse_where_they_may(act_bits):
    model = prepare(_Blocks(), APBConfig(fp_fraction=0.05, act_bits=act_bits), (2, 3, 9, 11),
                    filter_fn=lambda m, name: name != "stem")
    packed = packed_copy(model)
    runtime = PackedRuntime(packed)
    x = torch.randn(3, 3, 9, 11, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = packed(x), runtime(x)
    assert runtime.planned, runtime.plan_error
    assert torch.equal(got, want)
    # conv1, conv2 and conv4 fuse (conv4's residual broadcasts: at run time its step runs
    # the three steps, which the equality above checks); conv3 stays itself.
    summary = runtime._plan.summary()
    assert "2 apb_conv2d+add+relu" in summary and "1 apb_conv2d+add+hardtanh" in summary, summary
    assert "1 apb_conv2d," in summary, summary
    # A value read as an array by several steps (the stem's output: conv1's input and its
    # residual) is made an array once, on a line of its own.
    source = runtime._plan.source
    conversions = re.findall(r"^    (v\d+) = _as_array\((v\d+)\)$", source, re.M)
    assert conversions and all(a == b for a, b in conversions), source
    assert source.count("_as_array(") == len(conversions) == len(set(conversions)), source


def test_the_model_runs_where_the_plan_must_not():
    packed = _packed_stem_pool(2)
    runtime = PackedRuntime(packed)
    x = torch.randn(2, 3, 23, 25)
    with torch.no_grad():
        want = runtime(x)
    assert runtime.planned
    runtime._plan.run = _refuse
    # Autograd would record the forward: the stem's parameters require grad.
    assert torch.equal(runtime(x), want)
    # An input that requires grad, another dtype, the profiler, torch.export.
    with torch.no_grad():
        assert torch.equal(runtime(x.clone().requires_grad_(True)), want)
        with pytest.raises(RuntimeError, match="double"):  # torch's stem refuses it
            runtime(x.double())
        with torch.profiler.profile() as prof:
            assert torch.equal(runtime(x), want)
    assert any(e.name.startswith("apb::") for e in prof.events())
    with torch.no_grad():
        exported = torch.export.export(runtime, (x,)).module()
        torch.testing.assert_close(exported(x), want, rtol=1e-6, atol=1e-6)


def test_global_module_hooks_see_the_model_run():
    runtime = PackedRuntime(_packed_stem_pool(2))
    x = torch.randn(1, 3, 23, 25)
    with torch.no_grad():
        want = runtime(x)
    assert runtime.planned
    seen = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, a, out: seen.append(type(m).__name__))
    try:
        with torch.no_grad():
            assert torch.equal(runtime(x), want)
    finally:
        handle.remove()
    assert "PackedAPBConv2d" in seen and "Sequential" in seen


def test_hooks_present_when_the_plan_is_built_still_run():
    packed = _packed_stem_pool(2)
    seen = []
    packed[4].register_forward_hook(lambda m, a, out: seen.append(out.shape))
    runtime = PackedRuntime(packed)
    with torch.no_grad():
        runtime(torch.randn(1, 3, 23, 25))
    assert runtime.planned and seen == [torch.Size([1, 12, 6, 7])]


class _Branchy(nn.Module):
    """Control flow on a tensor's values: fx cannot trace it."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x) if x.sum() > -1e9 else -self.inner(x)


def test_untraceable_models_run_as_they_are():
    packed = _packed_stem_pool(2)
    runtime = PackedRuntime(_Branchy(packed))
    x = torch.randn(1, 3, 23, 25)
    with torch.no_grad():
        assert torch.equal(runtime(x), packed(x))
    assert not runtime.planned and runtime.plan_error
    assert "not planned" in repr(runtime)


def test_bad_input_gets_the_models_error():
    runtime = PackedRuntime(_packed_stem_pool(2))
    with torch.no_grad():
        runtime(torch.randn(1, 3, 23, 25))
        with pytest.raises((ValueError, RuntimeError)) as caught:
            runtime(torch.randn(1, 5, 23, 25))
    with pytest.raises(type(caught.value)) as direct:
        with torch.no_grad():
            runtime.model(torch.randn(1, 5, 23, 25))
    assert str(caught.value) == str(direct.value)


def test_a_loaded_state_rebuilds_the_plan():
    first, second = _packed_stem_pool(2), _packed_stem_pool(2)
    runtime = PackedRuntime(copy.deepcopy(first))
    x = torch.randn(2, 3, 23, 25)
    with torch.no_grad():
        assert torch.equal(runtime(x), first(x))
        runtime.model.load_state_dict(second.state_dict())
        runtime.refresh()  # a state loaded into the inner model: refresh by hand
        assert torch.equal(runtime(x), second(x))
        runtime.load_state_dict({f"model.{k}": v for k, v in first.state_dict().items()})
        assert torch.equal(runtime(x), first(x))


def test_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        PackedRuntime(lambda x: x)


class _Stems(nn.Module):
    """Full-precision convolutions whose activation the runtime fuses (a ReLU module, a
    Hardtanh with odd bounds, a stride-2 one: no direct kernel) and one read twice."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 5, 3, padding=1)
        self.b = nn.Conv2d(5, 6, 5, padding=2, bias=False)
        self.c = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.d = nn.Conv2d(6, 4, 1)
        self.relu, self.tanh = nn.ReLU(), nn.Hardtanh(-0.5, 0.8)
        self.fc = nn.Linear(4 * 5 * 6, 7)

    def forward(self, x):
        x = self.tanh(self.b(self.relu(self.a(x))))
        y = self.d(torch.relu(self.c(x)))
        return self.fc((torch.relu(y) + y).flatten(1))


@pytest.mark.parametrize("choice", ["onednn", "im2col", "direct"])
def test_stem_activations_fuse_for_every_algorithm(choice):
    """Whichever algorithm a tuned convolution and Linear layer run, the plan gives the
    model's output bit for bit, NaN included; a convolution read only by its activation
    is one step with it."""
    from apb.pack import TunedConv2d, TunedLinear

    model = optimize_for_inference_(_Stems().eval())
    runtime = PackedRuntime(model)
    x = torch.randn(2, 3, 9, 11, generator=torch.Generator().manual_seed(4))
    x[1, 0, 4, 4] = float("nan")
    with torch.no_grad():
        model(x)  # tunes
        for m in model.modules():
            if isinstance(m, TunedConv2d):
                for key in m._choices:
                    m._choices[key] = choice if tuple(m.stride) == (1, 1) else "im2col"
            elif isinstance(m, TunedLinear):
                m._choices[2] = "dense" if choice == "direct" else "torch"
        want, got = model(x), runtime(x)
    assert runtime.planned, runtime.plan_error
    assert torch.isnan(want[1]).all() and not torch.isnan(want[0]).any()
    assert torch.equal(got.nan_to_num(0.5), want.nan_to_num(0.5))
    summary = runtime._plan.summary()
    # a, b and c fuse; d stays itself (its output is read twice), as does its ReLU.
    assert summary.startswith("2 conv2d+relu, 1 conv2d+hardtanh, 1 conv2d, 1 relu,"), summary
