"""Tiny model and data shared by the accuracy-evaluator tests (fast on one CPU thread)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

import npas_env  # noqa: F401  (import before evaluators: avoids an env <-> context import cycle)
from evaluators.context import ModelContext
from npas_env.data import DataSplits, load_digits
from npas_env.layers import extract_layers
from npas_env.plan import LayerAction, PruningPlan, Scheme

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """conv3x3(1->8)-BN-ReLU, conv3x3(8->8)-BN-ReLU, conv1x1(8->8), global pool, linear(8->10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        return self.fc(x.mean(dim=(2, 3)))


def tiny_splits(n_train: int = 192, n_val: int = 96) -> DataSplits:
    full = load_digits(size=8, channels=1)
    return DataSplits.from_datasets(Subset(full.train, range(n_train)), Subset(full.val, range(n_val)),
                                    Subset(full.test, range(64)), num_classes=10,
                                    input_shape=(1, 8, 8), name="digits-tiny")


@pytest.fixture(scope="session")
def data() -> DataSplits:
    return tiny_splits()


@pytest.fixture(scope="session")
def context(data: DataSplits) -> ModelContext:
    from npas_env.data import make_loader
    from npas_env.zoo.train import make_sgd, train_epochs

    torch.manual_seed(0)
    model = TinyNet()
    train_epochs(model, make_loader(data.train, 32, shuffle=True), epochs=3,
                 optimizer=make_sgd(model, 0.05))
    model.eval()
    x = torch.zeros(1, 1, 8, 8)
    return ModelContext(model, x, tuple(extract_layers(model, x)), name="tiny")


@pytest.fixture(scope="session")
def make_plan():  # noqa: ANN201 - returns the helper below
    return uniform_plan


def uniform_plan(ctx: ModelContext, scheme: Scheme = Scheme.UNSTRUCTURED, rate: float = 2.0,
                 block_size: tuple[int, int] | None = None) -> PruningPlan:
    """The same action on every layer (pattern falls back to unstructured on non-3x3 layers)."""
    actions = []
    for spec in ctx.layers:
        s = scheme
        if scheme is Scheme.PATTERN and spec.kernel_size != (3, 3):
            s = Scheme.UNSTRUCTURED
        if scheme is Scheme.BLOCK_PUNCHED and not spec.is_conv:
            s = Scheme.BLOCK_BASED
        actions.append(LayerAction(s, rate, block_size if s.uses_block else None))
    return PruningPlan(tuple(actions), ctx.layer_names, ctx.arch_fingerprint)
