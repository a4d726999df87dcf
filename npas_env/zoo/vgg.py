"""VGG-16 for 32x32 inputs (BatchNorm after every conv, one Linear classifier by default)."""

from __future__ import annotations

import torch
from torch import nn

#: Channels per conv; "M" is a 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG with BN for CIFAR: five pooled stages down to 1x1, then the classifier.

    Args:
        num_classes: output logits.
        in_channels: input image channels.
        cfg: conv widths and ``"M"`` pools (default VGG-16: 13 convs).
        width_mult: scales every conv width (e.g. 0.25 for a fast variant).
        hidden: if > 0, a hidden Linear(+ReLU) of this size before the output Linear.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3,
                 cfg: tuple[int | str, ...] = VGG16_CFG, width_mult: float = 1.0,
                 hidden: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, int(round(int(item) * width_mult)))
            layers += [nn.Conv2d(ch, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            ch = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = []
        if hidden > 0:
            head += [nn.Linear(ch, hidden), nn.ReLU(inplace=True)]
            ch = hidden
        head.append(nn.Linear(ch, num_classes))
        self.classifier = nn.Sequential(*head)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16(num_classes: int = 10, **kwargs: object) -> CifarVGG:
    """VGG-16-BN, CIFAR variant (14.7 M params, ~313 M MACs at 32x32 with width_mult=1)."""
    return CifarVGG(num_classes, **kwargs)  # type: ignore[arg-type]
