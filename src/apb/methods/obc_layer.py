r"""One layer's OBC problem: from :math:`H` and :math:`W` to the compressed weights.

A :class:`LayerLevel` says what to make of the layer (prune to a sparsity or N:M, quantize to
a k-bit grid, both, or binarize all but a number of full-precision weights);
:func:`solve_layer` runs the greedy OBS loop of :mod:`apb.methods.obc_greedy` for it.

Rows up to ``exact_columns`` weights wide are solved exactly as in OBC: one greedy loop over
the whole row, pruned / full-precision counts chosen across rows by the loss traces.
Wider rows would cost :math:`d^3/3` per row (hours for a 512×4608 layer on a CPU), so they
are cut into blocks of ``block_size`` columns processed left to right. Within a block the
greedy loop is exact, on the inverse Hessian of the weights still free (that block and every
later column); its decisions are passed on to the later columns with the exact OBS
compensation, done lazily once per block. With :math:`H^{-1} = U^\top U` (upper Cholesky),
the free set :math:`F = B \cup L` of block :math:`B` and the later columns :math:`L` has
:math:`(H_{FF})^{-1}_{BB} = U_{BB}^\top U_{BB}`, and a change :math:`\Delta w_B` of the
block moves the later columns to their optimum by

.. math:: \Delta w_L = -H_{LL}^{-1}H_{LB}\,\Delta w_B = (\Delta w_B\,U_{BB}^{-1})\,U_{BL}

(rows as row vectors). What is approximate is only the choice: weights are decided
greedily among one block at a time, and each block gets its share of the layer's pruned (or
full-precision) count, chosen across rows by the block's loss traces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .obc_greedy import (
    GreedyTrace,
    greedy_obs,
    obs_fix,
    prefix_counts,
    prefix_fix,
    refit_alpha,
    single_thread,
)
from .obc_targets import QuantGrid, SignTarget, apb_sign, zero_target

EXACT_COLUMNS = 512
BLOCK_SIZE = 128


class OBCError(ValueError):
    """A layer cannot be compressed as asked; the message names the layer."""


@dataclass(frozen=True)
class LayerLevel:
    """One way to compress a layer.

    Attributes:
        sparsity: fraction of the layer's weights to prune (unstructured; counts may differ
            between rows, chosen by their losses).
        nm: ``(n, m)``: prune ``n`` of every ``m`` consecutive weights of each row.
        bits: quantize the kept weights to a per-row grid of ``2**bits`` levels (None: keep
            them at full precision).
        symmetric: the grid is symmetric around 0 (else it also stores a zero point).
        fp_count: binarize the layer to ``±α`` except this many full-precision weights
            (post-training APB); excludes the other fields.
        per_channel: one ``α`` per row instead of one for the layer (binarization; the
            ``alpha`` given to :func:`solve_layer` must be fitted the same way).
        group_size: quantization grid per group of this many columns of a row instead of
            per row (lazy-batch solver only, :mod:`apb.methods.lazy_batch`).
    """

    sparsity: float = 0.0
    nm: tuple[int, int] | None = None
    bits: int | None = None
    symmetric: bool = True
    fp_count: int | None = None
    per_channel: bool = False
    group_size: int | None = None

    @property
    def kind(self) -> str:
        if self.fp_count is not None:
            return "binarize"
        pruned = self.sparsity > 0 or self.nm is not None
        if self.bits is None:
            return "prune"
        return "compound" if pruned else "quant"

    def describe(self) -> str:
        parts = []
        if self.nm is not None:
            parts.append(f"{self.nm[0]}:{self.nm[1]}")
        elif self.sparsity:
            parts.append(f"sparsity {self.sparsity:g}")
        if self.bits is not None:
            parts.append(f"{self.bits}-bit" + (f" g{self.group_size}" if self.group_size
                                                else ""))
        if self.fp_count is not None:
            parts.append(f"binary, {self.fp_count} fp")
        return ", ".join(parts) or "dense"


@dataclass
class LayerProblem:
    """A layer's weights ``W`` (R × d, rows = output channels) and its dampened Hessian."""

    name: str
    W: torch.Tensor
    H: torch.Tensor  # dampened, float64
    hinv: torch.Tensor  # float64

    @classmethod
    def build(cls, name: str, W: torch.Tensor, H: torch.Tensor, n_inputs: int,
              dampening: float, cross: torch.Tensor | None = None) -> LayerProblem:
        r"""Check that ``H`` (from ``n_inputs`` input vectors) can be inverted and invert it.

        With ``cross`` :math:`= K^\top = \frac2n\sum x_f x_q^\top` (sequential calibration:
        the layer will see inputs :math:`x_q` but should reproduce the full-precision output
        :math:`W x_f`), the objective :math:`\frac1n\|W X_f - \hat W X_q\|^2` is, up to a
        constant, :math:`\tfrac12\operatorname{tr}(\hat W H \hat W^\top) -
        \operatorname{tr}(\hat W K W^\top)`. Writing it as the usual objective around
        :math:`W` plus the part due to the inputs having changed,
        :math:`\tfrac12\operatorname{tr}(\Delta H\Delta^\top) - \operatorname{tr}(\hat W (K - H)
        W^\top)` with :math:`\Delta = \hat W - W`, and dampening :math:`H` as everywhere
        else gives :math:`\tfrac12\operatorname{tr}\big((\hat W - W^*) H (\hat W - W^*)^\top\big)`
        + const with the least-squares target

        .. math:: W^* = W + W (K^\top - H) H^{-1},

        so the problem is stated for :math:`W^*` and the solver is unchanged. When the inputs
        have not changed (:math:`K = H`), :math:`W^* = W` exactly, whatever the dampening.

        Raises :class:`OBCError` naming the layer when there are fewer input vectors than
        weights per row, or when the dampened ``H`` is not positive definite.
        """
        R, d = W.shape
        if n_inputs < d:
            raise OBCError(
                f"layer {name!r} has {d} weights per output but calibration gave only "
                f"{n_inputs} input vectors, so its Hessian is rank-deficient; give at least "
                f"{d} (more calibration samples)"
            )
        H0 = H.double()
        H = H0.clone()
        diag = H.diagonal()
        mean = float(diag.mean())
        if not mean > 0 or not torch.isfinite(H).all():
            raise OBCError(f"layer {name!r} saw only zero (or non-finite) inputs during "
                           "calibration; its Hessian is singular")
        diag += dampening * mean
        with single_thread():  # LAPACK's inverse: 10x slower on 2 threads of a busy machine
            L, info = torch.linalg.cholesky_ex(H)
            if int(info) != 0:
                raise OBCError(
                    f"the Hessian of layer {name!r} is singular (not positive definite at "
                    f"column {int(info) - 1}); use dampening > 0 (now {dampening}) or more "
                    "calibration samples"
                )
            hinv = torch.cholesky_inverse(L)
        W = W.double()
        if cross is not None:
            W = W + W @ (cross.double() - H0) @ hinv
        return cls(name, W, H, hinv)

    def error(self, W_hat: torch.Tensor, H: torch.Tensor | None = None) -> float:
        r""":math:`\tfrac12\operatorname{tr}(\Delta W H \Delta W^\top)`
        (:math:`= \|\Delta W X\|^2` when ``H`` is the undampened :math:`2XX^\top`)."""
        H = self.H if H is None else H
        D = W_hat.double() - self.W
        return 0.5 * float(((D @ H) * D).sum())


