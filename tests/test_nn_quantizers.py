"""APB and baseline quantizers against hand-computed cases and hand-derived gradients."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from apb.nn import (
    APBWeightQuantizer,
    BinaryWeightQuantizer,
    DoReFaWeightQuantizer,
    MagnitudePruner,
    PruneQuantizer,
    SignActivation,
    UniformActivation,
    gradual_sparsity,
)


def apb_with(weight, alpha, delta, **kw):
    q = APBWeightQuantizer(weight, **kw)
    with torch.no_grad():
        q.alpha.fill_(alpha)
        q.delta.fill_(delta)
    return q


def test_apb_forward_hand_computed():
    w = torch.tensor([0.5, -0.2, 1.5, -0.05, 0.0, -1.0]).reshape(1, 6)
    q = apb_with(w, 0.5, 0.4)
    # d = ||w| - .5| = [0, .3, 1, .45, .5, .5]: inside the band only where d < .4
    expected = torch.tensor([[0.5, -0.5, 1.5, -0.05, 0.0, -1.0]])
    assert torch.equal(q(w), expected)


def test_apb_mask_edges_are_outside_and_sign_of_zero_is_plus():
    # d exactly equal to delta is outside (strict inequality); 0 binarizes to +alpha.
    w = torch.tensor([[0.75, 0.25, -0.75, 0.7, 0.0]])
    q = apb_with(w, 0.5, 0.25)
    assert torch.equal(q.band_mask(w), torch.tensor([[False, False, False, True, False]]))
    q0 = apb_with(w, 0.5, 0.75)
    assert q0(w)[0, 4].item() == 0.5
    assert q0(w)[0, 2].item() == -0.5


def test_apb_gradients_ours_hand_derived():
    w = torch.tensor([[0.7, -0.3, 1.5]], requires_grad=True)
    q = apb_with(w.detach(), 0.5, 0.25)
    g = torch.tensor([[1.0, 2.0, 3.0]])
    (q(w) * g).sum().backward()
    # mask = [1, 1, 0], s = [1, -1, 1], d = [.2, .2, 1]
    # g_alpha = sum g M s (1 - d/delta) = 1*.2 - 2*.2 = -0.2
    # g_delta = sum g M s (alpha - |w|)/delta = (1*(-.2) + (-2)*(.2)) / .25 = -2.4
    assert torch.equal(w.grad, g)  # straight-through
    assert q.alpha.grad.item() == pytest.approx(-0.2, abs=1e-6)
    assert q.delta.grad.item() == pytest.approx(-2.4, abs=1e-6)


def test_apb_gradients_paper_hand_derived():
    w = torch.tensor([[0.7, -0.3, 1.5]], requires_grad=True)
    q = apb_with(w.detach(), 0.5, 0.25, grad="paper")
    g = torch.tensor([[1.0, 2.0, 3.0]])
    (q(w) * g).sum().backward()
    # g_alpha = -mean(g M s) = -(1 - 2)/3 ; g_delta = mean(g M s (alpha-|w|))/delta = -2.4/3
    assert q.alpha.grad.item() == pytest.approx(1 / 3, abs=1e-6)
    assert q.delta.grad.item() == pytest.approx(-0.8, abs=1e-6)


def test_apb_fixed_mask_alpha_gradient_matches_finite_difference_at_band_centre():
    # For weights at the band centre (d = 0) our alpha gradient is the exact derivative
    # of the loss with the mask held fixed, which a finite difference measures.
    w = torch.tensor([[0.5, -0.5, 0.5, 3.0]])
    g = torch.tensor([[1.0, -2.0, 0.5, 7.0]])
    q = apb_with(w, 0.5, 0.3)
    a = q.alpha.detach().clone().requires_grad_(True)
    q.alpha = torch.nn.Parameter(a)
    (q(w) * g).sum().backward()
    eps = 1e-3
    with torch.no_grad():
        q.alpha.fill_(0.5 + eps)
        up = (q(w) * g).sum()
        q.alpha.fill_(0.5 - eps)
        down = (q(w) * g).sum()
    assert q.alpha.grad.item() == pytest.approx(float(up - down) / (2 * eps), rel=1e-3)


def test_apb_per_channel_gradients_reduce_per_row():
    w = torch.tensor([[0.7, -0.3], [0.6, 0.1]])
    q = APBWeightQuantizer(w, per_channel=True)
    with torch.no_grad():
        q.alpha.copy_(torch.tensor([0.5, 0.5]))
        q.delta.copy_(torch.tensor([0.25, 0.25]))
    wt = w.clone().requires_grad_(True)
    (q(wt) * torch.ones(2, 2)).sum().backward()
    # row 0: M=[1,1], s=[1,-1], d=[.2,.2] -> g_alpha = .2 - .2 = 0; row 1: M=[1,0] -> .6
    assert q.alpha.grad.tolist() == pytest.approx([0.0, 0.6], abs=1e-6)


def test_apb_initialisation():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    q = APBWeightQuantizer(w)
    assert q.alpha.item() == pytest.approx(w.abs().mean().item(), rel=1e-6)
    assert q.delta.item() == pytest.approx(3 * w.std(unbiased=False).item(), rel=1e-5)
    # nearly every weight starts binary
    assert q.band_mask(w).float().mean() > 0.97


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 40), cols=st.integers(1, 300),
    frac=st.floats(0.0, 0.5), per_channel=st.booleans(), seed=st.integers(0, 2**16),
)
def test_budget_fp_fraction_is_exact(rows, cols, frac, per_channel, seed):
    torch.manual_seed(seed)
    w = torch.randn(rows, cols)
    q = APBWeightQuantizer(w, fp_fraction=frac, per_channel=per_channel)
    n_fp = int((~q.band_mask(w)).sum())
    assert n_fp == round(frac * w.numel())
    assert abs(n_fp / w.numel() - frac) <= 0.5 / w.numel() + 1e-12


@pytest.mark.parametrize("target", [1.1, 1.3, 1.6, 3.0])
def test_budget_bits_per_weight(target):
    torch.manual_seed(1)
    w = torch.randn(64, 576)
    q = APBWeightQuantizer(w, bits_per_weight=target)
    st_ = q.storage(w)
    assert st_.bits_per_weight <= target
    # one more full-precision weight would exceed the target
    assert q._storage_for(st_.n_fp + 1).bits_per_weight > target


def test_budget_below_binary_part_is_refused():
    with pytest.raises(ValueError, match="below what the binary part"):
        APBWeightQuantizer(torch.randn(4, 4), bits_per_weight=1.01)


def test_budget_survives_training_steps():
    torch.manual_seed(2)
    w = torch.nn.Parameter(torch.randn(16, 100))
    q = APBWeightQuantizer(w.detach(), fp_fraction=0.02)
    opt = torch.optim.SGD([w, q.alpha], lr=0.1)
    for _ in range(5):
        opt.zero_grad()
        (q(w) ** 2).sum().backward()
        opt.step()
    assert int((~q.band_mask(w)).sum()) == 32


def test_freeze_mask_and_scales():
    torch.manual_seed(3)
    w = torch.randn(8, 8)
    q = APBWeightQuantizer(w)
    q.freeze_mask(w)
    mask = q.band_mask(w).clone()
    with torch.no_grad():
        q.delta.fill_(1e-6)  # would make every weight full precision if the mask moved
    assert torch.equal(q.band_mask(w * 3), mask)
    q.freeze_scales()
    assert not q.alpha.requires_grad and not q.delta.requires_grad


def test_bad_options():
    w = torch.randn(2, 2)
    with pytest.raises(ValueError, match="grad"):
        APBWeightQuantizer(w, grad="nope")
    with pytest.raises(ValueError, match="fp_fraction"):
        APBWeightQuantizer(w, fp_fraction=-0.1)
    with pytest.raises(ValueError, match="at most one"):
        APBWeightQuantizer(w, fp_fraction=0.1, bits_per_weight=2.0)


def test_binary_baseline_per_channel():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.0]], requires_grad=True)
    q = BinaryWeightQuantizer(w.detach())
    out = q(w)
    assert torch.allclose(out, torch.tensor([[2.0, -2.0], [0.25, 0.25]]))
    out.sum().backward()
    # d/dw of alpha_c * sign(w) with STE sign: alpha_c + sum_j sign(w_j) * sign(w_i)/n
    # row 0: alpha=2, sum sign = 0 -> grad 2 each; row 1: alpha=.25, sum sign=2,
    # d alpha/dw_i = sign(w_i)/2 -> .25 + 2*.5*1 = 1.25 (sign(0) = +1 in forward only;
    # torch's abs' derivative at 0 is 0, so the second entry gets .25 + 0)
    assert torch.allclose(w.grad, torch.tensor([[2.0, 2.0], [1.25, 0.25]]))


def test_dorefa_two_bit_levels():
    torch.manual_seed(4)
    w = torch.randn(16, 32)
    out = DoReFaWeightQuantizer(w, bits=2)(w)
    levels = sorted(set(round(v, 5) for v in out.flatten().tolist()))
    assert levels == [-1.0, round(-1 / 3, 5), round(1 / 3, 5), 1.0]
    # the largest |tanh w| maps to an extreme level
    i = w.abs().argmax()
    assert abs(out.flatten()[i].item()) == 1.0


def test_gradual_sparsity_cubic():
    assert gradual_sparsity(0.0, 0.9, 0.1, 0.5) == 0.0
    assert gradual_sparsity(0.3, 0.9, 0.1, 0.5) == pytest.approx(0.9 - 0.9 * 0.5**3)
    assert gradual_sparsity(0.5, 0.9, 0.1, 0.5) == 0.9
    assert gradual_sparsity(1.0, 0.9, 0.1, 0.5) == 0.9


def test_magnitude_pruner_keeps_largest():
    w = torch.arange(1.0, 11.0).reshape(2, 5) * torch.tensor([1, -1, 1, -1, 1.0])
    q = MagnitudePruner(w, sparsity=0.3, begin=0.0, end=0.5)
    q.set_progress(1.0, w)
    out = q(w)
    assert int((out == 0).sum()) == 3
    assert torch.equal(out.flatten()[:3], torch.zeros(3))  # |w| = 1, 2, 3 pruned
    assert q.storage(w).n_weights == 10


def test_prune_quant_binary_values():
    w = torch.tensor([[4.0, -2.0, 0.1, 0.2]])
    q = PruneQuantizer(w, sparsity=0.5, bits=1, begin=0.0, end=0.5)
    q.set_progress(0.2, w)
    assert not bool(q.quantizing)
    q.set_progress(0.6, w)
    assert torch.allclose(q(w), torch.tensor([[3.0, -3.0, 0.0, 0.0]]))
    assert q.storage(w).n_fp == 0


def test_sign_activation_clipped_ste():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 1.0, 1.5], requires_grad=True)
    y = SignActivation()(x)
    assert y.tolist() == [-1, -1, 1, 1, 1, 1]
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 0]


def test_uniform_activation_levels_and_scale_gradient():
    q = UniformActivation(2)
    with torch.no_grad():
        q.act_scale.fill_(3.0)
        q.initialized.fill_(True)
    x = torch.tensor([-1.0, 0.4, 1.4, 2.6, 5.0], requires_grad=True)
    y = q(x)
    assert y.tolist() == pytest.approx([0.0, 0.0, 1.0, 3.0, 3.0])
    y.sum().backward()
    # dq/ds: below 0 -> 0; inside: code/L - x/s; above -> 1
    expected = 0 + (0 / 3 - 0.4 / 3) + (1 / 3 - 1.4 / 3) + (3 / 3 - 2.6 / 3) + 1
    assert q.act_scale.grad.item() == pytest.approx(expected, abs=1e-6)
    assert x.grad.tolist() == [0, 1, 1, 1, 0]


def test_uniform_activation_initialises_scale_from_first_batch():
    torch.manual_seed(5)
    x = torch.randn(1000).relu()
    q = UniformActivation(2).train()
    q(x)
    assert q.act_scale.item() == pytest.approx(float(x.mean() + 3 * x.std()), rel=1e-5)
    assert math.isfinite(q.act_scale.item())


def test_fp_penalty_gradients_hand_derived():
    # lambda * F, F = mean(1 - M): dF/d delta = -mean(M)/delta,
    # dF/d alpha = mean(M sign(alpha - |w|))/delta. With a zero loss gradient only it remains.
    w = torch.tensor([[0.7, -0.6, 1.5]])
    q = apb_with(w, 0.5, 0.25, fp_penalty=0.3)
    (q(w) * 0).sum().backward()
    # M = [1, 1, 0]; sign(alpha - |w|) = [-1, -1, -1]
    assert q.delta.grad.item() == pytest.approx(-0.3 * (2 / 3) / 0.25, abs=1e-6)
    assert q.alpha.grad.item() == pytest.approx(0.3 * (-2 / 3) / 0.25, abs=1e-6)
    with pytest.raises(ValueError, match="fp_penalty"):
        APBWeightQuantizer(w, fp_penalty=-1.0)
