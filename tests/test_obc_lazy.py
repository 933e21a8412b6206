"""The lazy-batch solver against a brute-force reference that re-inverts the Hessian of the
free weights at every step in the same fixed order, against the closed forms, and against the
exact greedy solver (the reference it approximates) on small problems."""

import numpy as np
import pytest
import torch

from apb.methods.lazy_batch import (
    binarize_losses,
    block_bounds,
    lazy_pass,
    polish_free,
    refit_alpha_free,
    solve_lazy,
    upper_factor,
)
from apb.methods.obc_greedy import obs_fix, refit_alpha
from apb.methods.obc_layer import LayerLevel, LayerProblem, OBCError, solve_layer
from apb.methods.obc_targets import apb_sign, fit_alpha, fit_grid


def hessian(d, n, seed, dead=()):
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, d)) * g.uniform(0.2, 2.0, d)
    X[:, list(dead)] = 0
    return 2 * X.T @ X / n


def problem(R, d, seed, dampening=0.01, dead=()):
    H = torch.from_numpy(hessian(d, 5 * d + 10, seed, dead))
    W = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal((R, d)))
    return LayerProblem.build("layer", W, H, 5 * d + 10, dampening)


def brute_force(W, H, order, bounds, target, pruned=None, nm=None, fp=None):
    """Fixed-order OBS the slow way: at each step invert H over the free columns (this one and
    every later one in ``order``) anew, set the column to its target and compensate the
    free ones. Masks are chosen at the start of each block (N:M: of each group of m) with
    the saliency divided by [H_F^-1]_qq of the step that will decide the column."""
    W = W.copy()
    R, d = W.shape
    pruned_mask = np.zeros((R, d), bool)
    full = np.zeros((R, d), bool)
    for b, (i, j) in enumerate(bounds):
        diag = np.array([np.linalg.inv(H[np.ix_(order[k:], order[k:])])[0, 0]
                         for k in range(i, j)])
        cols = order[i:j]
        if pruned is not None:
            score = W[:, cols] ** 2 / diag
            flat = np.argsort(score.reshape(-1), kind="stable")[:pruned[b]]
            pruned_mask[:, cols] = np.isin(np.arange(score.size), flat).reshape(score.shape)
        if fp is not None:
            score = (W[:, cols] - target(W[:, cols], cols)) ** 2 / diag
            flat = np.argsort(-score.reshape(-1), kind="stable")[:fp[b]]
            full[:, cols] = np.isin(np.arange(score.size), flat).reshape(score.shape)
        for k in range(i, j):
            q = order[k]
            if nm is not None and (k - i) % nm[1] == 0:
                group = order[k:k + nm[1]]
                score = W[:, group] ** 2 / diag[k - i:k - i + nm[1]]
                for r in range(R):
                    pruned_mask[r, [group[a] for a in np.argsort(score[r], kind="stable")[:nm[0]]]] = True
            G = np.linalg.inv(H[np.ix_(order[k:], order[k:])])
            t = target(W[:, [q]], [q])[:, 0]
            t = np.where(full[:, q], W[:, q], t)
            t = np.where(pruned_mask[:, q], 0.0, t)
            err = W[:, q] - t
            W[:, order[k:]] -= np.outer(err / G[0, 0], G[:, 0])
            W[:, q] = t
    return W, ~pruned_mask, full


def natural_or_act(p, act_order):
    d = p.W.shape[1]
    if not act_order:
        return list(range(d))
    return torch.argsort(p.H.diagonal(), descending=True, stable=True).tolist()


def grid_target(grid):
    s, z = grid.scale.numpy(), grid.zero.numpy()

    def target(w, cols):
        if grid.group_size is None:
            sc, zc = s[:, None], z[:, None]
        else:
            g = np.asarray(cols) // grid.group_size
            sc, zc = s[:, g], z[:, g]
        return sc * (np.clip(np.round(w / sc) + zc, 0, grid.maxq) - zc)

    return target


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("d, block_size, group_size", [
    (1, 4, None), (13, 4, None), (13, 13, None), (13, 32, 5), (16, 8, 4), (20, 6, 8)])
