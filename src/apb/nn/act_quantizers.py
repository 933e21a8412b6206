"""Activation quantizers: fp (identity), 1-bit sign, k-bit uniform with a learned clip.

Each quantizer declares ``bits`` so a summary can report the activation precision and the
packed path can pick its kernel (1-bit: XOR+popcount; 2-bit: bit-planes; 32: fp).
"""

from __future__ import annotations

import torch
from torch import nn


class _SignClippedSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class SignActivation(nn.Module):
    r"""1-bit activations (BNN, Hubara/Courbariaux et al. 2016).

    Forward: :math:`q(x) = \operatorname{sign}(x) \in \{-1, +1\}` with ``sign(0) = +1``.
    Backward (clipped straight-through estimator):
    :math:`\partial q / \partial x = \mathbb{1}[|x| \le 1]`.

    Zero padding after this quantizer stays 0 (the packed path must keep it exact).
    """

    bits = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignClippedSTE.apply(x)


class _UniformLearnedClip(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, levels: int):
        s = scale.clamp_min(1e-8)
        xc = x.clamp(min=0.0).minimum(s)
        code = torch.round(xc / s * levels)
        ctx.save_for_backward(x, s, code)
        ctx.levels = levels
        return code * (s / levels)

    @staticmethod
    def backward(ctx, grad):
        x, s, code = ctx.saved_tensors
        inside = (x > 0) & (x < s)
        grad_x = grad * inside.to(grad.dtype)
        grad_s = None
        if ctx.needs_input_grad[1]:
            d_ds = torch.where(inside, code / ctx.levels - x / s, (x >= s).to(grad.dtype))
            grad_s = (grad * d_ds).sum().reshape(s.shape)
        return grad_x, grad_s, None


class UniformActivation(nn.Module):
    r"""Unsigned k-bit activations with a learned clipping scale ``s`` (PACT / LSQ style).

    Forward, with :math:`L = 2^k - 1`:
    :math:`q(x) = \frac{s}{L}\,\operatorname{round}\!\left(\frac{L}{s}\,\operatorname{clip}(x, 0, s)\right)`,
    so the codes are :math:`0 \dots L` (bit-planes for the packed kernel).

    Backward (straight-through for the rounding):
    :math:`\partial q/\partial x = \mathbb{1}[0 < x < s]`;
    :math:`\partial q/\partial s = q/s - x/s` inside the range, 1 above it, 0 below
    (Choi et al. 2018, PACT; Esser et al. 2020, LSQ). Negative inputs clip to 0, so place
    it after a ReLU. ``s`` is initialised on the first training batch to
    ``mean(x⁺) + 3·std(x⁺)`` of the positive part and is learned by the scale optimizer.
    """

    def __init__(self, bits: int = 2):
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"UniformActivation supports 2 to 8 bits, got {bits}")
        self.bits = bits
        self.act_scale = nn.Parameter(torch.ones(1))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                pos = x.detach().clamp(min=0.0)
                self.act_scale.fill_(float(pos.mean() + 3 * pos.std()) or 1.0)
                self.initialized.fill_(True)
        return _UniformLearnedClip.apply(x, self.act_scale, self.levels)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scale={float(self.act_scale.detach()):.4g}"


def make_act_quantizer(bits: int) -> nn.Module | None:
    """The activation quantizer for ``bits`` (32 = full precision: ``None``)."""
    if bits == 32:
        return None
    if bits == 1:
        return SignActivation()
    if bits == 2:
        return UniformActivation(2)
    raise ValueError(f"act_bits must be 1, 2 or 32, got {bits}")
