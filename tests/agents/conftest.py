"""Agent fixtures: a 3-layer net with a restricted space and a known optimum, and TinyNet envs."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from agents.base import allowed_actions
from evaluators.results import AccuracyResult, LatencyResult
from npas_env.env import NPASEnv
from npas_env.plan import FilterType, LayerAction, PruningPlan, Scheme
from npas_env.problem import SearchProblem
from npas_env.search_space import SearchSpace
from tests.conftest import TinyNet

#: The only plan scoring 1.0 (per-layer target actions of ThreeLayerNet).
TARGET = (LayerAction(Scheme.PATTERN, 5.0), LayerAction(Scheme.FILTER, 2.0), LayerAction())
SMALL_SPACE = SearchSpace(filter_types=(FilterType.KEEP,), schemes=(Scheme.UNSTRUCTURED, Scheme.FILTER,
                                                                   Scheme.PATTERN),
                          rates=(1.0, 2.0, 5.0), block_sizes=((0, 0),))


class ThreeLayerNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


class TargetAccuracy:
    """Accuracy = mean per-layer score: 1 for the target action, 0.5 same scheme, 0.1 else."""

    name = "target"

    def config(self) -> dict:
        return {}

    def evaluate(self, context, plans):
        out = []
        for plan in plans:
            per_layer = [1.0 if a == t else 0.5 if a.scheme is t.scheme else 0.1
                         for a, t in zip(plan.actions, TARGET, strict=False)]
            out.append(AccuracyResult(sum(per_layer) / len(per_layer)))
        return out


class FlatLatency:
    name = "flat"

    def config(self) -> dict:
        return {}

    def measure(self, context, plans):
        return [LatencyResult(1.0) for _ in plans]


def make_target_env(**kwargs) -> NPASEnv:
    torch.manual_seed(0)
    return NPASEnv(ThreeLayerNet().eval(), torch.randn(1, 3, 8, 8), accuracy=TargetAccuracy(),
                   latency=FlatLatency(), search_space=SMALL_SPACE, latency_budget_ms=2.0, **kwargs)


def make_tiny_env(**kwargs) -> NPASEnv:
    torch.manual_seed(0)
    return NPASEnv(TinyNet().eval(), torch.randn(1, 3, 16, 16), **kwargs)


def all_plans(problem: SearchProblem) -> list[PruningPlan]:
    """Every plan of a small problem (enumerated through the allowed canonical actions)."""
    options = [allowed_actions(problem.space, spec) for spec in problem.layers]
    return [problem.make_plan(list(c)) for c in itertools.product(*options)]


@pytest.fixture
def target_problem() -> SearchProblem:
    return SearchProblem.from_env(make_target_env())


@pytest.fixture
def tiny_problem() -> SearchProblem:
    return SearchProblem.from_env(make_tiny_env())