@dataclass
class LayerSolution:
    """Compressed weights and what each weight became.

    ``keep``: False where pruned. ``binary``: True where binarized to ``±α``. ``grid``: the
    quantization grid of the kept weights (None: full precision). ``alpha``: (R,).
    """

    weight: torch.Tensor
    keep: torch.Tensor
    binary: torch.Tensor | None = None
    grid: QuantGrid | None = None
    alpha: torch.Tensor | None = None


def solve_layer(
    problem: LayerProblem,
    level: LayerLevel,
    *,
    grid: QuantGrid | None = None,
    alpha: torch.Tensor | None = None,
    exact_columns: int = EXACT_COLUMNS,
    block_size: int = BLOCK_SIZE,
    dtype: torch.dtype = torch.float64,
    alpha_rounds: int = 1,
) -> LayerSolution:
    """Compress ``problem``'s weights to ``level`` (``grid`` for quantization and ``alpha``
    for binarization come fitted from the original weights).

    Binarization of rows up to ``exact_columns`` wide: after the greedy loop, ``α`` is refit
    in closed form to the binary set it chose (:func:`~.obc_greedy.refit_alpha`) and the
    weights re-solved; each further round of ``alpha_rounds`` reruns the greedy loop with
    that ``α``. The round of least layer error is kept.
    """
    if level.kind == "binarize" and problem.W.shape[1] <= exact_columns and alpha_rounds:
        return _binarize_refit(problem, level, alpha, alpha_rounds, dtype)
    name = problem.name
    W = problem.W.to(dtype).clone()
    R, d = W.shape
    check_level(name, level, R, d, grid, alpha)
    if level.nm is not None and d > exact_columns and block_size % level.nm[1]:
        raise OBCError(f"block_size {block_size} must be a multiple of m={level.nm[1]} "
                       f"for {level.nm[0]}:{level.nm[1]} sparsity")
    if d <= exact_columns:
        bounds = [(0, d)]
        U = None
    else:
        bounds = [(i, min(d, i + block_size)) for i in range(0, d, block_size)]
        U = torch.linalg.cholesky(problem.hinv, upper=True).to(dtype)
    keep = torch.ones((R, d), dtype=torch.bool)
    binary = torch.zeros((R, d), dtype=torch.bool) if level.kind == "binarize" else None
    n = R * d
    for i, j in bounds:
        if U is None:
            G = problem.hinv.to(dtype)
        else:
            G = U[i:j, i:j].t() @ U[i:j, i:j]
        w = W[:, i:j]
        share = _share(level, n, R, i, j, d)
        new, keep_b, bin_b = _solve_block(w, G, level, share, grid, alpha)
        keep[:, i:j] = keep_b
        if binary is not None:
            binary[:, i:j] = bin_b
        if U is not None and j < d:
            delta = new - w
            E = torch.linalg.solve_triangular(U[i:j, i:j], delta, upper=True, left=False)
            W[:, j:] += E @ U[i:j, j:]
        W[:, i:j] = new
    return LayerSolution(W, keep, binary, grid, alpha)


