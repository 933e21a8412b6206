"""The OBC solver against a brute-force numpy reference that re-inverts the Hessian of the
free weights from scratch at every step, and against closed forms."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from apb.methods.obc_global import choose_levels
from apb.methods.obc_greedy import (
    greedy_obs,
    obs_fix,
    prefix_counts,
    prefix_fix,
    refit_alpha,
)
from apb.methods.obc_layer import LayerLevel, LayerProblem, OBCError, solve_layer
from apb.methods.obc_targets import SignTarget, fit_alpha, fit_grid, zero_target


def hessian(d, n, seed, dead=()):
    g = np.random.default_rng(seed)
    X = g.standard_normal((n, d)) * g.uniform(0.2, 2.0, d)
    X[:, list(dead)] = 0
    return 2 * X.T @ X / n


def brute_force(w, H, steps, target, nm=None, urgent=None):
    """Greedy OBS the slow way: at each step invert H over the free weights anew, pick the
    least (w_q - t_q)^2 / [H_F^-1]_qq (weights flagged urgent first, largest error first),
    compensate the free weights, fix q."""
    w = w.copy()
    free = list(range(len(w)))
    order = []
    per_group = {}
    for _ in range(steps):
        G = np.linalg.inv(H[np.ix_(free, free)])
        t = np.array([target(w[j]) for j in free])
        err = w[free] - t
        score = err**2 / np.diag(G)
        if urgent is not None:
            flag = np.array([urgent(w[j]) for j in free])
            score = np.where(flag, -(err**2), score)
        if nm is not None:
            n, m = nm
            full = np.array([per_group.get(j // m, 0) >= n for j in free])
            score = np.where(full, np.inf, score)
        q = int(np.argmin(score))
        col = free[q]
        w[free] = w[free] - err[q] / G[q, q] * G[:, q]
        w[col] = t[q]
        order.append(col)
        if nm is not None:
            per_group[col // nm[1]] = per_group.get(col // nm[1], 0) + 1
        free.pop(q)
    return order, w


def run_both(R, d, steps, seed, make_target, **kw):
    H = hessian(d, 4 * d, seed)
    W = np.random.default_rng(seed + 1).standard_normal((R, d))
    target, np_targets = make_target(torch.from_numpy(W))
    trace = greedy_obs(torch.from_numpy(W), torch.linalg.inv(torch.from_numpy(H)), target,
                       steps, **kw)
    for r in range(R):
        t_r, u_r = np_targets(r)
        order, w = brute_force(W[r], H, steps, t_r, nm=kw.get("nm"), urgent=u_r)
        assert trace.order[r].tolist() == order
        np.testing.assert_allclose(trace.weights[r].numpy(), w, atol=1e-9, rtol=1e-9)
    return trace


def pruning(W):
    return zero_target, lambda r: (lambda v: 0.0, None)


def quantization(W):
    grid = fit_grid(W, 3, symmetric=False, mse=False)
    grid.scale *= 0.6  # a grid narrower than the row, so some weights fall outside it
    s, z, maxq = grid.scale.numpy(), grid.zero.numpy(), grid.maxq

    def np_targets(r):
        def t(v):
            return s[r] * (np.clip(np.round(v / s[r]) + z[r], 0, maxq) - z[r])

        def outside(v):
            x = v / s[r] + z[r]
            return x < -0.5 or x > maxq + 0.5

        return t, outside

    return grid, np_targets


def binarization(W):
    alpha = fit_alpha(W, 0.1, per_channel=True)
    a = alpha.numpy()
    return SignTarget(alpha), lambda r: ((lambda v: a[r] * (1.0 if v >= 0 else -1.0)), None)


@settings(max_examples=12, deadline=None)
@given(R=st.integers(1, 5), d=st.integers(2, 14), frac=st.floats(0.1, 1.0),
       seed=st.integers(0, 10_000))
def test_greedy_pruning_matches_brute_force(R, d, frac, seed):
    steps = max(1, round(frac * d))
    trace = run_both(R, d, steps, seed, pruning)
    assert (trace.weights[trace.decided()] == 0).all()


@pytest.mark.parametrize("make_target", [quantization, binarization])
@pytest.mark.parametrize("R, d, seed", [(3, 9, 0), (4, 16, 1), (2, 40, 2)])
def test_greedy_quantization_and_binarization_match_brute_force(make_target, R, d, seed):
    run_both(R, d, d, seed, make_target)


def test_greedy_compacts_wide_rows_without_changing_the_result():
    # d = 80 > COMPACT_MIN: decided columns are dropped from the working copies midway.
    run_both(3, 80, 70, 5, pruning)


def test_nm_constraint_matches_brute_force_and_holds():
    trace = run_both(4, 16, 8, 3, pruning, nm=(2, 4))
    pruned = trace.decided().reshape(4, 4, 4).sum(2)
    assert (pruned == 2).all()


def test_decided_weights_are_eliminated_first():
    # Starting with columns fixed = running the reference on the rest with those fixed.
    H = hessian(10, 60, 7)
    W = np.random.default_rng(8).standard_normal((2, 10))
    fixed = torch.zeros((2, 10), dtype=torch.bool)
    fixed[0, [1, 4]] = True
    fixed[1, [0]] = True
    hinv = torch.linalg.inv(torch.from_numpy(H))
    Wt = torch.from_numpy(W)
    trace = greedy_obs(Wt, hinv, zero_target, 5, decided=fixed)
    for r in range(2):
        keep = [j for j in range(10) if not fixed[r, j]]
        order, w = brute_force(W[r, keep], H[np.ix_(keep, keep)], 5, lambda v: 0.0)
        assert trace.order[r].tolist() == [keep[j] for j in order]
        np.testing.assert_allclose(trace.weights[r, keep].numpy(), w, atol=1e-9)
        np.testing.assert_array_equal(trace.weights[r, fixed[r]].numpy(), W[r, fixed[r]])


def test_prefix_fix_equals_the_greedy_state_after_k_steps():
    H = torch.from_numpy(hessian(12, 50, 9))
    hinv = torch.linalg.inv(H)
    W = torch.from_numpy(np.random.default_rng(10).standard_normal((4, 12)))
    full = greedy_obs(W, hinv, zero_target, 12)
    counts = torch.tensor([0, 3, 7, 12])
    fixed = prefix_fix(W, hinv, full, counts)
    for r, k in enumerate(counts.tolist()):
        partial = greedy_obs(W[r:r + 1], hinv, zero_target, k) if k else None
        expect = W[r] if partial is None else partial.weights[0]
        torch.testing.assert_close(fixed[r], expect, atol=1e-9, rtol=1e-9)


def test_prefix_counts_takes_the_cheapest_prefixes():
    losses = torch.tensor([[1.0, 5.0, 6.0], [2.0, 3.0, 4.0]])
    assert prefix_counts(losses, 0).tolist() == [0, 0]
    assert prefix_counts(losses, 3).tolist() == [1, 2]
    assert prefix_counts(losses, 4).tolist() == [1, 3]
    # A cheap later step is reachable only through its costlier predecessor (running max).
    assert prefix_counts(torch.tensor([[1.0, 9.0, 0.0], [2.0, 3.0, 4.0]]), 4).tolist() == [1, 3]
    with pytest.raises(ValueError):
        prefix_counts(losses, 7)


def test_obs_fix_is_the_constrained_least_squares_optimum():
    H = torch.from_numpy(hessian(8, 40, 11))
    w = torch.from_numpy(np.random.default_rng(12).standard_normal((1, 8)))
    S, t = [1, 5, 6], torch.tensor([[0.3, 0.0, -0.2]], dtype=torch.float64)
    got = obs_fix(w, torch.linalg.inv(H), torch.tensor([S]), torch.ones(1, 3, dtype=torch.bool), t)
    # Reference: minimise (v - w) H (v - w)^T over v with v_S = t, by solving for v_F.
    F = [j for j in range(8) if j not in S]
    v = w.clone()
    v[0, S] = t[0]
    rhs = -(H[np.ix_(F, S)] @ (t[0] - w[0, S]))
    v[0, F] = w[0, F] + torch.linalg.solve(H[np.ix_(F, F)], rhs)
    torch.testing.assert_close(got, v)


def test_refit_alpha_minimises_the_error_over_alpha():
    H = torch.from_numpy(hessian(10, 60, 13))
    hinv = torch.linalg.inv(H)
    W = torch.from_numpy(np.random.default_rng(14).standard_normal((3, 10)))
    binary = torch.rand(3, 10, generator=torch.Generator().manual_seed(0)) < 0.8
    signs = torch.where(W < 0, -1.0, 1.0).double()

    def error(alpha):
        k = int(binary.sum(1).max())
        idx = torch.sort(binary.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :k]
        v = obs_fix(W, hinv, idx, binary.gather(1, idx), alpha[:, None] * signs.gather(1, idx))
        D = v - W
        return ((D @ H) * D).sum(1)

    per_row = refit_alpha(W, hinv, binary, signs, per_channel=True)
    layer = refit_alpha(W, hinv, binary, signs, per_channel=False)
    assert torch.all(layer == layer[0])
    for scale in (0.9, 0.99, 1.01, 1.1):
        assert (error(per_row * scale) > error(per_row)).all()  # each row at its optimum
        assert error(layer * scale).sum() > error(layer).sum()  # the layer at its optimum


def test_blocks_pass_on_decisions_with_the_exact_compensation():
    # Quantizing in blocks of 8 columns puts every weight on the grid at an error close to
    # the whole-row solver's; and block 2 starts exactly where the closed-form OBS solution
    # for block 1's values puts the later columns, with the inverse of the still-free set.
    R, d = 6, 32
    H = torch.from_numpy(hessian(d, 200, 15))
    W = torch.from_numpy(np.random.default_rng(16).standard_normal((R, d)))
    problem = LayerProblem.build("layer", W, H, 200, dampening=0.0)
    grid = fit_grid(W, 3, symmetric=True)
    exact = solve_layer(problem, LayerLevel(bits=3), grid=grid)
    blocked = solve_layer(problem, LayerLevel(bits=3), grid=grid, exact_columns=8, block_size=8)
    for sol in (exact, blocked):
        torch.testing.assert_close(sol.weight, grid.quantize(sol.weight))
    assert problem.error(blocked.weight) < 1.1 * problem.error(exact.weight)
    idx = torch.arange(8).expand(R, 8)
    closed = obs_fix(W, problem.hinv, idx, torch.ones(R, 8, dtype=torch.bool),
                     blocked.weight[:, :8])
    free_inverse = torch.linalg.inv(H[8:, 8:])[:8, :8]
    trace = greedy_obs(closed[:, 8:16], free_inverse, grid, 8)
    torch.testing.assert_close(trace.weights, blocked.weight[:, 8:16], atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("level", [LayerLevel(sparsity=0.5), LayerLevel(nm=(2, 4)),
                                   LayerLevel(sparsity=0.3, bits=3), LayerLevel(fp_count=20),
                                   LayerLevel(fp_count=20, per_channel=True)])
def test_layer_levels_hit_their_counts(level):
    R, d = 8, 24
    H = torch.from_numpy(hessian(d, 100, 17))
    W = torch.from_numpy(np.random.default_rng(18).standard_normal((R, d)))
    problem = LayerProblem.build("layer", W, H, 100, dampening=0.01)
    for kw in ({}, {"exact_columns": 8, "block_size": 8}):
        sol = solve_layer(problem, level, grid=fit_grid(W, 3, True),
                          alpha=fit_alpha(W, 0.1, level.per_channel), **kw)
        if level.fp_count is not None:
            assert int((~sol.binary).sum()) == level.fp_count
            assert torch.all(sol.alpha == sol.alpha[0]) != level.per_channel
            alpha_of = sol.alpha[:, None].expand(R, d)
            torch.testing.assert_close(sol.weight[sol.binary].abs(), alpha_of[sol.binary])
        elif level.nm is not None:
            assert ((~sol.keep).reshape(R, -1, 4).sum(2) == 2).all()
        else:
            assert int((~sol.keep).sum()) == round(level.sparsity * R * d)
            assert (sol.weight[~sol.keep] == 0).all()


def test_bad_layers_are_named():
    W = torch.randn(4, 10, dtype=torch.float64)
    with pytest.raises(OBCError, match="layer 'fc'.*10 weights per output.*only 6 input"):
        LayerProblem.build("fc", W, torch.eye(10), 6, 0.01)
    H = torch.from_numpy(hessian(10, 40, 19, dead=[3]))
    with pytest.raises(OBCError, match="Hessian of layer 'fc' is singular"):
        LayerProblem.build("fc", W, H, 40, dampening=0.0)
    LayerProblem.build("fc", W, H, 40, dampening=0.01)  # dampening fixes a dead input
    with pytest.raises(OBCError, match="only zero"):
        LayerProblem.build("fc", W, torch.zeros(10, 10), 40, 0.01)
    problem = LayerProblem.build("fc", W, torch.eye(10, dtype=torch.float64), 40, 0.0)
    with pytest.raises(OBCError, match="layer 'fc' has 10 weights per row, not a multiple"):
        solve_layer(problem, LayerLevel(nm=(2, 4)))


def test_choose_levels_is_the_dp_optimum():
    costs = [[10, 6, 3], [8, 4, 1], [5, 2]]
    errors = [[0.0, 1.0, 3.0], [0.0, 0.5, 4.0], [0.0, 2.5]]
    for budget in (8, 12, 15, 23):
        got = choose_levels(costs, errors, budget, resolution=budget)
        best = min(
            (sum(errors[i][j] for i, j in enumerate(js)), js)
            for js in np.ndindex(3, 3, 2) if sum(costs[i][j] for i, j in enumerate(js)) <= budget
        )
        assert sum(errors[i][j] for i, j in enumerate(got)) == best[0]
        assert sum(costs[i][j] for i, j in enumerate(got)) <= budget
    with pytest.raises(OBCError, match="cannot be met"):
        choose_levels(costs, errors, 5)
