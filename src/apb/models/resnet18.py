"""ResNet-18 for 224x224 ImageNet images (He et al., "Deep Residual Learning", CVPR 2016)."""

from __future__ import annotations

from collections.abc import Sequence

from apb.models.common import check_activation, check_positive_int, check_widths
from apb.models.registry import register
from apb.models.resnet import ResNet


@register
def resnet18(
    num_classes: int = 1000, in_channels: int = 3, activation: str = "relu",
    widths: Sequence[int] = (64, 128, 256, 512), block_widths: Sequence[int] | None = None,
    input_size: int = 224,
) -> ResNet:
    """ImageNet ResNet-18: 7x7 stride-2 stem conv of 64 channels, 3x3 stride-2 max-pool,
    4 stages of 2 basic blocks (64/128/256/512 channels), global average pool, Linear.

    Same layer shapes as the reference model (11,689,512 parameters for 1000 classes), with
    downsampling shortcuts (1x1 conv + BatchNorm) named ``shortcut``. Input
    ``(in_channels, 224, 224)``; any size of at least 32x32 also runs (``input_size``
    records the side it is used with, as ``input_shape``).

    ``widths`` (the residual stream of each stage) and ``block_widths`` (each block's inner
    width, default its stage's) describe a filter-pruned network.
    """
    return ResNet(
        in_channels=check_positive_int(in_channels, "in_channels"),
        stem_kernel=7,
        stem_stride=2,
        stem_pool=True,
        widths=check_widths(widths, 4, "resnet18 widths"),
        depths=(2, 2, 2, 2),
        num_classes=check_positive_int(num_classes, "num_classes"),
        activation=check_activation(activation),
        block_widths=None if block_widths is None else check_widths(
            block_widths, 8, "resnet18 block_widths"),
        input_shape=(in_channels, check_positive_int(input_size, "input_size"),
                     input_size),
    )
