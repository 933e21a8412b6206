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
    r"""A per-output-channel uniform grid of :math:`2^k` levels with an integer zero point:

    .. math:: q(w) = s_r\,\big(\mathrm{clamp}(\mathrm{round}(w/s_r) + z_r,\ 0,\ 2^k-1) - z_r\big).

    Symmetric grids fix :math:`z_r = 2^{k-1}` (levels :math:`-2^{k-1}s_r \dots
    (2^{k-1}-1)s_r`); asymmetric ones store :math:`z_r` too. 0 is a level of every grid, so
    pruned weights stay exact in a dense k-bit code.
    """

    bits: int
    symmetric: bool
    scale: torch.Tensor  # (R,)
    zero: torch.Tensor  # (R,)

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    def codes(self, w: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        s, z = self._params(w, rows)
        return (torch.round(w / s) + z).clamp(0, self.maxq)

    def quantize(self, w: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        s, z = self._params(w, rows)
        return s * ((torch.round(w / s) + z).clamp(0, self.maxq) - z)

    def __call__(self, w, rows):
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
        return s.to(w.dtype).unsqueeze(1), z.to(w.dtype).unsqueeze(1)


def fit_grid(W: torch.Tensor, bits: int, symmetric: bool, mse: bool = True) -> QuantGrid:
    """The grid of each row of ``W`` (R × d): min–max range, shrunk by the factor in
    ``[0.5, 1]`` that gives the least squared rounding error when ``mse``."""
    if not 2 <= bits <= 8:
        raise ValueError(f"OBQ grids take 2 to 8 bits, got {bits} (binary: use apb-ptq)")
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
    return QuantGrid(bits, symmetric, best_s, best_z)


def fit_alpha(W: torch.Tensor, fp_fraction: float, per_channel: bool, iters: int = 10):
    r"""The binary magnitude :math:`\alpha` (per row, or one for the layer) that best fits the
    weights expected to become binary: alternately take the ``1 − fp_fraction`` weights
    closest to :math:`\pm\alpha` and set :math:`\alpha` to their mean :math:`|w|`.
    Returns an (R,) tensor either way."""
    A = W.double().abs()
    groups = A if per_channel else A.reshape(1, -1)
    alpha = groups.mean(1)
    keep = max(1, round((1.0 - fp_fraction) * groups.shape[1]))
    for _ in range(iters):
        dist = (groups - alpha[:, None]).abs()
        idx = dist.topk(keep, dim=1, largest=False).indices
        alpha = groups.gather(1, idx).mean(1)
    alpha = alpha.clamp_min(1e-8)
    return alpha if per_channel else alpha.expand(W.shape[0]).clone()
