r"""Post-training APB: binarize a trained model with OBS compensation, keeping the weights
that cost most to binarize at full precision. No retraining.

Neither paper has it: APB (Nardini et al. 2025) learns which weights stay full precision while
training; OBC (Frantar et al. 2022) compresses after training but to grids, not to
``±α`` plus a sparse full-precision correction. Here the greedy OBS loop of
:mod:`apb.methods.obc_greedy` runs with the target :math:`t_q = \alpha\,\mathrm{sign}(w_q)`:
at each step every row binarizes the weight of least
:math:`(w_q - \alpha\,\mathrm{sign}(w_q))^2 / [H^{-1}]_{qq}` and compensates the weights not
yet binarized. The loss traces say, across rows, which weights are costliest; the
``fp_count`` of them the budget allows are never binarized and keep the compensated values
(closed-form OBS solution for the binarized set). :math:`\alpha` (per channel or per layer)
is fitted beforehand to the weights expected to become binary
(:func:`apb.methods.obc_targets.fit_alpha`).

The result is exactly what APB training produces: ``QuantConv2d`` / ``QuantLinear`` layers
with an :class:`apb.nn.APBWeightQuantizer` whose mask is frozen (``frozen_mask``,
``mask_frozen``) and ``α`` set; they pack and summarise like trained APB layers. ``δ`` is set
to the smallest band half-width that the band rule would need to give the same mask on the
written weights, :math:`\min_{\text{fp}} \big||w| - \alpha\big|` (binary weights sit at
:math:`|w| = \alpha` exactly).

``compensate=False`` is the naive baseline: APB's budget mode applied to the trained weights
(:math:`\alpha = \operatorname{mean}|W|`, the weights farthest from the band centre kept at
full precision, nothing compensated), i.e. ``apb.compress_`` then ``finalize``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..memory import FP16_BITS, FP32_BITS, SCALAR_BITS, binary_sparse_storage
from ..nn import APBWeightQuantizer
from .apb import APBConfig, APBMethod
from .obc_layer import LayerLevel, LayerSolution, OBCError
from .obc_targets import apb_sign, fit_alpha
from .ptq import PostTrainingMethod, PTQConfig, quant_layer_class

FP_FRACTION_LEVELS = (0.0, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08,
                      0.12)
ACT_BITS = 32


@dataclass
class APBPTQConfig(PTQConfig):
    """Post-training APB options; give ``bits_per_weight`` or ``fp_fraction``.

    Attributes:
        bits_per_weight: bits per weight of the compressed layers (docs/design.md §3 accounting):
            every layer meets it (budget_scope="layer") or the model as a whole does
            (budget_scope="model", levels chosen by the global step).
        fp_fraction: the fraction of weights kept at full precision instead.
        budget_scope: layer or model.
        per_channel: one α per output channel (else one per layer).
        value_bits: storage of the full-precision values, 32 or 16.
        compensate: OBS compensation (True); False is the naive baseline (the budget rule
            on the trained weights, α = mean|W|, nothing compensated).
        sequential: on by default here: binarization errors are large enough that they
            compound through the layers (see :func:`apb.methods.ptq_`).
        alpha_rounds: rows up to exact_columns wide: rounds of (greedy binarization, α refit
            in closed form to the binary set); the round of least error is kept (0: no refit).
    """

    bits_per_weight: float | None = None
    fp_fraction: float | None = None
    budget_scope: str = "layer"
    per_channel: bool = False
    value_bits: int = FP32_BITS
    compensate: bool = True
    alpha_rounds: int = 2
    sequential: bool = True

    def validate(self) -> None:
        super().validate()
        if (self.bits_per_weight is None) == (self.fp_fraction is None):
            raise ValueError("give exactly one of bits_per_weight or fp_fraction")
        if self.bits_per_weight is not None and not self.bits_per_weight > 1.0:
            raise ValueError(f"bits_per_weight must exceed 1 (every weight keeps its sign "
                             f"bit), got {self.bits_per_weight}")
        if self.fp_fraction is not None and not 0.0 <= self.fp_fraction <= 1.0:
            raise ValueError(f"fp_fraction must lie in [0, 1], got {self.fp_fraction}")
        if self.budget_scope not in ("layer", "model"):
            raise ValueError(f"budget_scope must be 'layer' or 'model', "
                             f"got {self.budget_scope!r}")
        if self.value_bits not in (FP32_BITS, FP16_BITS):
            raise ValueError(f"value_bits must be 32 or 16, got {self.value_bits}")
        if self.alpha_rounds < 0:
            raise ValueError(f"alpha_rounds must be >= 0, got {self.alpha_rounds}")

    def apb_config(self, with_budget: bool) -> APBConfig:
        """The training-time APB configuration whose layers hold the result."""
        budget = {"bits_per_weight": self.bits_per_weight, "fp_fraction": self.fp_fraction,
                  "budget_scope": self.budget_scope} if with_budget else {}
        return APBConfig(act_bits=self.act_bits, keep_first=self.keep_first,
                         keep_last=self.keep_last, per_channel=self.per_channel,
                         value_bits=self.value_bits, **budget)


class APBPTQMethod(PostTrainingMethod):
    name = "apb-ptq"
    config_class = APBPTQConfig

    def make_weight_quantizer(self, weight):
        return APBMethod(self.config.apb_config(False)).make_weight_quantizer(weight)

    def checkpoint_method(self):
        return "apb", asdict(self.config.apb_config(with_budget=not self.config.compensate))

    def compress_without_calibration(self, model, filter_fn):
        if self.config.compensate:
            return None
        method = APBMethod(self.config.apb_config(with_budget=True))
        method.prepare(model, filter_fn)
        method.finalize(model)
        return [name for name, m in model.named_modules() if hasattr(m, "weight_quantizer")]

    def budget(self):
        c = self.config
        if c.budget_scope == "layer":
            return None
        return ("bits", c.bits_per_weight) if c.bits_per_weight is not None \
            else ("fp", c.fp_fraction)

    def _n_scalars(self, rows: int) -> int:
        return rows if self.config.per_channel else 1

    def _uniform_fp_count(self, name: str, weight: torch.Tensor) -> int:
        c = self.config
        n = weight.numel()
        if c.fp_fraction is not None:
            return round(c.fp_fraction * n)
        probe = APBWeightQuantizer(weight.detach(), per_channel=c.per_channel,
                                   value_bits=c.value_bits)
        try:
            return probe.nnz_for_bits_per_weight(c.bits_per_weight)
        except ValueError as err:
            raise OBCError(f"layer {name!r}: {err}") from None

    def uniform_level(self, name, weight):
        return LayerLevel(fp_count=self._uniform_fp_count(name, weight),
                          per_channel=self.config.per_channel)

    def level_grid(self, name, weight):
        n = weight.numel()
        counts = {round(f * n) for f in FP_FRACTION_LEVELS}
        try:
            counts.add(self._uniform_fp_count(name, weight))
        except OBCError:
            pass  # below this layer's floor: the model-wide budget may still be met
        return [LayerLevel(fp_count=k, per_channel=self.config.per_channel)
                for k in sorted(counts)]

    def level_cost(self, kind, level, rows, cols, positions):
        if kind == "fp":
            return level.fp_count
        st = binary_sparse_storage(rows, cols, level.fp_count, value_bits=self.config.value_bits,
                                   n_scalars=self._n_scalars(rows))
        if kind == "bits":
            return st.total_bits
        if kind == "bytes":
            return st.total_bytes
        if kind == "bops":
            return positions * (rows * cols * 1 + level.fp_count * SCALAR_BITS) * ACT_BITS
        raise ValueError(f"unknown budget kind {kind!r}")

    def fit(self, W, level):
        fraction = level.fp_count / W.numel()
        return {"alpha": fit_alpha(W, fraction, self.config.per_channel),
                "alpha_rounds": self.config.alpha_rounds}

    @torch.no_grad()
    def make_layer(self, module: nn.Module, solution: LayerSolution,
                   level: LayerLevel) -> nn.Module:
        wq = self.make_weight_quantizer(module.weight)
        alpha = solution.alpha.float()
        binary = solution.binary
        W = solution.weight.float()
        W = torch.where(binary, alpha.unsqueeze(1) * apb_sign(W), W)
        dist = (W.abs() - alpha.unsqueeze(1)).abs().masked_fill(binary, float("inf"))
        if self.config.per_channel:
            wq.alpha.copy_(alpha)
            delta = dist.min(1).values
        else:
            wq.alpha.copy_(alpha[:1])
            delta = dist.min().reshape(1)
        # No full-precision weight in the group: any positive band holds all of it.
        delta = torch.where(torch.isfinite(delta) & (delta > 0), delta,
                            wq.alpha.detach().clamp_min(1e-8))
        wq.delta.copy_(delta.reshape(wq.delta.shape))
        wq.frozen_mask.copy_(binary.reshape(module.weight.shape))
        wq.mask_frozen.fill_(True)
        layer = quant_layer_class(module).from_float(module, wq, None)
        layer.weight.copy_(W.reshape(module.weight.shape))
        return layer
