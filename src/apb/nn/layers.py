"""Compressed layers: a Conv2d / Linear whose weight and input pass through quantizers."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .act_quantizers import make_act_quantizer
from .apb_quantizer import APBWeightQuantizer
from .weight_quantizer import WeightQuantizer


class _Compressed:
    """Shared by :class:`QuantConv2d` and :class:`QuantLinear`."""

    weight: nn.Parameter
    weight_quantizer: WeightQuantizer
    act_quantizer: nn.Module | None

    def _attach(self, weight_quantizer: WeightQuantizer, act_quantizer: nn.Module | None):
        if tuple(weight_quantizer.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"weight quantizer built for shape {weight_quantizer.shape}, layer weight is "
                f"{tuple(self.weight.shape)}"
            )
        self.weight_quantizer = weight_quantizer
        self.act_quantizer = act_quantizer

    def quantized_weight(self) -> torch.Tensor:
        """``Ŵ``, the weight the layer computes with."""
        return self.weight_quantizer(self.weight)

    def quantized_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act_quantizer is None else self.act_quantizer(x)

    @property
    def act_bits(self) -> int:
        return 32 if self.act_quantizer is None else self.act_quantizer.bits

    @classmethod
    def from_float(cls, module, weight_quantizer, act_quantizer=None):
        raise NotImplementedError


class QuantConv2d(_Compressed, nn.Conv2d):
    """``Conv2d`` computing with ``Ŵ = weight_quantizer(W)`` on ``act_quantizer(x)``.

    Zero padding is applied after the activation quantizer, so padded positions are 0.
    """

    def __init__(self, *args, weight_quantizer=None, act_quantizer=None, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        if weight_quantizer is None:
            raise ValueError("QuantConv2d needs a weight_quantizer")
        self._attach(weight_quantizer, act_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)

    @classmethod
    def from_float(cls, module: nn.Conv2d, weight_quantizer, act_quantizer=None):
        if module.padding_mode != "zeros":
            raise ValueError(
                f"only zero padding can be compressed, got padding_mode={module.padding_mode!r}"
            )
        new = cls(
            module.in_channels, module.out_channels, module.kernel_size,
            stride=module.stride, padding=module.padding, dilation=module.dilation,
            groups=module.groups, bias=module.bias is not None,
            weight_quantizer=weight_quantizer, act_quantizer=act_quantizer,
            device=module.weight.device, dtype=module.weight.dtype,
        )
        _copy_parameters(module, new)
        return new


class QuantLinear(_Compressed, nn.Linear):
    """``Linear`` computing with ``Ŵ = weight_quantizer(W)`` on ``act_quantizer(x)``."""

    def __init__(self, *args, weight_quantizer=None, act_quantizer=None, **kwargs):
        nn.Linear.__init__(self, *args, **kwargs)
        if weight_quantizer is None:
            raise ValueError("QuantLinear needs a weight_quantizer")
        self._attach(weight_quantizer, act_quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)

    @classmethod
    def from_float(cls, module: nn.Linear, weight_quantizer, act_quantizer=None):
        new = cls(
            module.in_features, module.out_features, bias=module.bias is not None,
            weight_quantizer=weight_quantizer, act_quantizer=act_quantizer,
            device=module.weight.device, dtype=module.weight.dtype,
        )
        _copy_parameters(module, new)
        return new


@torch.no_grad()
def _copy_parameters(src: nn.Module, dst: nn.Module) -> None:
    dst.weight.copy_(src.weight)
    if src.bias is not None:
        dst.bias.copy_(src.bias)


class APBConv2d(QuantConv2d):
    """A ``Conv2d`` trained with APB; ``apb_options`` go to :class:`APBWeightQuantizer`.

    >>> layer = APBConv2d(16, 32, 3, padding=1, act_bits=2, fp_fraction=0.02)
    """

    def __init__(self, *args, act_bits: int = 32, **apb_options):
        conv_keys = ("stride", "padding", "dilation", "groups", "bias", "padding_mode",
                     "device", "dtype")
        conv_kwargs = {k: apb_options.pop(k) for k in conv_keys if k in apb_options}
        probe = nn.Conv2d(*args, **conv_kwargs)
        super().__init__(
            *args, **conv_kwargs,
            weight_quantizer=APBWeightQuantizer(probe.weight, **apb_options),
            act_quantizer=make_act_quantizer(act_bits),
        )
        _copy_parameters(probe, self)


class APBLinear(QuantLinear):
    """A ``Linear`` trained with APB; ``apb_options`` go to :class:`APBWeightQuantizer`.

    >>> layer = APBLinear(256, 128, fp_fraction=0.01)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 act_bits: int = 32, device=None, dtype=None, **apb_options):
        probe = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        super().__init__(
            in_features, out_features, bias=bias, device=device, dtype=dtype,
            weight_quantizer=APBWeightQuantizer(probe.weight, **apb_options),
            act_quantizer=make_act_quantizer(act_bits),
        )
        _copy_parameters(probe, self)


COMPRESSED_TYPES = (QuantConv2d, QuantLinear)
