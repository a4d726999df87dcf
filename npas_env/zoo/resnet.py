"""CIFAR ResNets (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels, 6n+2 layers.

Shortcuts are option B: a 1x1 conv + BatchNorm where the shape changes, identity elsewhere, so
every weight that touches the residual stream is a prunable conv (the layers of one stage share a
``coupled_group`` in :func:`npas_env.layers.extract_layers`).
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, then ReLU."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs.

    Args:
        depth: 6n+2 (20, 32, 44, 56, 110).
        num_classes: output logits.
        in_channels: input image channels.
        widths: channels of the three stages.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3,
                 widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 >= 8, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, in_ch = [], widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_ch, width, 2 if (i > 0 and j == 0) else 1))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[2], num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():  # zero-init the last BN of each block: starts as identity
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)


def resnet20(num_classes: int = 10, **kwargs: object) -> CifarResNet:
    """ResNet-20 (0.27 M params, ~41 M MACs at 32x32)."""
    return CifarResNet(20, num_classes, **kwargs)  # type: ignore[arg-type]


def resnet56(num_classes: int = 10, **kwargs: object) -> CifarResNet:
    """ResNet-56 (0.86 M params, ~127 M MACs at 32x32)."""
    return CifarResNet(56, num_classes, **kwargs)  # type: ignore[arg-type]
