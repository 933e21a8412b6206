"""ResNet-20 for 32x32 CIFAR images (He et al., "Deep Residual Learning", CVPR 2016, §4.2)."""

from __future__ import annotations

from collections.abc import Sequence

from apb.models.common import check_activation, check_positive_int, check_widths
from apb.models.registry import register
from apb.models.resnet import ResNet


@register
def resnet20(
    num_classes: int = 10, in_channels: int = 3, activation: str = "relu",
    widths: Sequence[int] = (16, 32, 64), block_widths: Sequence[int] | None = None,
    input_size: int = 32,
) -> ResNet:
    """CIFAR ResNet-20: a 3x3 stem of 16 channels, 3 stages of 3 basic blocks (16/32/64
    channels, the last two stages starting with stride 2), global average pool, Linear.

    Shortcuts are identities except where a stage changes shape, where they are 1x1 strided
    convolutions + BatchNorm (option B); those are ``nn.Conv2d`` too, so compression treats
    them like any other layer unless filtered. Input ``(in_channels, 32, 32)``; about 0.27 M
    parameters for 10 classes. The global average pool takes any image size:
    ``input_size`` only records the side it is used with (28 for MNIST), as ``input_shape``.

    ``widths`` (the residual stream of each stage) and ``block_widths`` (each block's inner
    width, default its stage's) describe a filter-pruned network.
    """
    return ResNet(
        in_channels=check_positive_int(in_channels, "in_channels"),
        stem_kernel=3,
        stem_stride=1,
        stem_pool=False,
        widths=check_widths(widths, 3, "resnet20 widths"),
        depths=(3, 3, 3),
        num_classes=check_positive_int(num_classes, "num_classes"),
        activation=check_activation(activation),
        block_widths=None if block_widths is None else check_widths(
            block_widths, 9, "resnet20 block_widths"),
        input_shape=(in_channels, check_positive_int(input_size, "input_size"),
                     input_size),
    )