def _binarize_refit(problem, level, alpha, rounds, dtype) -> LayerSolution:
    check_level(problem.name, level, *problem.W.shape, None, alpha)
    W0, hinv = problem.W.to(dtype), problem.hinv.to(dtype)
    best, best_err = None, float("inf")
    for _ in range(rounds):
        trace = greedy_obs(W0, hinv, SignTarget(alpha), W0.shape[1])
        solution = _binary_fix(W0, hinv, trace, level, alpha, refit=True)
        alpha = solution.alpha
        err = problem.error(solution.weight)
        if err < best_err:
            best, best_err = solution, err
    return best


def _binary_fix(W0, hinv, trace, level, alpha, refit: bool) -> LayerSolution:
    """Binarize the first steps of ``trace`` (as many as ``level`` allows), optionally with
    ``α`` refit to that binary set, the rest compensated (closed form)."""
    R, d = W0.shape
    counts = prefix_counts(trace.losses, R * d - level.fp_count)
    binary = _prefix_mask(trace, counts)
    signs = apb_sign(trace.weights)
    alpha = alpha.to(W0.dtype)
    if refit and bool(binary.any()):
        new = refit_alpha(W0, hinv, binary, signs, level.per_channel)
        alpha = torch.where(new > 0, new, alpha)
    k = int(binary.sum(1).max())
    idx = torch.sort(binary.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :k]
    W = obs_fix(W0, hinv, idx, binary.gather(1, idx), alpha.unsqueeze(1) * signs.gather(1, idx))
    return LayerSolution(W, torch.ones((R, d), dtype=torch.bool), binary, None, alpha.clone())


