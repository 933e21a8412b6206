"""Residual networks (He et al., CVPR 2016): the basic block and the network around it.

Shared by the CIFAR ResNet-20 (``resnet_cifar.py``) and the ImageNet ResNet-18
(``resnet18.py``), which differ only in their stem and stage widths.
"""

from __future__ import annotations

import torch
from torch import nn

from apb.models.common import init_weights, make_activation


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al., CVPR 2016).

    ``out = act2(bn2(conv2(act1(bn1(conv1(x))))) + shortcut(x))``.

    ``shortcut`` is ``nn.Identity`` when shape is kept, and a 1x1 strided convolution with
    BatchNorm (the paper's option B, also torchvision's ``downsample``) when the block changes
    the channel count or the resolution. Submodules are registered in the order the forward
    pass runs them (the shortcut runs after ``conv2``), which compression code relies on.
    ``mid_channels`` (default ``out_channels``) is the width between the two convolutions,
    which filter pruning narrows independently of the residual stream.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, activation: str,
                 mid_channels: int | None = None):
        super().__init__()
        mid = out_channels if mid_channels is None else mid_channels
        self.conv1 = nn.Conv2d(in_channels, mid, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(mid, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def make_stage(
    in_channels: int, out_channels: int, num_blocks: int, stride: int, activation: str,
    mid_channels: tuple[int, ...] | None = None,
) -> nn.Sequential:
    """``num_blocks`` basic blocks; only the first one may change channels or stride.
    ``mid_channels`` gives each block's inner width (default: ``out_channels``)."""
    mids = mid_channels or (out_channels,) * num_blocks
    blocks = [BasicBlock(in_channels, out_channels, stride, activation, mids[0])]
    blocks += [BasicBlock(out_channels, out_channels, 1, activation, mid) for mid in mids[1:]]
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """Stem, residual stages, global average pool, linear classifier.

    ``forward: fc(flatten(avgpool(layerN(...layer1(maxpool(act(bn1(conv1(x)))))))))``

    ``conv1`` is the stem convolution (the network's first layer) and ``fc`` the classifier
    (its last Linear); ``maxpool`` is ``nn.Identity`` when the stem does not pool. Stages are
    ``layer1, layer2, ...``; each stage after the first halves the resolution.
    ``block_widths`` lists every block's inner width, stage after stage (default: the width of
    its stage); the stem is as wide as the first stage, whose identity shortcuts tie them.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        stem_kernel: int,
        stem_stride: int,
        stem_pool: bool,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        num_classes: int,
        activation: str,
        input_shape: tuple[int, int, int],
        block_widths: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(
            in_channels,
            widths[0],
            stem_kernel,
            stem_stride,
            padding=stem_kernel // 2,
            bias=False,
        )
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = make_activation(activation)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1) if stem_pool else nn.Identity()
        self.stage_names: list[str] = []
        channels = widths[0]
        mids = block_widths or tuple(w for w, d in zip(widths, depths) for _ in range(d))
        for index, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            stage_name = f"layer{index + 1}"
            stride = 1 if index == 0 else 2
            first = sum(depths[:index])
            self.add_module(stage_name, make_stage(channels, width, depth, stride, activation,
                                                   tuple(mids[first:first + depth])))
            self.stage_names.append(stage_name)
            channels = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def width_kwargs(self) -> dict:
        """The builder arguments that give this network's widths (after filter pruning too):
        the residual stream of each stage and the inner width of each block."""
        stages = [getattr(self, name) for name in self.stage_names]
        return {"widths": [stage[0].conv2.out_channels for stage in stages],
                "block_widths": [block.conv1.out_channels for stage in stages for block in stage]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        for stage_name in self.stage_names:
            x = getattr(self, stage_name)(x)
        return self.fc(self.flatten(self.avgpool(x)))
