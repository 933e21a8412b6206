r"""OBC's global step: one compression level per layer, meeting a model-wide budget with the
least summed error (dynamic programming over per-layer error tables).

Layer :math:`l` offers levels :math:`j` with cost :math:`c_{lj}` (kept weights, bits, bytes or
bit-operations) and error :math:`e_{lj}` (its relative output error, see
:func:`apb.methods.ptq.relative_error`). We want

.. math:: \min_{j_1..j_L} \sum_l e_{l j_l} \quad\text{s.t.}\quad \sum_l c_{l j_l} \le C .

Costs are rounded *up* to multiples of :math:`C/\text{resolution}`, so a choice the table
accepts always fits the true budget; the table has ``resolution + 1`` entries per layer.
"""

from __future__ import annotations

import math

import numpy as np

from .obc_layer import OBCError

RESOLUTION = 20_000


def choose_levels(
    costs: list[list[float]], errors: list[list[float]], budget: float,
    *, names: list[str] | None = None, unit: str = "", resolution: int = RESOLUTION,
) -> list[int]:
    """The level index of each layer (see the module docstring).

    Raises :class:`OBCError` when even the cheapest level of every layer exceeds ``budget``.
    """
    if len(costs) != len(errors) or any(len(c) != len(e) for c, e in zip(costs, errors)):
        raise ValueError("costs and errors must have one entry per layer and level")
    if not costs:
        return []
    cheapest = sum(min(c) for c in costs)
    if cheapest > budget:
        raise OBCError(
            f"the budget of {budget:,.6g}{unit} cannot be met: the cheapest level of every "
            f"layer already costs {cheapest:,.6g}{unit} in total"
        )
    if budget <= 0:
        return [int(np.argmin(c)) for c in costs]
    step = budget / resolution
    size = resolution + 1
    dp = np.full(size, np.inf)
    dp[0] = 0.0
    choices = []
    for layer_costs, layer_errors in zip(costs, errors):
        new = np.full(size, np.inf)
        pick = np.full(size, -1, dtype=np.int64)
        for j, (c, e) in enumerate(zip(layer_costs, layer_errors)):
            units = math.ceil(c / step - 1e-9)
            if units >= size:
                continue
            shifted = np.full(size, np.inf)
            shifted[units:] = dp[: size - units] + e
            better = shifted < new
            new[better] = shifted[better]
            pick[better] = j
        dp = new
        choices.append(pick)
    end = int(np.argmin(dp))
    if not np.isfinite(dp[end]):
        who = ", ".join(names or []) or f"{len(costs)} layers"
        raise OBCError(
            f"the budget of {budget:,.6g}{unit} cannot be met at resolution {resolution} "
            f"(layers: {who}); raise the budget slightly"
        )
    levels = []
    for layer_costs, pick in zip(reversed(costs), reversed(choices)):
        j = int(pick[end])
        levels.append(j)
        end -= math.ceil(layer_costs[j] / step - 1e-9)
    return levels[::-1]
