"""VGG-Small for 32x32 CIFAR images, the VGG variant of binary-network papers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from apb.models.common import (
    check_activation,
    check_positive_int,
    check_widths,
    init_weights,
    make_activation,
)
from apb.models.registry import register

VGG_SMALL_CONVS = ((128, False), (128, True), (256, False), (256, True), (512, False), (512, True))
"""(output channels, followed by a 2x2 max-pool) for each 3x3 convolution: 128-128-M-256-256-M-
512-512-M."""


class VGGSmall(nn.Sequential):
    """Six 3x3 convolutions, each ``conv [pool] bn act``, then ``flatten | fc(512*4*4)``.

    The max-pool sits between a convolution and its BatchNorm, as in the binary-network
    VGG-Small (LQ-Nets, Zhang et al. 2018; IR-Net): pooling the raw convolution output keeps
    the information a later sign quantizer would otherwise lose by pooling already-clipped
    activations.
    """

    def __init__(self, num_classes: int, in_channels: int, activation: str,
                 widths: tuple[int, ...] | None = None):
        widths = widths or tuple(w for w, _ in VGG_SMALL_CONVS)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for index, (width, (_, pooled)) in enumerate(zip(widths, VGG_SMALL_CONVS), start=1):
            layers[f"conv{index}"] = nn.Conv2d(channels, width, 3, padding=1, bias=False)
            if pooled:
                layers[f"pool{index}"] = nn.MaxPool2d(2)
            layers[f"bn{index}"] = nn.BatchNorm2d(width)
            layers[f"act{index}"] = make_activation(activation)
            channels = width
        layers["flatten"] = nn.Flatten()
        layers["fc"] = nn.Linear(channels * 4 * 4, num_classes)
        super().__init__(layers)
        self.input_shape = (in_channels, 32, 32)
        self.num_classes = num_classes
        init_weights(self)

    def width_kwargs(self) -> dict:
        """The builder arguments that give this network's widths (after filter pruning too)."""
        return {"widths": [getattr(self, f"conv{i}").out_channels
                           for i in range(1, len(VGG_SMALL_CONVS) + 1)]}


@register
def vgg_small(num_classes: int = 10, in_channels: int = 3, activation: str = "relu",
              widths: Sequence[int] | None = None) -> VGGSmall:
    """VGG-Small (128-128-M-256-256-M-512-512-M, Linear(512*4*4, num_classes)) for
    ``(in_channels, 32, 32)`` inputs; about 4.66 M parameters for 10 classes. ``widths``
    replaces the six convolution widths (a filter-pruned VGG-Small records its own)."""
    return VGGSmall(
        num_classes=check_positive_int(num_classes, "num_classes"),
        in_channels=check_positive_int(in_channels, "in_channels"),
        activation=check_activation(activation),
        widths=None if widths is None else check_widths(widths, len(VGG_SMALL_CONVS),
                                                        "vgg_small widths"),
    )
