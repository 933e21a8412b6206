"""Multi-layer perceptron with BatchNorm, for flattened MNIST-sized inputs."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from apb.models.common import check_activation, check_positive_int, make_activation
from apb.models.registry import register


class MLP(nn.Sequential):
    """``flatten | fc1 bn1 act1 | ... | fcK bnK actK | classifier``; hidden Linear layers
    have no bias (the BatchNorm after them has one)."""

    def __init__(
        self,
        num_classes: int,
        in_features: int,
        hidden: tuple[int, ...],
        activation: str,
        input_shape: tuple[int, int, int],
    ):
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = in_features
        for index, out_features in enumerate(hidden, start=1):
            layers[f"fc{index}"] = nn.Linear(width, out_features, bias=False)
            layers[f"bn{index}"] = nn.BatchNorm1d(out_features)
            layers[f"act{index}"] = make_activation(activation)
            width = out_features
        layers["classifier"] = nn.Linear(width, num_classes)
        super().__init__(layers)
        self.input_shape = input_shape
        self.num_classes = num_classes

    def width_kwargs(self) -> dict:
        """The builder arguments that give this network's widths (after filter pruning too)."""
        return {"hidden": [m.out_features for name, m in self.named_children()
                           if name.startswith("fc")]}


def _default_input_shape(in_features: int) -> tuple[int, int, int]:
    side = math.isqrt(in_features)
    if side * side == in_features:
        return (1, side, side)
    return (in_features, 1, 1)


@register
def mlp(
    num_classes: int = 10,
    in_features: int = 784,
    hidden: Sequence[int] = (256, 256),
    activation: str = "relu",
    input_shape: tuple[int, int, int] | None = None,
) -> MLP:
    """An MLP taking any ``(N, *input_shape)`` tensor and flattening it to ``in_features``.

    ``hidden`` lists the widths of the hidden layers (may be empty: then a single Linear).
    ``input_shape`` defaults to a one-channel square image when ``in_features`` is a perfect
    square (784 -> (1, 28, 28), 64 -> (1, 8, 8)) and to ``(in_features, 1, 1)`` otherwise;
    when given, its product must equal ``in_features``.
    """
    check_positive_int(num_classes, "num_classes")
    check_positive_int(in_features, "in_features")
    check_activation(activation)
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of layer widths, got {hidden!r}")
    for width in hidden:
        check_positive_int(width, "every hidden width")
    if input_shape is None:
        input_shape = _default_input_shape(in_features)
    else:
        input_shape = tuple(input_shape)
        if len(input_shape) != 3 or math.prod(input_shape) != in_features:
            raise ValueError(
                f"input_shape must be (C, H, W) with C*H*W == in_features={in_features}, "
                f"got {input_shape!r}"
            )
        for size in input_shape:
            check_positive_int(size, "every input_shape entry")
    return MLP(num_classes, in_features, tuple(hidden), activation, input_shape)
