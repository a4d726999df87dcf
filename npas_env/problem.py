"""A search problem over whole plans: the common ground of agents, baselines and benchmarks.

``SearchProblem`` wraps an env's scorer so a search method can propose whole plans (ask/tell
style) while every call to the real evaluators is counted and charged; a plan seen before is
answered from memory for free.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from npas_env.env import NPASEnv
from npas_env.errors import InvalidConfig, InvalidPlan
from npas_env.layers import LayerSpec
from npas_env.plan import LayerAction, PruningPlan
from npas_env.scoring import PlanScorer, Score
from npas_env.search_space import SearchSpace, sample_masked_action


@dataclass(frozen=True)
class Trial:
    """One true evaluation: when it happened (evaluation count) and what it scored."""

    n_evals: int
    reward: float
    plan: PruningPlan
    accuracy: float | None
    latency_ms: float | None
    error: str | None
    seconds: float


@dataclass
class SearchProblem:
    """Plans in, scores out, with a budget of true evaluations.

    Attributes:
        scorer: the env's plan scorer (evaluators + reward).
        budget: maximum number of true evaluations (None = unlimited).
        progress: an optional progress bar (``tqdm``-like ``update(n)``) advanced per true
            evaluation.
    """

    scorer: PlanScorer
    budget: int | None = None
    trials: list[Trial] = field(default_factory=list)
    progress: Any = None
    _seen: dict[str, Score] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: NPASEnv, budget: int | None = None) -> SearchProblem:
        if budget is not None and (not isinstance(budget, int) or budget <= 0):
            raise InvalidConfig(f"budget must be a positive number of evaluations, got {budget!r}")
        return cls(cast(NPASEnv, env.unwrapped).scorer, budget)  # env may be wrapped

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        return self.scorer.context.layers

    @property
    def space(self) -> SearchSpace:
        return self.scorer.context.search_space

    @property
    def n_evals(self) -> int:
        return len(self.trials)

    @property
    def remaining(self) -> int | float:
        return math.inf if self.budget is None else self.budget - self.n_evals

    @property
    def best(self) -> Trial | None:
        return max(self.trials, key=lambda t: t.reward, default=None)

    def evaluate(self, plans: Sequence[PruningPlan]) -> list[Score]:
        """Score plans; new ones cost one true evaluation each, repeats are free.

        Plans beyond the remaining budget are not evaluated (fewer scores come back).
        """
        new: list[PruningPlan] = []
        for plan in plans:
            if plan.key() not in self._seen and plan.key() not in {p.key() for p in new}:
                if len(new) >= self.remaining:
                    break
                new.append(plan)
        if new:
            start = time.perf_counter()
            scores = self.scorer.score(new)
            per_plan = (time.perf_counter() - start) / len(new)
            for plan, score in zip(new, scores):
                self._seen[plan.key()] = score
                self.trials.append(Trial(self.n_evals + 1, score.reward, plan, score.accuracy.accuracy,
                                         score.latency.latency_ms, score.error, per_plan))
            if self.progress is not None:
                self.progress.update(len(new))
        return [self._seen[p.key()] for p in plans if p.key() in self._seen]

    def make_plan(self, actions: Sequence[LayerAction]) -> PruningPlan:
        """A plan of this model from per-layer actions (canonicalized)."""
        if len(actions) != len(self.layers):
            raise InvalidPlan(f"need {len(self.layers)} actions, got {len(actions)}")
        canonical = tuple(self.space.canonical(s, a) for s, a in zip(self.layers, actions))
        ctx = self.scorer.context
        return PruningPlan(canonical, ctx.layer_names, ctx.arch_fingerprint, {"model": ctx.name})

    def decode(self, vectors: np.ndarray) -> PruningPlan:
        """A plan from an index matrix of shape (layers, 4), masks enforced layer by layer.

        Masked choices are repaired to the nearest allowed index (as the env does).
        """
        decided: list[tuple[LayerSpec, LayerAction]] = []
        nvec = self.space.nvec
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        for spec, vec in zip(self.layers, np.asarray(vectors, dtype=np.int64)):
            mask = self.space.action_mask(spec, decided)
            fixed = []
            for dim, value in enumerate(vec):
                allowed = np.flatnonzero(mask[offsets[dim]:offsets[dim] + nvec[dim]])
                fixed.append(int(value) if value in allowed else int(allowed[np.argmin(np.abs(allowed - value))]))
            decided.append((spec, self.space.decode(spec, fixed, check=False)))
        return self.make_plan([a for _, a in decided])

    def encode(self, plan: PruningPlan) -> np.ndarray:
        """Index matrix (layers, 4) of a plan (inverse of :meth:`decode` on canonical plans)."""
        return np.stack([self.space.encode(a) for a in plan.actions])

    def random_plan(self, rng: np.random.Generator) -> PruningPlan:
        """A uniformly random plan that respects every layer's mask."""
        decided: list[tuple[LayerSpec, LayerAction]] = []
        for spec in self.layers:
            vec = sample_masked_action(self.space.nvec, self.space.action_mask(spec, decided), rng)
            decided.append((spec, self.space.decode(spec, vec, decided)))
        return self.make_plan([a for _, a in decided])
