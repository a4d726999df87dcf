"""Shared fixtures: tiny models and an isolated cache directory (never the user's)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("NPAS_CACHE_DIR", str(tmp_path_factory.mktemp("npas-cache")))
    torch.set_num_threads(1)
    yield
    mp.undo()


class TinyBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


class TinyNet(nn.Module):
    """Stem, two residual blocks (coupled), a depthwise + pointwise pair, a 5x5 conv, Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.block1 = TinyBlock(16)
        self.block2 = TinyBlock(16)
        self.dw = nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.conv5 = nn.Conv2d(32, 32, 5, padding=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        x = torch.relu(self.pw(torch.relu(self.dw(x))))
        x = torch.relu(self.conv5(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@pytest.fixture
def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture
def example_input() -> torch.Tensor:
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
