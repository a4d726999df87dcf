"""MobileNetV2 for 32x32 inputs: stride-1 stem, inverted residuals with depthwise 3x3."""

from __future__ import annotations

import torch
from torch import nn

#: (expansion t, output channels c, repeats n, first stride s); CIFAR variant (two stride-1 cuts).
MBV2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


def _make_divisible(value: float, divisor: int = 8) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


class InvertedResidual(nn.Module):
    """1x1 expand (skipped if t == 1) -> depthwise 3x3 -> 1x1 project (linear), + identity."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                   nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:  # fixed at construction: traceable
            return x + self.conv(x)
        return self.conv(x)


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) adapted to 32x32: the stem and stage 2 use stride 1.

    Args:
        num_classes: output logits.
        in_channels: input image channels.
        width_mult: scales every width (rounded to multiples of 8).
        last_channels: width of the final 1x1 conv before pooling (scaled if width_mult > 1).
        cfg: the inverted-residual settings (t, c, n, s).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0,
                 last_channels: int = 1280,
                 cfg: tuple[tuple[int, int, int, int], ...] = MBV2_CFG) -> None:
        super().__init__()
        ch = _make_divisible(32 * width_mult)
        last = _make_divisible(last_channels * max(1.0, width_mult))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(ch), nn.ReLU6(inplace=True)]
        for t, c, n, s in cfg:
            out = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(ch, out, s if i == 0 else 1, t))
                ch = out
        layers += [nn.Conv2d(ch, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def mobilenetv2(num_classes: int = 10, **kwargs: object) -> CifarMobileNetV2:
    """MobileNetV2, CIFAR variant (2.2 M params, ~88 M MACs at 32x32 with width_mult=1)."""
    return CifarMobileNetV2(num_classes, **kwargs)  # type: ignore[arg-type]
