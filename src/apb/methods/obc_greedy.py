r"""The exact greedy Optimal Brain Surgeon loop of OBC, vectorised across the rows of a layer.

Frantar, Singh, Alistarh, *Optimal Brain Compression: A Framework for Accurate Post-Training
Quantization and Pruning*, NeurIPS 2022 (arXiv:2208.11580), Algorithms 1 and 2 (ExactOBS).

A layer's output error :math:`\|WX - \hat W X\|^2` splits over rows, all with the same
Hessian :math:`H = 2XX^\top`. For one row :math:`w` with free set :math:`F` (the weights not
yet decided) and :math:`G = (H_{FF})^{-1}`, setting weight :math:`q` to a value
:math:`t_q` and letting the other free weights compensate optimally costs

.. math::

    \Delta L_q = \tfrac12\,\frac{(w_q - t_q)^2}{G_{qq}}, \qquad
    w \leftarrow w - \frac{w_q - t_q}{G_{qq}}\,G_{:,q},

and the inverse of the shrunken free set is one Gaussian elimination step,

.. math::

    G \leftarrow G - \frac{G_{:,q}\,G_{q,:}}{G_{qq}} .

The greedy loop decides, at each step and in each row, the weight with the least
:math:`\Delta L_q`. The target :math:`t_q` is what the method makes of the weight: 0 (OBS
pruning), the nearest point of a quantization grid (OBQ) or :math:`\alpha\,\mathrm{sign}(w_q)`
(post-training APB). Every row keeps its own copy of :math:`G`; rows are processed in chunks,
all rows of a chunk in the same batched tensor operations. Decided
columns are dropped from the working copies whenever a quarter of them is decided, so a row
of ``d`` weights costs about :math:`d^3/3` multiply-adds rather than :math:`d^3`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch

Target = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
"""``target(w, rows) -> (t, urgent)``: the value each weight of ``w`` (rows × m, the rows of
the layer listed in ``rows``) would be set to, elementwise per row, and optionally a mask of
weights to decide before any other (quantization: those outside the grid's range)."""

CHUNK_BYTES = 32 << 20
"""Bytes of per-row inverse copies processed together: enough rows that the per-step Python
overhead is amortised (measured on a 120x400 layer: 32 MB 30% faster than 8 MB, no gain
beyond); the rank-one updates are memory-bound either way."""

COMPACT_FRACTION = 0.75
COMPACT_MIN = 32


@dataclass
class GreedyTrace:
    """What :func:`greedy_obs` did, step by step, for every row.

    Attributes:
        order: (R, K) the column decided at each step (-1 where a row did nothing).
        values: (R, K) the value it was set to.
        losses: (R, K) the loss increment :math:`\\tfrac12 (w_q-t_q)^2/G_{qq}` of each step.
        weights: (R, d) the row after the last step, decided weights at their values and
            the others compensated.
    """

    order: torch.Tensor
    values: torch.Tensor
    losses: torch.Tensor
    weights: torch.Tensor

    @staticmethod
    def cat(parts: list[GreedyTrace]) -> GreedyTrace:
        return GreedyTrace(*(torch.cat([getattr(p, f) for p in parts]) for f in
                             ("order", "values", "losses", "weights")))

    def decided(self) -> torch.Tensor:
        """(R, d) mask of the weights decided in this run."""
        mask = torch.zeros(self.weights.shape, dtype=torch.bool)
        valid = self.order >= 0
        rows = torch.arange(self.order.shape[0]).unsqueeze(1).expand_as(self.order)
        mask[rows[valid], self.order[valid]] = True
        return mask


def greedy_obs(
    w: torch.Tensor,
    hinv: torch.Tensor,
    target: Target,
    steps: int,
    *,
    rows: torch.Tensor | None = None,
    decided: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
    nm: tuple[int, int] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> GreedyTrace:
    """Run the greedy OBS loop for ``steps`` steps on every row of ``w`` (R × d).

    Args:
        w: the weights, in the dtype the loop computes in.
        hinv: (d, d) :math:`H^{-1}` shared by all rows.
        target: see :data:`Target`.
        steps: decisions per row.
        rows: the layer's row index of each row of ``w`` (for per-row targets).
        decided: (R, d) weights already fixed at their value in ``w``; they are eliminated
            from each row's inverse before the loop and never chosen.
        counts: (R,) decisions per row, at most ``steps`` (default: ``steps`` for all).
        nm: ``(n, m)``: at most ``n`` decisions in each group of ``m`` consecutive columns.
    """
    R, d = w.shape
    rows = torch.arange(R) if rows is None else rows
    chunk = max(1, min(R, chunk_bytes // max(1, d * d * hinv.element_size())))
    parts = []
    with single_thread():
        for i in range(0, R, chunk):
            sl = slice(i, min(R, i + chunk))
            n = sl.stop - sl.start
            G = hinv.unsqueeze(0).repeat(n, 1, 1)
            done = None if decided is None else decided[sl].clone()
            if done is not None and done.any():
                _eliminate(G, done)
            limit = torch.full((n,), steps) if counts is None else counts[sl].clone()
            parts.append(
                _greedy_chunk(w[sl].clone(), G, target, steps, rows[sl], done, limit, nm))
    return GreedyTrace.cat(parts)


@contextmanager
def single_thread():
    """One intra-op thread inside the loop: its per-step tensors are a few MB, so an OpenMP
    fork/join per operation costs more than it gains, and on a shared machine the waiting
    threads spin (measured: 10x slower with 2 threads on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _eliminate(G: torch.Tensor, done: torch.Tensor) -> None:
    """``G ← G − G[:, S] G[S, S]⁻¹ G[S, :]`` per row, ``S`` the row's ``done`` columns: the
    inverse of the Hessian restricted to the free weights (the Schur complement)."""
    r, d, _ = G.shape
    k = int(done.sum(1).max())
    idx = torch.sort(done.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :k]
    valid = done.gather(1, idx)
    C = G.gather(2, idx.unsqueeze(1).expand(r, d, k)) * valid.unsqueeze(1)
    A = C.gather(1, idx.unsqueeze(2).expand(r, k, k))
    pair = valid.unsqueeze(2) & valid.unsqueeze(1)
    eye = torch.eye(k, dtype=G.dtype).expand(r, k, k)
    A = torch.where(pair, A, eye)
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):
        raise FloatingPointError("the inverse Hessian restricted to fixed weights is not "
                                 "positive definite; raise the dampening")
    G.sub_(C @ torch.cholesky_solve(C.transpose(1, 2), L))


def _greedy_chunk(w, G, target, steps, rows, done, limit, nm) -> GreedyTrace:
    r, d = w.shape
    dtype = w.dtype
    ar = torch.arange(r)
    out = w.clone()
    cols = torch.arange(d).expand(r, d).clone()
    done = torch.zeros((r, d), dtype=torch.bool) if done is None else done
    order = torch.full((r, steps), -1, dtype=torch.long)
    values = torch.zeros((r, steps), dtype=dtype)
    losses = torch.zeros((r, steps), dtype=dtype)
    n_done = torch.zeros(r, dtype=torch.long)
    if nm is not None:
        group_n, group_m = nm
        per_group = torch.zeros((r, d // group_m), dtype=torch.long)
        if done.any():
            per_group.scatter_add_(1, torch.arange(d).expand(r, d) // group_m, done.long())
    # Roundoff can leave an undecided diagonal entry a hair above zero (or below); such a
    # weight is perfectly compensable, so clamp rather than divide by noise.
    floor = G.diagonal(dim1=1, dim2=2).abs().amax().clamp_min(1e-300) * torch.finfo(dtype).eps
    inf = torch.tensor(float("inf"), dtype=dtype)
    m_cur = d
    for k in range(steps):
        diag = G.diagonal(dim1=1, dim2=2).clamp_min(floor)
        t, urgent = target(w, rows)
        err = w - t
        score = err.square() / diag
        if urgent is not None:
            score = torch.where(urgent, -err.square(), score)
        blocked = done
        if nm is not None:
            blocked = blocked | (per_group.gather(1, cols // group_m) >= group_n)
        score = score.masked_fill(blocked, inf)
        best, j = score.min(1)
        active = (n_done < limit) & torch.isfinite(best)
        if not bool(active.any()):
            break
        jj = j.unsqueeze(1)
        dj, ej, tj = diag.gather(1, jj), err.gather(1, jj), t.gather(1, jj)
        inv_d = torch.where(active.unsqueeze(1), 1.0 / dj, torch.zeros_like(dj))
        c = G.view(r * m_cur, m_cur).index_select(0, ar * m_cur + j)  # row j = column j
        w.sub_((ej * inv_d) * c)
        w.scatter_(1, jj, torch.where(active.unsqueeze(1), tj, w.gather(1, jj)))
        G.baddbmm_(c.unsqueeze(2), (c * inv_d).unsqueeze(1), alpha=-1)
        oc = cols.gather(1, jj).squeeze(1)
        done.scatter_(1, jj, done.gather(1, jj) | active.unsqueeze(1))
        order[:, k] = torch.where(active, oc, -1)
        values[:, k] = torch.where(active, tj.squeeze(1), 0.0)
        losses[:, k] = (0.5 * ej.square() * inv_d).squeeze(1)
        act = ar[active]
        out[act, oc[active]] = tj.squeeze(1)[active]
        n_done += active
        if nm is not None:
            per_group[act, oc[active] // group_m] += 1
        free = int((~done).sum(1).max())
        if free == 0:
            break
        if m_cur >= COMPACT_MIN and free <= COMPACT_FRACTION * m_cur:
            keep = torch.sort(done.to(torch.uint8), dim=1, stable=True).indices[:, :free]
            w, cols, done = w.gather(1, keep), cols.gather(1, keep), done.gather(1, keep)
            G = G[ar[:, None, None], keep[:, :, None], keep[:, None, :]]
            m_cur = free
    out.scatter_(1, cols, torch.where(done, out.gather(1, cols), w))
    return GreedyTrace(order, values, losses, out)


def prefix_counts(losses: torch.Tensor, total: int) -> torch.Tensor:
    """How many of its first greedy steps each row keeps so that ``total`` steps are kept
    over all rows with the least summed loss (OBC's selection across rows).

    Each row's increments are made non-decreasing by a running maximum, so taking the
    ``total`` smallest (ties to the earlier step) always takes a prefix of every row.
    """
    R, K = losses.shape
    if not 0 <= total <= R * K:
        raise ValueError(f"cannot keep {total} of {R * K} greedy steps")
    key = torch.cummax(losses, dim=1).values.t().reshape(-1)  # step-major: earlier steps first
    chosen = torch.sort(key, stable=True).indices[:total]
    return torch.bincount(chosen % R, minlength=R)


def obs_fix(
    w: torch.Tensor, hinv: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor,
    values: torch.Tensor, chunk_bytes: int = CHUNK_BYTES,
) -> torch.Tensor:
    r"""The optimal row when the weights ``idx[valid]`` are fixed at ``values``: OBS for a set,

    .. math:: w' = w + H^{-1}_{:,S}\,(H^{-1}_{SS})^{-1}(t_S - w_S),

    which is where any sequence of greedy steps on the set ``S`` ends. ``idx``, ``valid``,
    ``values``: (R, k), padded per row.
    """
    R, d = w.shape
    k = idx.shape[1]
    if k == 0:
        return w.clone()
    out = torch.empty_like(w)
    chunk = max(1, min(R, chunk_bytes // max(1, (d * k + k * k) * w.element_size())))
    eye = torch.eye(k, dtype=w.dtype)
    for i in range(0, R, chunk):
        sl = slice(i, min(R, i + chunk))
        ix, ok = idx[sl], valid[sl]
        C = hinv[:, ix].permute(1, 0, 2) * ok.unsqueeze(1)  # (r, d, k)
        A = C.gather(1, ix.unsqueeze(2).expand(-1, k, k))
        A = torch.where(ok.unsqueeze(2) & ok.unsqueeze(1), A, eye)
        ws = w[sl]
        rhs = torch.where(ok, values[sl] - ws.gather(1, ix), torch.zeros_like(values[sl]))
        L, info = torch.linalg.cholesky_ex(A)
        if bool((info != 0).any()):
            raise FloatingPointError("the inverse Hessian restricted to the fixed weights is "
                                     "not positive definite; raise the dampening")
        lam = torch.cholesky_solve(rhs.unsqueeze(2), L)
        res = ws + (C @ lam).squeeze(2)
        res.scatter_(1, ix, torch.where(ok, values[sl], res.gather(1, ix)))
        out[sl] = res
    return out


def refit_alpha(
    w: torch.Tensor, hinv: torch.Tensor, binary: torch.Tensor, signs: torch.Tensor,
    per_channel: bool, chunk_bytes: int = CHUNK_BYTES,
) -> torch.Tensor:
    r"""The :math:`\alpha` that minimises the layer error once the binary set :math:`S` (with
    signs :math:`s`) is fixed and the other weights compensate optimally. The error is
    :math:`\tfrac12 e_S^\top M e_S` with :math:`e_S = \alpha s - w_S` and
    :math:`M = (H^{-1}_{SS})^{-1}`, so

    .. math:: \alpha^* = \frac{s^\top M w_S}{s^\top M s}

    per row, or with numerator and denominator summed over the rows for one layer-wide
    :math:`\alpha`. Returns (R,)."""
    R, d = w.shape
    k = int(binary.sum(1).max())
    idx = torch.sort(binary.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :k]
    valid = binary.gather(1, idx)
    num = torch.zeros(R, dtype=w.dtype)
    den = torch.zeros(R, dtype=w.dtype)
    eye = torch.eye(k, dtype=w.dtype)
    chunk = max(1, min(R, chunk_bytes // max(1, k * k * w.element_size())))
    for i in range(0, R, chunk):
        sl = slice(i, min(R, i + chunk))
        ix, ok = idx[sl], valid[sl]
        A = hinv[ix.unsqueeze(2), ix.unsqueeze(1)]
        A = torch.where(ok.unsqueeze(2) & ok.unsqueeze(1), A, eye)
        s = torch.where(ok, signs[sl].gather(1, ix), torch.zeros((), dtype=w.dtype))
        L, info = torch.linalg.cholesky_ex(A)
        if bool((info != 0).any()):
            raise FloatingPointError("the inverse Hessian restricted to the binary weights is "
                                     "not positive definite; raise the dampening")
        u = torch.cholesky_solve(s.unsqueeze(2), L).squeeze(2)  # M s
        num[sl] = (u * w[sl].gather(1, ix)).sum(1)
        den[sl] = (u * s).sum(1)
    if not per_channel:
        num, den = num.sum().expand(R), den.sum().expand(R)
    return num / den.clamp_min(torch.finfo(w.dtype).tiny)


def prefix_fix(w: torch.Tensor, hinv: torch.Tensor, trace: GreedyTrace,
               counts: torch.Tensor) -> torch.Tensor:
    """The rows after the first ``counts[r]`` greedy steps of ``trace`` (closed form)."""
    k = int(counts.max()) if counts.numel() else 0
    idx = trace.order[:, :k].clamp_min(0)
    valid = torch.arange(k).unsqueeze(0) < counts.unsqueeze(1)
    return obs_fix(w, hinv, idx, valid, trace.values[:, :k])