def solve_levels(
    problem: LayerProblem,
    levels: list[LayerLevel],
    fits: list[dict],
    *,
    exact_columns: int = EXACT_COLUMNS,
    block_size: int = BLOCK_SIZE,
    dtype: torch.dtype = torch.float64,
) -> list[LayerSolution]:
    """:func:`solve_layer` for several levels of one layer (``fits[i]``: the keyword
    arguments of level ``i``), sharing work where the levels only keep different numbers of
    greedy steps. Rows up to ``exact_columns`` wide run one pruning trace for every
    unstructured sparsity (and the pruning half of compound levels), and one binarization
    trace for every full-precision count, with ``α`` refit per level (once: the table need
    not be as sharp as the final solve)."""
    R, d = problem.W.shape
    out: list[LayerSolution | None] = [None] * len(levels)
    if d <= exact_columns:
        W0, hinv = problem.W.to(dtype), problem.hinv.to(dtype)
        unstructured = [i for i, lv in enumerate(levels)
                        if lv.kind in ("prune", "compound") and lv.nm is None and lv.sparsity > 0]
        if len(unstructured) > 1:
            trace = greedy_obs(W0, hinv, zero_target, d)
            pruned = {}
            for i in unstructured:
                lv = levels[i]
                if lv.sparsity not in pruned:
                    check_level(problem.name, lv, R, d, fits[i].get("grid"), None)
                    counts = prefix_counts(trace.losses, round(lv.sparsity * R * d))
                    pruned[lv.sparsity] = (prefix_fix(W0, hinv, trace, counts),
                                           ~_prefix_mask(trace, counts))
                W, keep = pruned[lv.sparsity]
                grid = fits[i].get("grid")
                if lv.bits is not None:
                    W = greedy_obs(W, hinv, grid, d, decided=~keep).weights
                out[i] = LayerSolution(W, keep, None, grid)
        binarize = [i for i, lv in enumerate(levels) if lv.kind == "binarize"]
        if len(binarize) > 1:
            alpha = fits[binarize[len(binarize) // 2]]["alpha"]
            trace = greedy_obs(W0, hinv, SignTarget(alpha), d)
            for i in binarize:
                check_level(problem.name, levels[i], R, d, None, alpha)
                refit = fits[i].get("alpha_rounds", 1) > 0
                out[i] = _binary_fix(W0, hinv, trace, levels[i], alpha, refit)
    for i, lv in enumerate(levels):
        if out[i] is None:
            out[i] = solve_layer(problem, lv, **fits[i], exact_columns=exact_columns,
                                 block_size=block_size, dtype=dtype)
    return out


def check_level(name, level, R, d, grid, alpha, lazy: bool = False):
    """Raise :class:`OBCError` naming the layer when ``level`` cannot be applied to it."""
    if level.nm is not None:
        n_, m_ = level.nm
        if not 0 < n_ < m_:
            raise OBCError(f"N:M sparsity needs 0 < n < m, got {n_}:{m_}")
        if d % m_:
            raise OBCError(f"layer {name!r} has {d} weights per row, not a multiple of "
                           f"m={m_}: it cannot be pruned {n_}:{m_}")
    if not 0.0 <= level.sparsity < 1.0:
        raise OBCError(f"sparsity must lie in [0, 1), got {level.sparsity}")
    if level.bits is not None and (grid is None or grid.scale.shape[0] != R):
        raise OBCError(f"layer {name!r}: quantization needs a grid fitted to its {R} rows")
    if grid is not None and grid.group_size is not None and not lazy:
        raise OBCError(f"layer {name!r}: group-wise grids (group_size={grid.group_size}) "
                       "need the lazy-batch solver (solver='lazy')")
    if level.fp_count is not None:
        if not 0 <= level.fp_count <= R * d:
            raise OBCError(f"layer {name!r} has {R * d} weights, cannot keep "
                           f"{level.fp_count} at full precision")
        if alpha is None:
            raise OBCError(f"layer {name!r}: binarization needs alpha")


def _share(level: LayerLevel, n: int, R: int, i: int, j: int, d: int) -> int:
    """Pruned (or binarized) weights of columns ``[i, j)``: the layer's count spread over
    the blocks in proportion to their width, summing exactly to the layer's count."""
    if level.kind == "binarize":
        fp = round(level.fp_count * j / d) - round(level.fp_count * i / d)
        return R * (j - i) - fp
    return round(level.sparsity * R * j) - round(level.sparsity * R * i)


def _solve_block(w, G, level, share, grid, alpha):
    R, B = w.shape
    kind = level.kind
    if kind == "binarize":
        trace = greedy_obs(w, G, SignTarget(alpha), B)
        counts = prefix_counts(trace.losses, share)
        return prefix_fix(w, G, trace, counts), torch.ones_like(w, dtype=torch.bool), \
            _prefix_mask(trace, counts)
    keep = torch.ones((R, B), dtype=torch.bool)
    if level.nm is not None:
        n_, m_ = level.nm
        trace = greedy_obs(w, G, zero_target, B * n_ // m_, nm=level.nm)
        w, keep = trace.weights, ~trace.decided()
    elif level.sparsity > 0:
        trace = greedy_obs(w, G, zero_target, B)
        counts = prefix_counts(trace.losses, share)
        w = prefix_fix(w, G, trace, counts)
        keep = ~_prefix_mask(trace, counts)
    if level.bits is not None:
        trace = greedy_obs(w, G, grid, B, decided=~keep)
        w = trace.weights
    return w, keep, None


def _prefix_mask(trace: GreedyTrace, counts: torch.Tensor) -> torch.Tensor:
    R, K = trace.order.shape
    take = (torch.arange(K).unsqueeze(0) < counts.unsqueeze(1)) & (trace.order >= 0)
    mask = torch.zeros(trace.weights.shape, dtype=torch.bool)
    rows = torch.arange(R).unsqueeze(1).expand(R, K)
    mask[rows[take], trace.order[take]] = True
    return mask
