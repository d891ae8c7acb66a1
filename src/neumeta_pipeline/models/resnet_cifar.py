"""ResNet-20/32/44/56 for 32x32 images (He et al.'s CIFAR family).

Every residual block has its own inner width (``conv1``'s output, ``conv2``'s input), which is
what NeuMeta morphs: the residual stream keeps its 16/32/64 channels so blocks stay addable.
Shortcuts that change shape use a 1x1 convolution with BatchNorm.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

STAGE_WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, mid: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, mid, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """``depth`` = 6n + 2. ``block_widths`` maps block names such as ``"layer3.2"`` to an inner width."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        block_widths: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        block_widths = dict(block_widths or {})
        self.conv1 = nn.Conv2d(3, STAGE_WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STAGE_WIDTHS[0])
        self.relu = nn.ReLU()
        in_planes = STAGE_WIDTHS[0]
        for stage, planes in enumerate(STAGE_WIDTHS, start=1):
            blocks = []
            for index in range(blocks_per_stage):
                name = f"layer{stage}.{index}"
                stride = 2 if stage > 1 and index == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, block_widths.pop(name, planes)))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        if block_widths:
            raise ValueError(f"unknown block names in block_widths: {sorted(block_widths)}")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))
