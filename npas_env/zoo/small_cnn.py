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
    """Four convs + one Linear, ~0.56 M MACs at 32x32 (width 16).

    Layers: conv3x3 stride 2 (in->w) / conv3x3 stride 2 (w->2w) / depthwise 3x3 (2w) /
    pointwise 1x1 (2w->4w) / average pool to ``pool_size`` x ``pool_size`` /
    Linear(4w * pool_size^2 -> num_classes). Pooling to 2x2 (not 1x1) keeps coarse layout, which
    the small receptive field needs (digits: ~98% test accuracy in 10 epochs).

    Args:
        num_classes: output logits.
        in_channels: input image channels.
        width: channels of the first conv (``w`` above).
        pool_size: side of the pooled feature map fed to the Linear.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16,
                 pool_size: int = 2) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_bn(in_channels, w, 3, stride=2),
            conv_bn(w, 2 * w, 3, stride=2),
            conv_bn(2 * w, 2 * w, 3, groups=2 * w),
            conv_bn(2 * w, 4 * w, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Linear(4 * w * pool_size * pool_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
