r"""OBC: post-training pruning and quantization with Optimal Brain Surgeon updates.

Frantar, Singh, Alistarh, *Optimal Brain Compression: A Framework for Accurate Post-Training
Quantization and Pruning*, NeurIPS 2022 (arXiv:2208.11580); docs/design.md §5.

For each layer, with :math:`X` its inputs on a calibration set, OBC minimises
:math:`\|WX - \hat W X\|^2` row by row: greedy OBS pruning (remove the weight of least
:math:`w_q^2/[H^{-1}]_{qq}`, compensate the others), OBQ quantization (the same loop, choosing
the weight of least rounding error :math:`(w_q - q(w_q))^2/[H^{-1}]_{qq}`), or both
(``compound``: prune, then quantize the rest). The maths and the solver are in
:mod:`apb.methods.obc_greedy` and :mod:`apb.methods.obc_layer`; the pipeline in
:func:`apb.methods.ptq_`; the result is held by :class:`apb.nn.OBCWeightQuantizer`.

>>> report = apb.methods.ptq_(model, OBCConfig(mode="prune", sparsity=0.5), calib_batches)
>>> report = apb.methods.ptq_(model, OBCConfig(mode="compound", bits_per_weight=3.0), calib)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..nn.obc_quantizer import OBCWeightQuantizer, obc_storage
from .obc_layer import LayerLevel, LayerSolution
from .obc_targets import fit_grid
from .ptq import PostTrainingMethod, PTQConfig, quant_layer_class

MODES = ("prune", "quant", "compound")
SCOPES = ("layer", "model")
SPARSITY_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
BIT_LEVELS = (2, 3, 4, 5, 6, 8)
COMPOUND_SPARSITY_LEVELS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9)
ACT_BITS = 32


def parse_nm(text: str) -> tuple[int, int]:
    """``"2:4"`` → ``(2, 4)``: prune 2 of every 4 consecutive weights."""
    try:
        n, m = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise ValueError(f"nm must look like '2:4' (n:m), got {text!r}") from None
    if not 0 < n < m:
        raise ValueError(f"nm must have 0 < n < m, got {text!r}")
    return n, m


@dataclass
class OBCConfig(PTQConfig):
    """OBC options. Give one target: ``sparsity`` or ``nm`` (prune), ``bits`` (quant), both
    (compound), or one model-wide budget.

    Attributes:
        mode: prune, quant or compound (prune, then quantize the kept weights).
        sparsity: fraction of weights pruned: in every layer, or over all compressed layers
            with scope="model" (each layer's level then comes from the global step).
        nm: N:M sparsity, e.g. "2:4": n of every m consecutive weights of a row pruned.
        bits: quantization grid of 2 to 8 bits (per output channel), every layer.
        symmetric: symmetric grids (a scale per channel) rather than asymmetric (a scale and
            a zero point per channel).
        group_size: one grid (scale, and zero point when asymmetric) per group of this many
            consecutive weights of a row instead of one per row (GPTQ's groups; 32 bits per
            scalar, so 4-bit symmetric groups of 128 cost 4.25 bits per weight). Needs the
            lazy-batch solver; such layers do not pack (apb.pack_ raises PackError).
        mse_grid: shrink each channel's grid range to the least squared rounding error.
        scope: layer (every layer meets the sparsity) or model (the model as a whole does).
        bits_per_weight: model-wide budget: bits per weight of the compressed layers (the
            apb.memory accounting), met by the global step over the mode's levels.
        model_bytes: model-wide budget: bytes of the whole model (apb.summary).
        bops_reduction: model-wide budget: the compressed layers' bit-operations (MACs x
            weight bits x 32-bit activations, pruned weights free) at most 1/bops_reduction
            of their full-precision count.
    """

    mode: str = "prune"
    sparsity: float | None = None
    nm: str | None = None
    bits: int | None = None
    symmetric: bool = True
    group_size: int | None = None
    mse_grid: bool = True
    scope: str = "layer"
    bits_per_weight: float | None = None
    model_bytes: int | None = None
    bops_reduction: float | None = None

    def validate(self) -> None:
        super().validate()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be 'layer' or 'model', got {self.scope!r}")
        if self.sparsity is not None and not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got {self.sparsity}")
        if self.nm is not None:
            parse_nm(self.nm)
        if self.group_size is not None:
            if self.group_size < 1:
                raise ValueError(f"group_size must be positive, got {self.group_size}")
            if self.solver == "exact":
                raise ValueError("group_size needs the lazy-batch solver: solver='lazy' or "
                                 "'auto' (the exact greedy loop reorders a row's weights)")
            if self.mode == "prune" and self.bits_per_weight is None \
                    and self.model_bytes is None and self.bops_reduction is None:
                raise ValueError("group_size applies to quantization grids: mode quant or "
                                 "compound")
        if self.bits is not None and not 2 <= self.bits <= 8:
            raise ValueError(f"bits must lie in 2..8 (binary weights: use apb-ptq), "
                             f"got {self.bits}")
        budgets = [n for n in ("bits_per_weight", "model_bytes", "bops_reduction")
                   if getattr(self, n) is not None]
        if len(budgets) > 1:
            raise ValueError(f"give one model-wide budget, got {', '.join(budgets)}")
        if self.sparsity is not None and self.nm is not None:
            raise ValueError("give sparsity or nm, not both")
        prune_target = self.sparsity is not None or self.nm is not None
        if budgets:
            if prune_target or self.bits is not None:
                raise ValueError(f"{budgets[0]} lets the global step choose every layer's "
                                 "level: leave sparsity, nm and bits unset")
            value = getattr(self, budgets[0])
            if not value > 0:
                raise ValueError(f"{budgets[0]} must be positive, got {value}")
            return
        if self.scope == "model" and (self.sparsity is None or self.mode == "quant"):
            raise ValueError("scope='model' spreads a sparsity over the model: give sparsity "
                             "(mode prune or compound), or a budget (bits_per_weight, "
                             "model_bytes, bops_reduction)")
        wants = {"prune": (True, False), "quant": (False, True), "compound": (True, True)}
        need_prune, need_bits = wants[self.mode]
        if need_prune != prune_target or need_bits != (self.bits is not None):
            raise ValueError(
                f"mode {self.mode!r} takes "
                + {"prune": "sparsity or nm (not bits)", "quant": "bits (not sparsity or nm)",
                   "compound": "bits and one of sparsity or nm"}[self.mode]
                + ", or a model-wide budget"
            )

    def budget(self) -> tuple[str, float] | None:
        if self.bits_per_weight is not None:
            return "bits", self.bits_per_weight
        if self.model_bytes is not None:
            return "bytes", self.model_bytes
        if self.bops_reduction is not None:
            return "bops", self.bops_reduction
        if self.scope == "model":
            return "kept", self.sparsity
        return None


class OBCMethod(PostTrainingMethod):
    name = "obc"
    config_class = OBCConfig

    def make_weight_quantizer(self, weight):
        return OBCWeightQuantizer(weight, self.config.group_size)

    def budget(self):
        return self.config.budget()

    def uniform_level(self, name: str, weight: torch.Tensor) -> LayerLevel:
        c = self.config
        return LayerLevel(sparsity=c.sparsity or 0.0, nm=parse_nm(c.nm) if c.nm else None,
                          bits=c.bits, symmetric=c.symmetric,
                          group_size=c.group_size if c.bits else None)

    def level_grid(self, name: str, weight: torch.Tensor) -> list[LayerLevel]:
        c = self.config
        if c.scope == "model" and c.sparsity is not None:  # a sparsity spread over layers
            levels = sorted(set(SPARSITY_LEVELS) | {c.sparsity})
            g = c.group_size if c.bits else None
            return [LayerLevel(sparsity=s, bits=c.bits, symmetric=c.symmetric, group_size=g)
                    for s in levels]
        dense = [LayerLevel()]
        if c.mode == "prune":
            return [LayerLevel(sparsity=s) for s in SPARSITY_LEVELS]
        g = c.group_size
        if c.mode == "quant":
            return dense + [LayerLevel(bits=b, symmetric=c.symmetric, group_size=g)
                            for b in BIT_LEVELS]
        return dense + [LayerLevel(sparsity=s, bits=b, symmetric=c.symmetric, group_size=g)
                        for s in COMPOUND_SPARSITY_LEVELS for b in BIT_LEVELS]

    def level_cost(self, kind, level, rows, cols, positions):
        n = rows * cols
        if level.nm is not None:
            kept = n - n * level.nm[0] // level.nm[1]
        else:
            kept = n - round(level.sparsity * n)
        if kind == "kept":
            return kept
        if kind in ("bits", "bytes"):
            st = obc_storage(rows, cols, kept, level.bits or 0, level.symmetric,
                             level.group_size if level.bits else None)
            return st.total_bits if kind == "bits" else st.total_bytes
        if kind == "bops":
            return positions * kept * (level.bits or 32) * ACT_BITS
        raise ValueError(f"unknown budget kind {kind!r}")

    def fit(self, W, level):
        if level.bits is None:
            return {}
        return {"grid": fit_grid(W, level.bits, level.symmetric, self.config.mse_grid,
                                 level.group_size)}

    @torch.no_grad()
    def make_layer(self, module: nn.Module, solution: LayerSolution,
                   level: LayerLevel) -> nn.Module:
        wq = self.make_weight_quantizer(module.weight)
        grid = solution.grid
        wq.set(solution.keep, level.bits, level.symmetric,
               None if grid is None else grid.scale.float(),
               None if grid is None else grid.zero.float())
        layer = quant_layer_class(module).from_float(module, wq, None)
        layer.weight.copy_(solution.weight.reshape(module.weight.shape).to(layer.weight.dtype))
        # Snap to the grid in the layer's own arithmetic, so forward(weight) == weight.
        layer.weight.copy_(wq(layer.weight))
        return layer
