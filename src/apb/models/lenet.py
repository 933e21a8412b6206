"""LeNet-5 (LeCun et al., 1998) with BatchNorm, for MNIST-sized and 8x8 digit images."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from apb.models.common import (
    check_activation,
    check_positive_int,
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


class LeNet5(nn.Sequential):
    """``conv1(5x5, 6, pad 2) bn1 act1 pool1 | conv2(5x5, 16) bn2 act2 pool2 | flatten |
    fc1(120) bn3 act3 | fc2(84) bn4 act4 | fc3(num_classes)``; ``fc3`` is the classifier."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int, activation: str):
        side = lenet5_feature_size(input_size)
        layers = OrderedDict(
            conv1=nn.Conv2d(in_channels, 6, 5, padding=2, bias=False),
            bn1=nn.BatchNorm2d(6),
            act1=make_activation(activation),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, 5, padding=lenet5_conv2_padding(input_size), bias=False),
            bn2=nn.BatchNorm2d(16),
            act2=make_activation(activation),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(16 * side * side, 120, bias=False),
            bn3=nn.BatchNorm1d(120),
            act3=make_activation(activation),
            fc2=nn.Linear(120, 84, bias=False),
            bn4=nn.BatchNorm1d(84),
            act4=make_activation(activation),
            fc3=nn.Linear(84, num_classes),
        )
        super().__init__(layers)
        self.input_shape = (in_channels, input_size, input_size)
        self.num_classes = num_classes
        init_weights(self)


@register
def lenet5(
    num_classes: int = 10, in_channels: int = 1, input_size: int = 28, activation: str = "relu"
) -> LeNet5:
    """LeNet-5 for square ``(in_channels, input_size, input_size)`` images.

    ``input_size=28`` (MNIST) gives the classic 16x5x5 = 400 features before ``fc1``;
    ``input_size=8`` (scikit-learn digits) pads the second convolution and gives 16x2x2 = 64.
    Any ``input_size >= 4`` works.
    """
    check_positive_int(input_size, "input_size")
    if input_size < 4:
        raise ValueError(f"lenet5 needs input_size >= 4 (two 2x2 max-pools), got {input_size}")
    return LeNet5(
        num_classes=check_positive_int(num_classes, "num_classes"),
        in_channels=check_positive_int(in_channels, "in_channels"),
        input_size=input_size,
        activation=check_activation(activation),
    )
