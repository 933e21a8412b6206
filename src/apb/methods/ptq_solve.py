r"""Which solver compresses a layer, and the per-layer error tables of the global step.

Two solvers stand behind :func:`apb.methods.ptq_`:

- ``"exact"``: the greedy OBS loop of OBC (:mod:`~.obc_greedy`, :func:`~.obc_layer.solve_layer`),
  every decision on the inverse Hessian of the weights still free, in the best order;
  :math:`d^3/3` per row, the reference;
- ``"lazy"``: the lazy-batch solver of GPTQ / SparseGPT (:mod:`~.lazy_batch`), one pass
  over the columns in a fixed order, :math:`O(d^2)` per row.

``"auto"`` (the default) takes the exact loop for layers of at most ``exact_weights`` weights
(65,536: LeNet-5's largest layer, 120x400, solves in about a second) and the lazy one above
(a BERT-base-sized 384x384 layer took 25-35 s exact, a fraction of a second lazy).
"""

from __future__ import annotations

import time

import torch
from tqdm import tqdm

from ..memory import FP32_BITS, dense_storage
from ..summary import summary
from .lazy_batch import binarize_losses, solve_lazy
from .obc_global import choose_levels
from .obc_layer import (
    LayerLevel,
    LayerProblem,
    LayerSolution,
    OBCError,
    solve_layer,
    solve_levels,
)

SOLVERS = ("auto", "exact", "lazy")
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}
BUDGET_UNITS = {"kept": " kept weights", "fp": " full-precision weights", "bits": " bits",
                "bytes": " bytes", "bops": " bit-operations"}


def use_lazy(config, rows: int, cols: int) -> bool:
    """Whether ``config`` (a :class:`~.ptq.PTQConfig`) solves a ``rows x cols`` layer with
    the lazy-batch solver (always for group-wise grids, which only it handles)."""
    if getattr(config, "group_size", None) is not None:
        return True
    if config.solver == "auto":
        return rows * cols > config.exact_weights
    return config.solver == "lazy"


