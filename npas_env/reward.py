"""Reward functions: turn evaluator results into a scalar.

A :class:`RewardFn` sees only successful results; failures are turned into the env's
``failure_reward`` before it is called (see :class:`npas_env.scoring.PlanScorer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from npas_env.errors import EvaluatorNotFound, InvalidConfig


@runtime_checkable
class RewardFn(Protocol):
    """Scalar reward from accuracy (fraction) and latency (ms)."""

    def __call__(self, accuracy: float, latency_ms: float, *, budget_ms: float,
                 reference_ms: float) -> float:
        ...


@dataclass(frozen=True)
class NpasReward:
    """NPAS form: ``accuracy - penalty * max(0, latency / budget - 1)``.

    Attributes:
        penalty: lambda, weight of the relative budget overrun.
    """

    penalty: float = 1.0

    def __call__(self, accuracy: float, latency_ms: float, *, budget_ms: float,
                 reference_ms: float) -> float:
        return accuracy - self.penalty * max(0.0, latency_ms / budget_ms - 1.0)


@dataclass(frozen=True)
class WeightedSumReward:
    """TODAES search-based form: ``alpha * accuracy - beta * latency / reference latency``."""

    alpha: float = 1.0
    beta: float = 0.1

    def __call__(self, accuracy: float, latency_ms: float, *, budget_ms: float,
                 reference_ms: float) -> float:
        return self.alpha * accuracy - self.beta * latency_ms / reference_ms


@dataclass(frozen=True)
class MnasReward:
    """MnasNet soft constraint: ``accuracy * (latency / budget) ** w`` (w = -0.07)."""

    w: float = -0.07

    def __call__(self, accuracy: float, latency_ms: float, *, budget_ms: float,
                 reference_ms: float) -> float:
        return accuracy * (latency_ms / budget_ms) ** self.w


REWARDS: dict[str, type] = {"npas": NpasReward, "weighted_sum": WeightedSumReward, "mnas": MnasReward}


def make_reward(spec: str | RewardFn | None) -> RewardFn:
    """A reward object from a name (``npas``, ``weighted_sum``, ``mnas``), an object, or None."""
    if spec is None:
        return NpasReward()
    if isinstance(spec, str):
        if spec not in REWARDS:
            raise EvaluatorNotFound(spec, kind="reward", known=list(REWARDS))
        return REWARDS[spec]()
    if not callable(spec):
        raise InvalidConfig(f"reward must be a name, a RewardFn or None, got {type(spec).__name__}")
    return spec
