"""The env's default model: a tiny CNN with a dense 3x3, a depthwise 3x3 and a 1x1 conv."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1,
            groups: int = 1) -> nn.Sequential:
    """Conv2d (no bias) -> BatchNorm2d -> ReLU, padding keeping the size at stride 1."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Four convs + one Linear, ~1.8 M MACs at 32x32.

    Layers: conv3x3(in->w) / conv3x3 stride 2 (w->2w) / depthwise 3x3 stride 2 (2w) /
    pointwise 1x1 (2w->4w) / global average pool / Linear(4w->num_classes).

    Args:
        num_classes: output logits.
        in_channels: input image channels.
        width: channels of the first conv (``w`` above).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(in_channels, w, 3),
            conv_bn(w, 2 * w, 3, stride=2),
            conv_bn(2 * w, 2 * w, 3, stride=2, groups=2 * w),
            conv_bn(2 * w, 4 * w, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