def relative_error(problem: LayerProblem, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """:math:`\\|\\Delta W X\\|^2 / \\|W X\\|^2` with ``H`` the undampened :math:`2XX^\\top/n`."""
    base = problem.error(torch.zeros_like(problem.W), H)
    return problem.error(W_hat, H) / base if base > 0 else 0.0


def solve(config, problem: LayerProblem, level: LayerLevel, fit: dict
          ) -> tuple[LayerSolution, float]:
    """``problem`` solved at ``level`` (``fit``: the grid / α fitted by the method) and the
    seconds it took."""
    started = time.perf_counter()
    dtype = PRECISIONS[config.precision]
    if use_lazy(config, *problem.W.shape):
        solution = solve_lazy(problem, level, **fit, block_size=config.block_size,
                              act_order=config.act_order, dtype=dtype)
    else:
        solution = solve_layer(problem, level, **fit, exact_columns=config.exact_columns,
                               block_size=config.block_size, dtype=dtype)
    return solution, time.perf_counter() - started


def level_table(config, problem: LayerProblem, levels: list[LayerLevel], fits: list[dict],
                H: torch.Tensor) -> list[tuple[LayerSolution | None, float]]:
    """``(solution, relative error)`` of each level of one layer, for the global step.

    The exact solver shares its greedy traces between levels
    (:func:`~.obc_layer.solve_levels`). With the lazy solver, binarization levels are
    *estimated* from one pass that binarizes every weight (:func:`~.lazy_batch.binarize_losses`,
    with the α fitted for the middle level): keeping the :math:`k` weights of largest loss
    increments at full precision is taken to save the sum of those increments,

    .. math:: e(k) \\approx \\Big(\\sum_q \\ell_q - \\sum_{q \\in \\text{top-}k} \\ell_q\\Big)
              \\Big/ \\tfrac12\\operatorname{tr}(W H W^\\top),

    and the solution is left None (the chosen level is solved afterwards); a few seconds for
    a whole transformer instead of one solve per level. Other levels are solved.
    """
    dtype = PRECISIONS[config.precision]
    if not use_lazy(config, *problem.W.shape):
        solutions = solve_levels(problem, levels, fits, exact_columns=config.exact_columns,
                                 block_size=config.block_size, dtype=dtype)
        return [(s, relative_error(problem, s.weight, H)) for s in solutions]
    out: list[tuple[LayerSolution | None, float] | None] = [None] * len(levels)
    binarize = [i for i, lv in enumerate(levels) if lv.kind == "binarize"]
    if binarize:
        alpha = fits[binarize[len(binarize) // 2]]["alpha"]
        losses = binarize_losses(problem, alpha, block_size=config.block_size,
                                 act_order=config.act_order, dtype=dtype).double()
        ranked = torch.sort(losses.reshape(-1), descending=True).values
        saved = torch.cat([torch.zeros(1, dtype=ranked.dtype), ranked.cumsum(0)])
        total = float(saved[-1])
        base = problem.error(torch.zeros_like(problem.W))
        for i in binarize:
            left = total - float(saved[levels[i].fp_count])
            out[i] = (None, max(left, 0.0) / base if base > 0 else 0.0)
    for i, lv in enumerate(levels):
        if out[i] is None:
            solution, _ = solve(config, problem, lv, fits[i])
            out[i] = (solution, relative_error(problem, solution.weight, H))
    return out


def budget_total(model, names, problems, collectors, budget) -> float:
    """The model-wide budget in the units of the layers' level costs."""
    kind, value = budget
    sizes = [problems[n].W.numel() for n in names]
    total = sum(sizes)
    if kind == "kept":
        return total - round(value * total)
    if kind == "fp":
        return round(value * total)
    if kind == "bits":
        return value * total
    if kind == "bytes":
        fixed = summary(model).model_bytes - sum(dense_storage(n).total_bytes for n in sizes)
        if value <= fixed:
            raise OBCError(f"model_bytes={value:,} cannot be met: the layers left "
                           f"uncompressed, biases and BatchNorm alone take {fixed:,} bytes")
        return value - fixed
    if kind == "bops":
        full = sum(collectors[n].positions * s * FP32_BITS * FP32_BITS
                   for n, s in zip(names, sizes))
        return full / value
    raise ValueError(f"unknown budget kind {kind!r}")


def global_step(method, names, modules, problems, hessians, collectors, budget,
                 progress) -> dict:
    """Error tables at every level of every layer (:func:`level_table`), then
    the DP (:mod:`~.obc_global`); the chosen level of each layer is solved again in full when
    the table used a shortcut or an estimate."""
    c = method.config
    kind, value = budget
    tables = {}
    for name in (bar := tqdm(names, desc="ptq levels", disable=not progress, leave=False,
                                dynamic_ncols=True)):
        bar.set_postfix_str(name)
        problem, H = problems[name], hessians[name]
        rows, cols = problem.W.shape
        levels = method.level_grid(name, modules[name].weight)
        started = time.perf_counter()
        fits = [method.fit(problem.W, level) for level in levels]
        table = level_table(c, problem, levels, fits, H)
        secs = (time.perf_counter() - started) / len(levels)
        tables[name] = [
            (level, solution, err, secs,
             method.level_cost(kind, level, rows, cols, collectors[name].positions))
            for level, (solution, err) in zip(levels, table)
        ]
    picks = choose_levels(
        [[e[4] for e in tables[n]] for n in names], [[e[2] for e in tables[n]] for n in names],
        value, names=names, unit=BUDGET_UNITS[kind],
    )
    chosen = {}
    for name, j in zip(names, picks):
        level, solution, err, secs, _ = tables[name][j]
        if solution is None or (level.kind == "binarize" and getattr(c, "alpha_rounds", 0) > 1):
            solution, secs = solve(c, problems[name], level, method.fit(problems[name].W, level))
            err = relative_error(problems[name], solution.weight, hessians[name])
        chosen[name] = (level, solution, err, secs)
    return chosen
