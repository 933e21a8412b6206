r"""The lazy-batch OBS solver: every post-training target in one pass over the columns.

Frantar, Ashkboos, Hoefler, Alistarh, *GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers*, ICLR 2023 (arXiv:2210.17323), §4, for the column
order, the Cholesky form and the lazy batches; Frantar & Alistarh, *SparseGPT: Massive
Language Models Can Be Accurately Pruned in One-Shot*, ICML 2023 (arXiv:2301.00774), §3-4,
for the masks chosen per block. The exact greedy loop (:mod:`apb.methods.obc_greedy`) costs
:math:`d^3/3` per row; this costs :math:`O(d^2)` per row plus one :math:`d^3` factorisation
per layer, at the price of a fixed column order.

**Fixed order.** As in OBC (:mod:`~.obc_greedy`) the objective is
:math:`\tfrac12\operatorname{tr}(\Delta W H \Delta W^\top)`, row by row. Columns are decided
in a fixed order :math:`\pi` (the natural one, or *activation order*: descending
:math:`H_{qq}`, so the columns with the largest inputs are decided while most others can
still compensate; the permutation is undone at the end). When the :math:`k`-th column
:math:`q = \pi_k` is fixed, the free set is :math:`F = \{\pi_k, \dots, \pi_{d-1}\}`. With
:math:`H^{-1} = U^\top U` (upper Cholesky factor of the inverse of the dampened,
permuted :math:`H`), row :math:`k` of :math:`U` gives the inverse Hessian of the free set,
:math:`[H_{FF}^{-1}]_{q,F} = U_{kk}\,U_{k,F}`, so the OBS step that fixes :math:`w_q` at
:math:`t_q` and lets the later columns compensate is

.. math:: e = \frac{w_q - t_q}{U_{kk}}, \qquad w_F \leftarrow w_F - e\,U_{k,F},
          \qquad \Delta L = \tfrac12 e^2 ,

exactly (the losses sum to the final objective).

**Lazy batches.** Columns go in blocks of ``block_size``; within a block the update is
applied at once to the block's later columns, while the :math:`R \times B` errors
:math:`E` are applied to all columns after the block in one matrix product,
:math:`W_{:,L} \leftarrow W_{:,L} - E\,U_{B,L}`, which is the same arithmetic reordered.

**Targets** :math:`t_q`:

- *quantization*: the nearest point of the row's grid (:class:`~.obc_targets.QuantGrid`,
  per channel or per group of columns);
- *pruning*: 0 for the weights of the block's mask. Unstructured: at the start of each
  block the ``share`` weights of least :math:`w_q^2 / U_{kk}^2`
  (:math:`= w_q^2/[H_{FF}^{-1}]_{qq}`, the OBS saliency) among all the block's rows
  and columns, the layer's count spread over the blocks in proportion to their width
  (SparseGPT). N:M: at the start of each group of ``m`` columns, the ``n`` of least saliency
  in each row. Pruning (and compound) levels take the natural order, as SparseGPT does;
- *compound*: pruned weights go to 0, the others to the grid;
- *binarization* (post-training APB): :math:`\alpha_r\,\mathrm{sign}(w_q)` except at the
  full-precision positions, which keep their value. Those are chosen at the start of each
  block as the weights of largest :math:`(w_q - \alpha\,\mathrm{sign}\,w_q)^2 / U_{kk}^2`;
  how many each block gets comes from the same saliency with every weight free,
  :math:`(w_q - \alpha\,\mathrm{sign}\,w_q)^2 / [H^{-1}]_{qq}`, over the whole layer, so
  the budget goes to the columns (inputs) where binarization costs most.

**Binarization, closed forms.** A fixed order lets a full-precision weight compensate only
for the columns decided after it. Once the binary set :math:`S` and its signs :math:`s` are
known, every full-precision weight :math:`F = \bar S` of a row is set to its optimum,

.. math:: \Delta_F = -H_{FF}^{-1} H_{FS}\,\Delta_S, \qquad \Delta_S = \alpha s - w_S ,

(:func:`polish_free`, a :math:`|F|^2` system per row: :math:`|F|` is a few percent of
:math:`d`), and :math:`\alpha` is refit to that set: the error is
:math:`\tfrac12 \Delta_S^\top M \Delta_S` with the Schur complement
:math:`M = H_{SS} - H_{SF}H_{FF}^{-1}H_{FS} = (H^{-1}_{SS})^{-1}`, minimised by

.. math:: \alpha^* = \frac{s^\top M w_S}{s^\top M s}

per row (or with both sums over the rows for one :math:`\alpha` per layer;
:func:`refit_alpha_free`, the same closed form as :func:`~.obc_greedy.refit_alpha` computed
through :math:`H_{FF}` rather than :math:`H^{-1}_{SS}`). Each of ``alpha_rounds`` rounds
runs the pass with the current :math:`\alpha`, refits it and polishes; the round of least
error is kept.
"""

