r"""What the greedy OBS loop sets a weight to: 0, a grid point, or :math:`\pm\alpha`.

Each target is elementwise per row (a row's scale, zero point or :math:`\alpha` only), so it
can be evaluated on any subset of a row's columns; see :data:`apb.methods.obc_greedy.Target`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MSE_SHRINK_STEPS = 20
MSE_SHRINK_MIN = 0.5


def zero_target(w: torch.Tensor, rows: torch.Tensor):
    """OBS pruning: every weight goes to 0."""
    return torch.zeros_like(w), None


def apb_sign(w: torch.Tensor) -> torch.Tensor:
    """``sign`` with ``sign(0) = +1``, as APB defines it."""
    return torch.where(w < 0, -torch.ones_like(w), torch.ones_like(w))


@dataclass
class SignTarget:
    r"""Binarization: :math:`t = \alpha_r\,\mathrm{sign}(w)` with the row's (or layer's)
    :math:`\alpha_r`."""

    alpha: torch.Tensor  # (R,)

    def __call__(self, w, rows):
        return self.alpha[rows].to(w.dtype).unsqueeze(1) * apb_sign(w), None


@dataclass
class QuantGrid:
    r"""A uniform grid of :math:`2^k` levels with an integer zero point, per output channel
    or, with ``group_size = g``, per group of ``g`` consecutive columns of a row (the last
    group of a row may be narrower):

    .. math:: q(w) = s\,\big(\mathrm{clamp}(\mathrm{round}(w/s) + z,\ 0,\ 2^k-1) - z\big),

    with :math:`s, z` those of the weight's row (and group). Symmetric grids fix
    :math:`z = 2^{k-1}` (levels :math:`-2^{k-1}s \dots (2^{k-1}-1)s`); asymmetric ones store
    :math:`z` too. 0 is a level of every grid, so pruned weights stay exact in a dense k-bit
    code. ``scale`` and ``zero`` are (R,) per channel and (R, G) per group.

    Group-wise grids follow GPTQ's grouping (Frantar et al., ICLR 2023, arXiv:2210.17323,
    §4 "Additional tricks"): one scale / zero point per ``g`` weights, fitted here once from
    the original weights ("static groups"), so the grouping is by column index whatever
    order the solver visits the columns in.
    """

    bits: int
    symmetric: bool
    scale: torch.Tensor  # (R,) or (R, G)
    zero: torch.Tensor  # (R,) or (R, G)
    group_size: int | None = None

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    @property
    def groups(self) -> int:
        """Scales per row (1 per channel)."""
        return 1 if self.group_size is None else self.scale.shape[1]

    def columns(self, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, zero)``, each (R, len(cols)), of the columns ``cols`` (column indices
        of the layer)."""
        if self.group_size is None:
            n = cols.numel()
            return self.scale.unsqueeze(1).expand(-1, n), self.zero.unsqueeze(1).expand(-1, n)
        g = cols // self.group_size
        return self.scale[:, g], self.zero[:, g]

    def codes(self, w: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        s, z = self._params(w, rows)
        return (torch.round(w / s) + z).clamp(0, self.maxq)

    def quantize(self, w: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``w`` (R × d, the whole layer unless ``rows`` picks rows) on the grid."""
        s, z = self._params(w, rows)
        return s * ((torch.round(w / s) + z).clamp(0, self.maxq) - z)

    def __call__(self, w, rows):
        if self.group_size is not None:
            raise ValueError("group-wise grids need the column of every weight: use the "
                             "lazy-batch solver (solver='lazy')")
        s, z = self._params(w, rows)
        x = w / s + z
        q = s * ((torch.round(x)).clamp(0, self.maxq) - z)
        # OBQ decides weights outside the grid's range first (their error only grows if
        # compensation pushes them further out).
        urgent = (x < -0.5) | (x > self.maxq + 0.5)
        return q, urgent

    def _params(self, w, rows):
        s = self.scale if rows is None else self.scale[rows]
        z = self.zero if rows is None else self.zero[rows]
        if self.group_size is not None:
            cols = torch.arange(w.shape[1]) // self.group_size
            return s[:, cols].to(w.dtype), z[:, cols].to(w.dtype)
        return s.to(w.dtype).unsqueeze(1), z.to(w.dtype).unsqueeze(1)


def fit_grid(W: torch.Tensor, bits: int, symmetric: bool, mse: bool = True,
             group_size: int | None = None) -> QuantGrid:
    """The grid of each row of ``W`` (R × d), or of each group of ``group_size`` columns of
    a row: min–max range, shrunk by the factor in ``[0.5, 1]`` that gives the least squared
    rounding error when ``mse``."""
    if not 2 <= bits <= 8:
        raise ValueError(f"OBQ grids take 2 to 8 bits, got {bits} (binary: use apb-ptq)")
    if group_size is not None:
        if group_size < 1:
            raise ValueError(f"group_size must be positive, got {group_size}")
        d = W.shape[1]
        parts = [_fit_rows(W[:, i:i + group_size], bits, symmetric, mse)
                 for i in range(0, d, group_size)]
        scale = torch.stack([p[0] for p in parts], 1)
        zero = torch.stack([p[1] for p in parts], 1)
        return QuantGrid(bits, symmetric, scale, zero, group_size)
    return QuantGrid(bits, symmetric, *_fit_rows(W, bits, symmetric, mse))


def _fit_rows(W, bits, symmetric, mse):
    W = W.double()
    maxq = (1 << bits) - 1
    lo = W.min(1).values.clamp(max=0)
    hi = W.max(1).values.clamp(min=0)
    if symmetric:
        hi = torch.maximum(-lo, hi)
        lo = -hi
    best_err = torch.full((W.shape[0],), float("inf"), dtype=W.dtype)
    best_s = torch.ones_like(best_err)
    best_z = torch.zeros_like(best_err)
    shrinks = torch.linspace(1.0, MSE_SHRINK_MIN, MSE_SHRINK_STEPS) if mse else torch.ones(1)
    for p in shrinks.tolist():
        a, b = lo * p, hi * p
        s = ((b - a) / maxq).clamp_min(1e-12)
        z = torch.full_like(s, float(1 << (bits - 1))) if symmetric else torch.round(-a / s)
        q = s[:, None] * ((torch.round(W / s[:, None]) + z[:, None]).clamp(0, maxq) - z[:, None])
        err = (q - W).square().sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z


def fit_alpha(W: torch.Tensor, fp_fraction: float, per_channel: bool, iters: int = 10):
    r"""The binary magnitude :math:`\alpha` (per row, or one for the layer) that best fits the
    weights expected to become binary: alternately take the ``1 − fp_fraction`` weights
    closest to :math:`\pm\alpha` and set :math:`\alpha` to their mean :math:`|w|`.
    Returns an (R,) tensor either way.

    The ``keep`` values of :math:`|w|` closest to :math:`\alpha` are a run of ``keep``
    consecutive values in sorted order, the run whose farther end is nearest to
    :math:`\alpha`; with the values sorted once, each iteration is a scan of the runs and a
    difference of prefix sums."""
    A = W.double().abs()
    groups = A if per_channel else A.reshape(1, -1)
    alpha = groups.mean(1)
    m = groups.shape[1]
    keep = min(m, max(1, round((1.0 - fp_fraction) * m)))
    a = groups.sort(dim=1).values
    cs = torch.cat([torch.zeros((a.shape[0], 1), dtype=a.dtype), a.cumsum(1)], 1)
    low, high = a[:, : m - keep + 1], a[:, keep - 1:]  # each run's first and last value
    for _ in range(iters):
        cost = torch.maximum(alpha[:, None] - low, high - alpha[:, None])
        start = cost.argmin(1, keepdim=True)
        alpha = ((cs.gather(1, start + keep) - cs.gather(1, start)) / keep).squeeze(1)
    alpha = alpha.clamp_min(1e-8)
    return alpha if per_channel else alpha.expand(W.shape[0]).clone()
