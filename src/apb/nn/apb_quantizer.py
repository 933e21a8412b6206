r"""The APB weight quantizer: binary inside a learned band, full precision outside it.

Nardini, Rulli, Trani, Venturini, *Neural network compression using binarization and few
full-precision weights*, Information Sciences 716 (2025); arXiv:2306.08960.

With latent weights :math:`W`, binary magnitude :math:`\alpha > 0` and band half-width
:math:`\delta > 0` (per layer, or per output channel):

.. math::

    d = \big|\,|W| - \alpha\,\big|, \qquad M = \mathbb{1}[d < \delta], \qquad
    \hat W = M \odot \alpha\,\operatorname{sign}(W) + (1 - M) \odot W

with ``sign(0) = +1``. Weights in the band become ``±α``; the few outside it (outliers and,
when ``α > δ``, weights near zero) stay full precision.

Gradients, with :math:`g = \partial L/\partial \hat W`, :math:`s = \operatorname{sign}(W)`
and :math:`r = \alpha s - W = s(\alpha - |W|)` (the jump a weight makes when it enters the
band):

* ``W``: straight-through, :math:`\partial \hat W/\partial W = 1`.
* ``grad="ours"`` (default). :math:`\hat W` depends on :math:`\alpha` along two paths: the
  binary value :math:`\alpha s` (derivative :math:`M s`) and the mask, whose derivative is
  a Dirac at the band edges, :math:`\partial M/\partial\delta = \mathrm{Dirac}(\delta - d)`
  and :math:`\partial M/\partial\alpha = -\mathrm{Dirac}(\delta - d)\operatorname{sign}(\alpha-|W|)`.
  Replacing the Dirac by the uniform density :math:`\mathbb{1}[d<\delta]/\delta` over the band
  (a straight-through estimate of the step's derivative) gives

  .. math::

      g_\alpha = \textstyle\sum g \odot M \odot s \odot (1 - d/\delta), \qquad
      g_\delta = \textstyle\sum g \odot M \odot r / \delta .

  The first term is the exact gradient with the mask held fixed; the second is the
  surrogate of the mask's boundary crossings: moving :math:`\alpha` pushes weights across
  both edges, each jump of size :math:`d` pointing against :math:`s`. Sums, not means: the
  gradient then has the scale of the true chain rule.
* ``grad="paper"``: the reference implementation's rule,
  :math:`g_\alpha = -\operatorname{mean}(g \odot M \odot s)` and
  :math:`g_\delta = \operatorname{mean}(g \odot M \odot r)/\delta`. Its :math:`g_\delta` is
  ours up to the mean; its :math:`g_\alpha` has the opposite sign of the fixed-mask
  gradient and equals only the boundary term evaluated at the edge (:math:`d = \delta`),
  which is why it is kept selectable rather than the default.

Memory term (ours): without one, nothing in the loss favours binary weights, and a learned
``δ`` shrinks until much of the layer is full precision (measured on LeNet-5/MNIST-5k: 41%
with ``grad="ours"``, 80% with ``grad="paper"`` after 15 epochs). A weight decay on ``δ``
pulls the same way (towards a narrower band). ``fp_penalty = λ`` adds :math:`\lambda F` to
the loss, :math:`F = \operatorname{mean}(1 - M)` the full-precision fraction, whose
gradients through the same uniform surrogate are

.. math::

    \partial F/\partial\delta = -\operatorname{mean}(M)/\delta, \qquad
    \partial F/\partial\alpha = \operatorname{mean}(M\,\operatorname{sign}(\alpha - |W|))/\delta .

``λ`` is in loss units per unit of full-precision fraction, so it reads as a price.

Budget mode (beyond the paper): with ``fp_fraction`` or ``bits_per_weight`` set, ``δ`` is
no longer learned. Each forward keeps at full precision exactly the requested number ``k``
of weights with the largest normalised distance :math:`u = d/\alpha` (by rank, so ties
cannot break the count) and records the equivalent band, ``δ = u_{(k)}·α``; ``α`` keeps
learning. A model-wide budget is applied by the APB method, which ranks the weights of all
layers together and writes each layer's share ``k`` into ``budget_nnz``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..memory import FP16_BITS, FP32_BITS, LayerStorage, binary_sparse_storage
from .weight_quantizer import WeightQuantizer

GRAD_MODES = ("ours", "paper")


def _sign(w: torch.Tensor) -> torch.Tensor:
    return torch.where(w < 0, -torch.ones_like(w), torch.ones_like(w))


def _sum_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum ``t`` down to the shape of a per-layer (1,) or per-channel (C, 1, ...) scalar."""
    if math.prod(shape) == 1:
        return t.sum().reshape(shape)
    return t.sum(dim=tuple(range(1, t.dim())), keepdim=True).reshape(shape)