def test_quantization_matches_the_brute_force(d, block_size, group_size, act_order):
    p = problem(4, d, seed=d + block_size, dead=[2] if d > 2 else ())  # a dead input
    grid = fit_grid(p.W, 3, symmetric=False, group_size=group_size)
    sol = solve_lazy(p, LayerLevel(bits=3, symmetric=False, group_size=group_size), grid=grid,
                     block_size=block_size, act_order=act_order)
    order = natural_or_act(p, act_order)
    ref, _, _ = brute_force(p.W.numpy(), p.H.numpy(), order, block_bounds(d, block_size, None),
                            grid_target(grid))
    np.testing.assert_allclose(sol.weight.numpy(), ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(sol.weight, grid.quantize(sol.weight), rtol=0, atol=1e-12)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("d, block_size", [(13, 4), (16, 16), (9, 64)])
def test_pruning_matches_the_brute_force_with_block_masks(d, block_size, act_order):
    """(Pruning ignores act_order: SparseGPT's natural order.)"""
    R, sparsity = 5, 0.4
    p = problem(R, d, seed=3 * d)
    sol = solve_lazy(p, LayerLevel(sparsity=sparsity), block_size=block_size, act_order=act_order)
    bounds = block_bounds(d, block_size, None)
    counts = [round(sparsity * R * j) - round(sparsity * R * i) for i, j in bounds]
    ref, keep, _ = brute_force(p.W.numpy(), p.H.numpy(), list(range(d)), bounds,
                               lambda w, cols: w, pruned=counts)
    np.testing.assert_allclose(sol.weight.numpy(), ref, atol=1e-10, rtol=0)
    np.testing.assert_array_equal(sol.keep.numpy(), keep)
    assert int((~sol.keep).sum()) == round(sparsity * R * d)
    assert (sol.weight[~sol.keep] == 0).all()


@pytest.mark.parametrize("d, block_size", [(12, 6), (12, 4), (20, 8), (8, 3)])
def test_nm_matches_the_brute_force_and_blocks_round_to_m(d, block_size):
    R = 4
    p = problem(R, d, seed=d, dampening=0.0)
    bounds = block_bounds(d, block_size, (2, 4))
    assert all((j - i) % 4 == 0 for i, j in bounds)  # no group of 4 straddles two blocks
    sol = solve_lazy(p, LayerLevel(nm=(2, 4)), block_size=block_size, act_order=True)
    ref, keep, _ = brute_force(p.W.numpy(), p.H.numpy(), list(range(d)), bounds,
                               lambda w, cols: w, nm=(2, 4))
    np.testing.assert_allclose(sol.weight.numpy(), ref, atol=1e-10, rtol=0)
    np.testing.assert_array_equal(sol.keep.numpy(), keep)
    assert ((~sol.keep).reshape(R, -1, 4).sum(2) == 2).all()
    with pytest.raises(OBCError, match="not a multiple of m=4"):
        solve_lazy(problem(R, 10, 0), LayerLevel(nm=(2, 4)))


@pytest.mark.parametrize("act_order", [False, True])
def test_binarization_pass_matches_the_brute_force(act_order):
    R, d, block_size = 6, 14, 5
    p = problem(R, d, seed=21)
    alpha = fit_alpha(p.W, 0.1, per_channel=True)
    order = natural_or_act(p, act_order)
    perm = torch.tensor(order)
    bounds = block_bounds(d, block_size, None)
    fp = [2, 3, 1]
    U = upper_factor(p.hinv, perm)
    W, keep, full, losses = lazy_pass(p.W[:, perm], U, perm, bounds, alpha=alpha, fp=fp)
    a = alpha.numpy()[:, None]
    ref, _, ref_full = brute_force(p.W.numpy(), p.H.numpy(), order, bounds,
                                   lambda w, cols: a * np.where(w < 0, -1.0, 1.0), fp=fp)
    np.testing.assert_allclose(W.numpy(), ref[:, order], atol=1e-10, rtol=0)
    np.testing.assert_array_equal(full.numpy(), ref_full[:, order])
    assert keep.all() and int(full.sum()) == sum(fp)
    # The loss increments add up to the objective of the pass's result.
    D = torch.from_numpy(ref) - p.W
    assert float(losses.sum()) == pytest.approx(0.5 * float(((D @ p.H) * D).sum()), rel=1e-9)


def test_closed_forms_match_the_inverse_hessian_forms():
    p = problem(5, 12, seed=4)
    g = torch.Generator().manual_seed(0)
    fixed = torch.rand(5, 12, generator=g) < torch.tensor([0.0, 0.3, 0.7, 0.9, 1.0])[:, None]
    values = torch.randn(5, 12, generator=g, dtype=torch.float64)
    k = int(fixed.sum(1).max())
    idx = torch.sort(fixed.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :k]
    want = obs_fix(p.W, p.hinv, idx, fixed.gather(1, idx), values.gather(1, idx))
    torch.testing.assert_close(polish_free(p.W, p.H, fixed, values), want, rtol=1e-9, atol=1e-9)
    signs = apb_sign(values)
    binary = fixed.clone()
    binary[0, :3] = True  # every row has a binary weight
    for per_channel in (True, False):
        torch.testing.assert_close(refit_alpha_free(p.W, p.H, binary, signs, per_channel),
                                   refit_alpha(p.W, p.hinv, binary, signs, per_channel),
                                   rtol=1e-9, atol=1e-12)


def test_one_column_is_the_exact_solution():
    p = problem(7, 1, seed=5)
    grid = fit_grid(p.W, 3, symmetric=True)
    for level, kw in ((LayerLevel(bits=3), {"grid": grid}), (LayerLevel(sparsity=0.4), {}),
                      (LayerLevel(fp_count=2), {"alpha": fit_alpha(p.W, 0.3, False)})):
        lazy = solve_lazy(p, level, **kw)
        exact = solve_layer(p, level, **kw)
        torch.testing.assert_close(lazy.weight, exact.weight, rtol=0, atol=1e-12)


@pytest.mark.parametrize("level, factor", [
    (LayerLevel(bits=3), 1.35), (LayerLevel(bits=3, symmetric=False), 1.35),
    (LayerLevel(sparsity=0.5), 1.6), (LayerLevel(sparsity=0.3, bits=3), 1.6),
    (LayerLevel(fp_count=24), 1.1), (LayerLevel(fp_count=24, per_channel=True), 1.1)])
def test_lazy_is_close_to_the_exact_solver(level, factor):
    """On small problems the exact greedy loop is the reference: the lazy solver's relative
    error stays within ``factor`` of it (binarization: within 10%, its α refit and
    full-precision optimum often beat the exact loop)."""
    ratios = []
    for R, d, seed in ((12, 24, 0), (8, 40, 1), (16, 33, 2)):
        p = problem(R, d, seed)
        kw = {"grid": fit_grid(p.W, 3, level.symmetric)} if level.bits else {}
        if level.fp_count is not None:
            kw = {"alpha": fit_alpha(p.W, 0.05, level.per_channel), "alpha_rounds": 2}
        exact = p.error(solve_layer(p, level, **kw).weight)
        for act_order in (False, True):
            lazy = solve_lazy(p, level, **kw, block_size=16, act_order=act_order)
            ratios.append(p.error(lazy.weight) / exact)
    assert max(ratios) < factor, ratios


@pytest.mark.parametrize("level", [LayerLevel(fp_count=30), LayerLevel(fp_count=30, per_channel=True),
                                   LayerLevel(fp_count=0)])
def test_binarization_levels_hit_their_counts_and_refit_alpha(level):
    R, d = 10, 37
    p = problem(R, d, seed=7)
    alpha = fit_alpha(p.W, 30 / (R * d), level.per_channel)
    sol = solve_lazy(p, level, alpha=alpha, block_size=8, act_order=True, alpha_rounds=2)
    assert int((~sol.binary).sum()) == level.fp_count
    assert bool((sol.alpha == sol.alpha[0]).all()) != level.per_channel
    on = sol.binary
    torch.testing.assert_close(sol.weight[on].abs(), sol.alpha[:, None].expand(R, d)[on])
    # α is the closed-form optimum for the binary set chosen, and the full-precision weights
    # the optimum for that α: moving either only raises the error.
    err = p.error(sol.weight)
    signs = apb_sign(sol.weight)
    for scale in (0.97, 1.03):
        moved = polish_free(p.W, p.H, on, (sol.alpha * scale)[:, None] * signs)
        assert p.error(moved) > err
    jitter = sol.weight + 1e-3 * (~on) * torch.randn(R, d, dtype=torch.float64)
    assert level.fp_count == 0 or p.error(jitter) > err


def test_binarize_losses_sum_to_the_all_binary_error():
    p = problem(6, 20, seed=8)
    alpha = fit_alpha(p.W, 0.0, per_channel=False)
    losses = binarize_losses(p, alpha, block_size=6, act_order=True)
    sol = solve_lazy(p, LayerLevel(fp_count=0), alpha=alpha, block_size=6, act_order=True,
                     alpha_rounds=0)
    assert float(losses.sum()) == pytest.approx(p.error(sol.weight), rel=1e-9)


def test_group_wise_grids_need_the_lazy_solver():
    p = problem(4, 16, seed=9)
    grid = fit_grid(p.W, 4, True, group_size=8)
    assert grid.scale.shape == (4, 2)
    with pytest.raises(OBCError, match="lazy-batch solver"):
        solve_layer(p, LayerLevel(bits=4, group_size=8), grid=grid)
    per_row = solve_lazy(p, LayerLevel(bits=4), grid=fit_grid(p.W, 4, True))
    grouped = solve_lazy(p, LayerLevel(bits=4, group_size=8), grid=grid)
    assert p.error(grouped.weight) < p.error(per_row.weight)
