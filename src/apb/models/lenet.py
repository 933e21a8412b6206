"""LeNet-5 (LeCun et al., 1998) with BatchNorm, for MNIST-sized and 8x8 digit images."""

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


def lenet5_conv2_padding(input_size: int) -> int:
    """Padding of the second 5x5 convolution: 0 (the classic LeNet-5) whenever the feature
    map stays at least 2x2 without it (``input_size >= 12``), else 2, which keeps it the size
    of its input so that small images (8x8 ``digits``) still reach the classifier."""
    return 0 if input_size // 2 - 4 >= 2 else 2


def lenet5_feature_size(input_size: int) -> int:
    """Side of the last 16-channel feature map: 5 for 28x28 inputs, 2 for 8x8 inputs."""
    after_pool1 = input_size // 2
    after_conv2 = after_pool1 - 4 + 2 * lenet5_conv2_padding(input_size)
    return after_conv2 // 2


LENET5_WIDTHS = (6, 16, 120, 84)
"""Output channels / features of ``conv1``, ``conv2``, ``fc1`` and ``fc2`` in the classic
LeNet-5; a filter-pruned LeNet-5 is the same network with smaller ``widths``."""


class LeNet5(nn.Sequential):
    """``conv1(5x5, 6, pad 2) bn1 act1 pool1 | conv2(5x5, 16) bn2 act2 pool2 | flatten |
    fc1(120) bn3 act3 | fc2(84) bn4 act4 | fc3(num_classes)``; ``fc3`` is the classifier.
    The four widths (6, 16, 120, 84) are ``widths``."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int, activation: str,
                 widths: tuple[int, int, int, int] = LENET5_WIDTHS):
        side = lenet5_feature_size(input_size)
        c1, c2, f1, f2 = widths
        layers = OrderedDict(
            conv1=nn.Conv2d(in_channels, c1, 5, padding=2, bias=False),
            bn1=nn.BatchNorm2d(c1),
            act1=make_activation(activation),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(c1, c2, 5, padding=lenet5_conv2_padding(input_size), bias=False),
            bn2=nn.BatchNorm2d(c2),
            act2=make_activation(activation),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(c2 * side * side, f1, bias=False),
            bn3=nn.BatchNorm1d(f1),
            act3=make_activation(activation),
            fc2=nn.Linear(f1, f2, bias=False),
            bn4=nn.BatchNorm1d(f2),
            act4=make_activation(activation),
            fc3=nn.Linear(f2, num_classes),
        )
        super().__init__(layers)
        self.input_shape = (in_channels, input_size, input_size)
        self.num_classes = num_classes
        init_weights(self)

    def width_kwargs(self) -> dict:
        """The builder arguments that give this network's widths (after filter pruning too)."""
        return {"widths": [self.conv1.out_channels, self.conv2.out_channels,
                           self.fc1.out_features, self.fc2.out_features]}


@register
def lenet5(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 28, activation: str = "relu",
    widths: Sequence[int] = LENET5_WIDTHS,
) -> LeNet5:
    """LeNet-5 for square ``(in_channels, input_size, input_size)`` images.

    ``input_size=28`` (MNIST) gives the classic 16x5x5 = 400 features before ``fc1``;
    ``input_size=8`` (scikit-learn digits) pads the second convolution and gives 16x2x2 = 64.
    Any ``input_size >= 4`` works. ``widths`` are the output widths of ``conv1``, ``conv2``,
    ``fc1`` and ``fc2`` (a filter-pruned LeNet-5 records its own).
    """
    check_positive_int(input_size, "input_size")
    if input_size < 4:
        raise ValueError(f"lenet5 needs input_size >= 4 (two 2x2 max-pools), got {input_size}")
    return LeNet5(
        num_classes=check_positive_int(num_classes, "num_classes"),
        in_channels=check_positive_int(in_channels, "in_channels"),
        input_size=input_size,
        activation=check_activation(activation),
        widths=check_widths(widths, len(LENET5_WIDTHS), "lenet5 widths"),
    )