class APBQuantize(torch.autograd.Function):
    """``Ŵ = M·α·sign(W) + (1−M)·W``; see the module docstring for the gradients."""

    @staticmethod
    def forward(ctx, w, alpha, delta, mask, paper: bool, fp_penalty: float = 0.0,
                fp16_values: bool = False):
        a = alpha.view(alpha.shape[0], *([1] * (w.dim() - 1))) if alpha.numel() > 1 else alpha
        dl = delta.view(a.shape) if delta.numel() > 1 else delta
        s = _sign(w)
        if mask is None:
            mask = (w.abs() - a).abs() < dl
        ctx.save_for_backward(w, a, dl, mask)
        ctx.paper = paper
        ctx.fp_penalty = fp_penalty
        ctx.scalar_shapes = (alpha.shape, delta.shape)
        binary = a * s
        if fp16_values:
            # The packed format stores the correction W − α·sign(W) in float16 (value_bits
            # = 16), so the layer computes with α·sign(W) + fp16(W − α·sign(W)): training
            # sees exactly the weights the packed model will use.
            return torch.where(mask, binary, binary + (w - binary).half().float())
        return torch.where(mask, binary, w)

    @staticmethod
    def backward(ctx, grad):
        w, a, dl, mask = ctx.saved_tensors
        alpha_shape, delta_shape = ctx.scalar_shapes
        grad_alpha = grad_delta = None
        need_alpha, need_delta = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if need_alpha or need_delta:
            s = _sign(w)
            gms = grad * mask.to(grad.dtype) * s
            dl_safe = dl.clamp_min(1e-12)
            group = w.numel() // math.prod(alpha_shape)
            if need_alpha:
                if ctx.paper:
                    grad_alpha = -_sum_to(gms, alpha_shape) / group
                else:
                    d = (w.abs() - a).abs()
                    grad_alpha = _sum_to(gms * (1 - d / dl_safe), alpha_shape)
            if need_delta:
                g_d = gms * (a - w.abs()) / dl_safe
                grad_delta = _sum_to(g_d, delta_shape)
                if ctx.paper:
                    grad_delta = grad_delta / (w.numel() // math.prod(delta_shape))
            if ctx.fp_penalty:
                # λ·F with F the fraction of full-precision weights, through the same
                # uniform surrogate of the band edges: ∂M/∂δ ≈ M/δ, ∂M/∂α ≈ −M·sign(α−|W|)/δ.
                m_over_dl = mask.to(grad.dtype) / dl_safe
                if need_delta:
                    grad_delta = grad_delta - ctx.fp_penalty * _sum_to(
                        m_over_dl, delta_shape) / group
                if need_alpha:
                    grad_alpha = grad_alpha + ctx.fp_penalty * _sum_to(
                        m_over_dl * torch.sign(a - w.abs()), alpha_shape) / group
        return grad, grad_alpha, grad_delta, None, None, None, None


class APBWeightQuantizer(WeightQuantizer):
    """APB: binary ``±α`` inside the band ``|‖W| − α| < δ``, full precision outside.

    Args:
        weight: the latent weight it will quantize (for initialisation and shapes).
        per_channel: one ``α, δ`` per output channel instead of one per layer.
        grad: ``"ours"`` or ``"paper"`` surrogate gradients for ``α, δ``.
        fp_fraction: budget mode, the exact fraction of weights kept full precision.
        bits_per_weight: budget mode, the layer's bits per weight (docs/design.md §3 accounting).
        value_bits: storage of the full-precision values, 32 or 16; with 16 the forward
            uses ``α·sign(W) + fp16(W − α·sign(W))`` there, what the packed layer stores.
        shared_budget: budget mode whose threshold is set from outside (a model-wide
            budget, see ``apb.methods.apb.apply_model_budget``) through ``budget_nnz``.
        delta_init: ``δ`` starts at ``delta_init · std(W)`` (learned mode).
        fp_penalty: learned mode: ``λ`` of a memory term ``λ·F`` added to the loss, ``F``
            the fraction of the layer's weights kept at full precision (see module docs).
    """

    method = "apb"

    def __init__(
        self,
        weight: torch.Tensor,
        *,
        per_channel: bool = False,
        grad: str = "ours",
        fp_fraction: float | None = None,
        bits_per_weight: float | None = None,
        value_bits: int = FP32_BITS,
        shared_budget: bool = False,
        delta_init: float = 3.0,
        fp_penalty: float = 0.0,
    ):
        super().__init__(weight)
        if grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
        if value_bits not in (FP32_BITS, FP16_BITS):
            raise ValueError(f"value_bits must be 32 or 16, got {value_bits}")
        if (fp_fraction is not None) + (bits_per_weight is not None) + shared_budget > 1:
            raise ValueError("give at most one of fp_fraction, bits_per_weight, shared_budget")
        if fp_fraction is not None and not 0.0 <= fp_fraction <= 1.0:
            raise ValueError(f"fp_fraction must lie in [0, 1], got {fp_fraction}")
        if fp_penalty < 0 or not math.isfinite(fp_penalty):
            raise ValueError(f"fp_penalty must be a finite value >= 0, got {fp_penalty}")
        self.per_channel = per_channel
        self.grad = grad
        self.fp_penalty = fp_penalty
        self.value_bits = value_bits
        self.fp_fraction = fp_fraction
        self.bits_per_weight = bits_per_weight
        self.shared_budget = shared_budget
        if bits_per_weight is not None:
            self._target_nnz = self.nnz_for_bits_per_weight(bits_per_weight)

        w = weight.detach()
        flat = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
        alpha = flat.abs().mean(dim=1)
        delta = delta_init * flat.std(dim=1, unbiased=False).clamp_min(1e-8)
        self.alpha = nn.Parameter(alpha.clone())
        if self.budget_mode:
            self.register_buffer("delta", delta.clone())
        else:
            self.delta = nn.Parameter(delta.clone())
        # The model-wide budget writes this layer's full-precision count here (-1: unset).
        self.register_buffer("budget_nnz", torch.full((), -1, dtype=torch.long))
        self.register_buffer("frozen_mask", torch.zeros(w.shape, dtype=torch.bool))
        self.register_buffer("mask_frozen", torch.zeros((), dtype=torch.bool))

    # -- configuration -------------------------------------------------------------------
    @property
    def budget_mode(self) -> bool:
        return (
            self.fp_fraction is not None or self.bits_per_weight is not None
            or self.shared_budget
        )

    def _storage_for(self, nnz: int) -> LayerStorage:
        return binary_sparse_storage(
            self.rows, self.cols, nnz, value_bits=self.value_bits, n_scalars=self.alpha_count
        )

    @property
    def alpha_count(self) -> int:
        return self.rows if self.per_channel else 1

    def nnz_for_bits_per_weight(self, target: float) -> int:
        """Most full-precision weights whose layer stays within ``target`` bits/weight."""
        budget = target * self.n_weights
        if self._storage_for(0).total_bits > budget:
            floor = self._storage_for(0).bits_per_weight
            raise ValueError(
                f"bits_per_weight={target} is below what the binary part alone needs for a "
                f"{self.rows}x{self.cols} layer ({floor:.4f}); ask for more than {floor:.4f}"
            )
        lo, hi = 0, self.n_weights
        while lo < hi:  # largest nnz with total_bits <= budget (total_bits grows with nnz)
            mid = (lo + hi + 1) // 2
            if self._storage_for(mid).total_bits <= budget:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def target_nnz(self) -> int | None:
        """Full-precision weights the budget asks for (None when δ is learned)."""
        if self.shared_budget:
            k = int(self.budget_nnz)
            if k < 0:
                raise RuntimeError(
                    "this APB layer follows a model-wide budget that was never applied; "
                    "prepare the model with apb.compress_ or apb.methods.create('apb', ...)"
                )
            return k
        if self.fp_fraction is not None:
            return round(self.fp_fraction * self.n_weights)
        if self.bits_per_weight is not None:
            return self._target_nnz
        return None

    # -- the quantizer -------------------------------------------------------------------
    def _alpha_view(self) -> torch.Tensor:
        a = self.alpha.clamp_min(1e-8)
        return a.view(-1, *([1] * (len(self.shape) - 1))) if self.per_channel else a

    def normalized_distance(self, weight: torch.Tensor) -> torch.Tensor:
        """``u = ||W| − α| / α``: the band is ``u < δ/α``."""
        a = self._alpha_view().detach()
        return (weight.detach().abs() - a).abs() / a

    @torch.no_grad()
    def _budget_mask(self, weight: torch.Tensor) -> torch.Tensor:
        u = self.normalized_distance(weight).reshape(-1)
        k = self.target_nnz()
        mask = torch.ones(u.numel(), dtype=torch.bool, device=u.device)
        if k:
            vals, idx = u.topk(k)
            mask[idx] = False
            t = vals[-1]
        else:
            t = u.max() * 2 + 1 if u.numel() else u.new_ones(())
        self.delta.copy_(self.alpha.detach().clamp_min(1e-8) * t)
        return mask.view(self.shape)

    def band_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """``M``: True where the weight is binary."""
        if bool(self.mask_frozen):
            return self.frozen_mask
        if self.budget_mode:
            return self._budget_mask(weight)
        a = self._alpha_view().detach()
        dl = self.delta.detach()
        dl = dl.view(a.shape) if self.per_channel else dl
        return (weight.detach().abs() - a).abs() < dl

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        mask = self.band_mask(weight)
        alpha = self.alpha.clamp_min(1e-8)
        return APBQuantize.apply(
            weight, alpha, self.delta, mask, self.grad == "paper", self.fp_penalty,
            self.value_bits == FP16_BITS,
        )

    # -- training controls ---------------------------------------------------------------
    def freeze_scales(self) -> None:
        self.alpha.requires_grad_(False)
        if isinstance(self.delta, nn.Parameter):
            self.delta.requires_grad_(False)

    @torch.no_grad()
    def freeze_mask(self, weight: torch.Tensor) -> None:
        if not bool(self.mask_frozen):
            self.frozen_mask.copy_(self.band_mask(weight))
            self.mask_frozen.fill_(True)

    # -- accounting ----------------------------------------------------------------------
    @torch.no_grad()
    def storage(self, weight: torch.Tensor) -> LayerStorage:
        nnz = int((~self.band_mask(weight)).sum())
        return self._storage_for(nnz)

    def describe(self, weight: torch.Tensor) -> dict:
        return {
            "alpha": float(self.alpha.detach().mean()),
            "delta": float(self.delta.detach().mean()),
        }

    def extra_repr(self) -> str:
        mode = (
            f"fp_fraction={self.fp_fraction}" if self.fp_fraction is not None
            else f"bits_per_weight={self.bits_per_weight}" if self.bits_per_weight is not None
            else "model-wide budget" if self.shared_budget
            else "learned delta"
        )
        return f"per_channel={self.per_channel}, grad={self.grad}, {mode}"