from __future__ import annotations

import torch

from .obc_greedy import single_thread
from .obc_layer import LayerLevel, LayerProblem, LayerSolution, OBCError, check_level
from .obc_targets import QuantGrid, apb_sign

BLOCK_SIZE = 128
SOLVE_BYTES = 64 << 20
"""Bytes of the per-row systems of :func:`polish_free` solved together."""


def column_order(problem: LayerProblem, level: LayerLevel, act_order: bool
                 ) -> torch.Tensor | None:
    """The visiting order: None for the natural one, else the columns by descending
    :math:`H_{qq}` (ties by index). Activation order is GPTQ's, for quantization and
    binarization; pruning keeps SparseGPT's natural order (N:M groups are runs of
    consecutive columns, and on small problems the natural order prunes better)."""
    if not act_order or level.kind not in ("quant", "binarize"):
        return None
    return torch.argsort(problem.H.diagonal(), descending=True, stable=True)


def upper_factor(hinv: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """:math:`U` with :math:`U^\\top U = H^{-1}` in the visiting order (upper triangular)."""
    if perm is not None:
        hinv = hinv[perm][:, perm]
    return torch.linalg.cholesky(hinv, upper=True)


def block_bounds(d: int, block_size: int, nm: tuple[int, int] | None) -> list[tuple[int, int]]:
    """Column blocks; for N:M the block size is rounded down to a multiple of ``m`` (at
    least ``m``), so that no group of ``m`` straddles two blocks."""
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if nm is not None:
        block_size = max(nm[1], block_size - block_size % nm[1])
    return [(i, min(d, i + block_size)) for i in range(0, d, block_size)]


def solve_lazy(
    problem: LayerProblem,
    level: LayerLevel,
    *,
    grid: QuantGrid | None = None,
    alpha: torch.Tensor | None = None,
    block_size: int = BLOCK_SIZE,
    act_order: bool = False,
    dtype: torch.dtype = torch.float64,
    alpha_rounds: int = 1,
) -> LayerSolution:
    """Compress ``problem``'s weights to ``level`` with the lazy-batch solver (see the module
    docstring); ``grid`` / ``alpha`` come fitted from the original weights, as for
    :func:`~.obc_layer.solve_layer`."""
    R, d = problem.W.shape
    check_level(problem.name, level, R, d, grid, alpha, lazy=True)
    perm = column_order(problem, level, act_order)
    with single_thread():
        U = upper_factor(problem.hinv, perm).to(dtype)
        if level.kind == "binarize":
            return _binarize(problem, level, alpha, U, perm, block_size, dtype, alpha_rounds)
        W = _permute(problem.W.to(dtype), perm)
        bounds = block_bounds(d, block_size, level.nm)
        pruned = None
        if level.nm is None and level.sparsity > 0:
            pruned = [round(level.sparsity * R * j) - round(level.sparsity * R * i)
                      for i, j in bounds]
        cols = torch.arange(d) if perm is None else perm
        W, keep, _, _ = lazy_pass(W, U, cols, bounds, grid=grid if level.bits else None,
                                  nm=level.nm, pruned=pruned)
        return LayerSolution(_unpermute(W, perm), _unpermute(keep, perm), None,
                             grid if level.bits else None, None)


def binarize_losses(problem: LayerProblem, alpha: torch.Tensor, *, block_size: int = BLOCK_SIZE,
                    act_order: bool = False, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(R, d) loss increments :math:`\\tfrac12 e^2` of binarizing every weight in one lazy
    pass (no full-precision weight): keeping the ``k`` costliest at full precision saves
    about the sum of their increments, a cheap error table for the global step."""
    R, d = problem.W.shape
    level = LayerLevel(fp_count=0)
    check_level(problem.name, level, R, d, None, alpha, lazy=True)
    perm = column_order(problem, level, act_order)
    with single_thread():
        U = upper_factor(problem.hinv, perm).to(dtype)
        bounds = block_bounds(d, block_size, None)
        cols = torch.arange(d) if perm is None else perm
        *_, losses = lazy_pass(_permute(problem.W.to(dtype), perm), U, cols, bounds,
                               alpha=alpha.to(dtype), fp=[0] * len(bounds))
    return _unpermute(losses, perm)


def lazy_pass(W, U, cols, bounds, *, grid=None, nm=None, pruned=None, alpha=None, fp=None):
    """One pass over the (already permuted) columns of ``W`` (R × d).

    Args:
        U: the upper factor in the same order (:func:`upper_factor`).
        cols: the layer's column index of each position (for group-wise grids).
        bounds: the column blocks (:func:`block_bounds`).
        grid: quantize (the kept weights) to it.
        nm: ``(n, m)`` pruning.
        pruned: unstructured pruning, weights pruned per block.
        alpha: (R,) binarize to ``±alpha`` but ``fp[b]`` weights of block ``b``.

    Returns ``(W, keep, full_precision, losses)``, all (R, d) in the pass's order
    (``full_precision`` None unless binarizing).
    """
    R, d = W.shape
    dtype = W.dtype
    W = W.clone()
    keep = torch.ones((R, d), dtype=torch.bool)
    full = torch.zeros((R, d), dtype=torch.bool) if alpha is not None else None
    losses = torch.zeros((R, d), dtype=dtype)
    for b, (i, j) in enumerate(bounds):
        B = j - i
        Wt = W[:, i:j].t().contiguous()  # (B, R): column c of the block is row c
        U1 = U[i:j, i:j]
        diag = U1.diagonal()
        Et = torch.empty((B, R), dtype=dtype)
        mask = None  # True where pruned
        if pruned is not None:
            mask = _extreme(Wt.square() / diag.square().unsqueeze(1), pruned[b], largest=False)
        elif nm is not None:
            mask = torch.zeros((B, R), dtype=torch.bool)
        keep_fp = None
        if alpha is not None:
            dist = (Wt - alpha * apb_sign(Wt)).square() / diag.square().unsqueeze(1)
            keep_fp = _extreme(dist, fp[b], largest=True)
        if grid is not None:
            S, Z = (t.to(dtype).t().contiguous() for t in grid.columns(cols[i:j]))
        for c in range(B):
            if nm is not None and c % nm[1] == 0:
                g = slice(c, c + nm[1])
                score = Wt[g].square() / diag[g].square().unsqueeze(1)
                idx = score.topk(nm[0], dim=0, largest=False).indices
                mask[g].scatter_(0, idx, True)
            w = Wt[c]
            if grid is not None:
                t = S[c] * ((torch.round(w / S[c]) + Z[c]).clamp(0, grid.maxq) - Z[c])
            elif alpha is not None:
                t = alpha * apb_sign(w)
            else:
                t = w
            if keep_fp is not None:
                t = torch.where(keep_fp[c], w, t)
            if mask is not None:
                t = t.masked_fill(mask[c], 0.0)
            e = (w - t) / diag[c]
            Wt[c] = t
            if c + 1 < B:
                Wt[c + 1:].addr_(U1[c, c + 1:], e, alpha=-1.0)
            Et[c] = e
        W[:, i:j] = Wt.t()
        losses[:, i:j] = 0.5 * Et.t().square()
        if mask is not None:
            keep[:, i:j] = ~mask.t()
        if keep_fp is not None:
            full[:, i:j] = keep_fp.t()
        if j < d:
            W[:, j:].addmm_(Et.t(), U[i:j, j:], alpha=-1.0)
    return W, keep, full, losses


def _extreme(score: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """Mask of the ``k`` entries of ``score`` with the largest (or smallest) values."""
    mask = torch.zeros(score.shape, dtype=torch.bool)
    if k > 0:
        idx = score.reshape(-1).topk(k, largest=largest).indices
        mask.view(-1)[idx] = True
    return mask


def _permute(t, perm):
    return t if perm is None else t[:, perm]


def _unpermute(t, perm):
    if perm is None:
        return t
    out = torch.empty_like(t)
    out[:, perm] = t
    return out


def _fp_budget(W, hinv_diag, alpha, fp_count, bounds):
    """Full-precision weights of each block: the ``fp_count`` weights of the layer with the
    largest saliency :math:`(w - \\alpha\\,\\mathrm{sign}\\,w)^2/[H^{-1}]_{qq}`, counted by
    block (everything in the pass's column order)."""
    if fp_count == 0:
        return [0] * len(bounds)
    score = (W - alpha.unsqueeze(1) * apb_sign(W)).square() / hinv_diag
    idx = score.reshape(-1).topk(fp_count).indices
    col = idx % W.shape[1]
    return [int(((col >= i) & (col < j)).sum()) for i, j in bounds]


def _binarize(problem, level, alpha, U, perm, block_size, dtype, rounds) -> LayerSolution:
    R, d = problem.W.shape
    W0 = problem.W.double()
    Wp = _permute(problem.W.to(dtype), perm)
    bounds = block_bounds(d, block_size, None)
    hdiag = problem.hinv.diagonal().to(dtype)
    hdiag = hdiag if perm is None else hdiag[perm]
    cols = torch.arange(d) if perm is None else perm
    alpha = alpha.double()
    best, best_err = None, float("inf")
    for _ in range(max(1, rounds)):
        a = alpha.to(dtype)
        fp = _fp_budget(Wp, hdiag, a, level.fp_count, bounds)
        W, _, full, _ = lazy_pass(Wp, U, cols, bounds, alpha=a, fp=fp)
        binary = ~_unpermute(full, perm)
        signs = apb_sign(_unpermute(W, perm)).double()
        if rounds > 0 and bool(binary.any()):
            new = refit_alpha_free(W0, problem.H, binary, signs, level.per_channel)
            alpha = torch.where(new > 0, new, alpha)
        weight = polish_free(W0, problem.H, binary, alpha.unsqueeze(1) * signs)
        err = problem.error(weight)
        if err < best_err:
            best_err = err
            best = LayerSolution(weight.to(dtype), torch.ones((R, d), dtype=torch.bool),
                                 binary, None, alpha.to(dtype).clone())
    return best


def _free_systems(H, free, rhs):
    r"""Per row ``r``, solve :math:`H_{F_rF_r} x = \text{rhs}_{r,F_r}` (``F_r``: the
    ``free`` columns of row ``r``); returns ``x`` scattered into an (R, d) tensor, 0 off
    ``F_r``. Rows go in order of their count, each chunk padded to its own largest count
    (a few rows with many free weights do not make every row's system that large)."""
    R, d = free.shape
    out = torch.zeros((R, d), dtype=H.dtype)
    counts = free.sum(1)
    by_count = torch.argsort(counts, stable=True)
    start = int((counts[by_count] == 0).sum())
    while start < R:
        k = int(counts[by_count[start]])
        k = k + k // 4 + 8  # the chunk: rows with up to this many free weights
        n = max(1, SOLVE_BYTES // (k * k * H.element_size()))
        rows = by_count[start:start + n]
        rows = rows[counts[rows] <= k] if int(counts[rows[-1]]) > k else rows
        k = int(counts[rows].max())
        start += rows.numel()
        f = free[rows]
        idx = torch.sort(f.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :k]
        ok = f.gather(1, idx)
        A = H[idx.unsqueeze(2), idx.unsqueeze(1)]
        A = torch.where(ok.unsqueeze(2) & ok.unsqueeze(1), A, torch.eye(k, dtype=H.dtype))
        b = torch.where(ok, rhs[rows].gather(1, idx), torch.zeros((), dtype=H.dtype))
        L, info = torch.linalg.cholesky_ex(A)
        if bool((info != 0).any()):
            raise OBCError("the Hessian restricted to the full-precision weights is not "
                           "positive definite; raise the dampening")
        x = torch.cholesky_solve(b.unsqueeze(2), L).squeeze(2) * ok
        out[rows] = torch.zeros((rows.numel(), d), dtype=H.dtype).scatter_(1, idx, x)
    return out


def polish_free(W0: torch.Tensor, H: torch.Tensor, fixed: torch.Tensor,
                values: torch.Tensor) -> torch.Tensor:
    r"""The rows of least :math:`\tfrac12(\hat w - w)H(\hat w - w)^\top` with the ``fixed``
    weights at ``values`` (read where ``fixed``) and the others free:
    :math:`\Delta_F = -H_{FF}^{-1}H_{FS}\Delta_S` (float64)."""
    H = H.double()
    D = torch.where(fixed, values.double() - W0.double(), torch.zeros((), dtype=torch.float64))
    return W0.double() + D + _free_systems(H, ~fixed, -(D @ H))


def refit_alpha_free(W0: torch.Tensor, H: torch.Tensor, binary: torch.Tensor,
                     signs: torch.Tensor, per_channel: bool) -> torch.Tensor:
    r""":math:`\alpha^* = s^\top M w_S / s^\top M s` with :math:`M = H_{SS} -
    H_{SF}H_{FF}^{-1}H_{FS}` (``binary`` = :math:`S`, ``signs`` read there), per row or over
    the layer; the error is then minimal over :math:`\alpha` with the full-precision
    weights at their optimum. Returns (R,)."""
    H = H.double()
    zero = torch.zeros((), dtype=torch.float64)
    s = torch.where(binary, signs.double(), zero)
    a = s @ H
    y = _free_systems(H, ~binary, a)
    Ms = torch.where(binary, a - y @ H, zero)
    num = (Ms * W0.double()).sum(1)
    den = (Ms * s).sum(1)
    if not per_channel:
        num, den = num.sum().expand_as(num), den.sum().expand_as(den)
    return num / den.clamp_min(torch.finfo(torch.float64).tiny)
