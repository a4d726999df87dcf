"""The one interface every search method follows, and the glue that charges env episodes to a problem.

A search method (agent or baseline) is anything with ``name`` and ``run(problem, budget)``; it
spends at most ``budget`` true evaluations of ``problem`` (a :class:`SearchProblem`) and returns
the best :class:`Trial` it saw. The benchmark harness reads ``problem.trials`` for the
best-reward-versus-evaluations curve, so every method is compared on the same currency.

Env-based agents (SB3) run an :class:`NPASEnv` whose scorer is replaced by a
:class:`ProblemScorer`: every finished episode is evaluated through ``problem.evaluate`` and so
counted, cached (a repeated plan is free) and charged exactly like a whole-plan method.
"""

from __future__ import annotations

import functools
import itertools
import sys
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import HumanOutputFormat, Logger

from evaluators.results import AccuracyResult, LatencyResult
from npas_env.env import NPASEnv
from npas_env.errors import InvalidConfig
from npas_env.layers import LayerSpec
from npas_env.plan import LayerAction, PruningPlan
from npas_env.problem import SearchProblem, Trial
from npas_env.scoring import Score
from npas_env.search_space import SearchSpace

BUDGET_EXHAUSTED = "evaluation budget exhausted"


def folderless_logger(model: BaseAlgorithm) -> None:
    """Without a TensorBoard folder, log ``model`` to stdout (``verbose >= 1``) or nowhere, and
    create no folder: SB3's own logger would make an empty ``/tmp/SB3-<date>`` directory on
    every ``learn()``. A model with a TensorBoard folder or a logger of its own keeps it."""
    if model.tensorboard_log is None and not model._custom_logger:  # SB3 keeps the flag private
        model.set_logger(Logger(None, [HumanOutputFormat(sys.stdout)] if model.verbose >= 1 else []))


@runtime_checkable
class SearchAgent(Protocol):
    """A search method: spend at most ``budget`` true evaluations, return the best trial."""

    name: str

    def run(self, problem: SearchProblem, budget: int) -> Trial | None:
        """Search ``problem`` with at most ``budget`` new true evaluations (``problem.n_evals``)."""
        ...


def check_budget(problem: SearchProblem, budget: int) -> int:
    """The evaluation count at which a run of ``budget`` must stop.

    Raises:
        InvalidConfig: ``budget`` is not a positive int.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise InvalidConfig(f"budget must be a positive number of true evaluations, got {budget!r}")
    limit = problem.n_evals + budget
    return int(min(limit, problem.n_evals + problem.remaining))


def allowed_actions(space: SearchSpace, spec: LayerSpec,
                    decided: Sequence[tuple[LayerSpec, LayerAction]] = ()) -> tuple[LayerAction, ...]:
    """Distinct canonical actions reachable from the allowed index vectors of ``spec``'s mask.

    Equivalent index vectors are merged (every scheme at rate 1.0 is "dense"; block-punched on a
    kernel turned 1x1 is block-based...), in first-seen order.
    """
    return _distinct_actions(space, spec, space.action_mask(spec, decided).tobytes())


@functools.lru_cache(maxsize=4096)
def _distinct_actions(space: SearchSpace, spec: LayerSpec, mask_bytes: bytes) -> tuple[LayerAction, ...]:
    mask = np.frombuffer(mask_bytes, dtype=bool)
    bounds = np.concatenate([[0], np.cumsum(space.nvec)])
    per_dim = [np.flatnonzero(mask[bounds[d]:bounds[d + 1]]) for d in range(len(space.nvec))]
    out: dict[LayerAction, None] = {}
    for f, s, r, b in itertools.product(*per_dim):
        action = LayerAction(scheme=space.schemes[s], rate=space.rates[r], filter_type=space.filter_types[f],
                             block_size=space.block_sizes[b])
        out[space.canonical(spec, action)] = None
    return tuple(out)


class ProblemScorer:
    """Stands in for an env's ``PlanScorer`` and routes scoring through ``problem.evaluate``.

    Args:
        problem: the problem whose budget and cache every episode is charged to.
        limit: evaluation count after which plans are no longer evaluated; a plan arriving then
            gets ``failure_reward`` with ``error = "evaluation budget exhausted"``.
    """

    def __init__(self, problem: SearchProblem, limit: int | None = None) -> None:
        self.problem, self.limit = problem, limit
        self.inner = problem.scorer

    @property
    def context(self) -> Any:
        return self.inner.context

    @property
    def reference_ms(self) -> float:
        return self.inner.reference_ms

    @property
    def budget_ms(self) -> float:
        return self.inner.budget_ms

    @property
    def exhausted(self) -> bool:
        return self.problem.remaining <= 0 or (self.limit is not None and self.problem.n_evals >= self.limit)

    def score(self, plans: Sequence[PruningPlan]) -> list[Score]:
        """Score plans through the problem; plans past the budget come back as failures."""
        out: list[Score] = []
        for plan in plans:
            # evaluators may draw from torch's global RNG (e.g. building replacement modules) only
            # on cache misses; isolate it so the agent's sampling does not depend on cache state
            with torch.random.fork_rng(devices=[]):
                got = [] if self.exhausted and not self._is_seen(plan) else self.problem.evaluate([plan])
            out.append(got[0] if got else self._refused(plan))
        return out

    def _is_seen(self, plan: PruningPlan) -> bool:
        return any(t.plan.key() == plan.key() for t in reversed(self.problem.trials))

    def _refused(self, plan: PruningPlan) -> Score:
        return Score(self.inner.failure_reward, plan, AccuracyResult.failure(BUDGET_EXHAUSTED),
                     LatencyResult.failure(BUDGET_EXHAUSTED), self.budget_ms, self.reference_ms)


def make_problem_env(problem: SearchProblem, limit: int | None = None, **env_kwargs: Any) -> NPASEnv:
    """An :class:`NPASEnv` over ``problem``'s model whose episodes are charged to ``problem``.

    Args:
        problem: the search problem (model, evaluators, reward, budget).
        limit: evaluation count at which episodes stop being evaluated (see :class:`ProblemScorer`).
        **env_kwargs: extra :class:`NPASEnv` arguments (``masked_action``, ``leaf_modules``...).

    Raises:
        InvalidConfig: the rebuilt env does not see the problem's layers (pass ``leaf_modules``).
    """
    scorer, ctx = problem.scorer, problem.scorer.context
    env = NPASEnv(ctx.model, ctx.example_input, accuracy=scorer.accuracy, latency=scorer.latency,
                  reward=scorer.reward, search_space=ctx.search_space,
                  latency_budget_ms=scorer.latency_budget_ms, failure_reward=scorer.failure_reward,
                  model_name=ctx.name, **env_kwargs)
    if env.context.layer_names != ctx.layer_names:
        raise InvalidConfig(f"the env rebuilt from the problem has layers {list(env.context.layer_names)[:3]}..., "
                            f"the problem {list(ctx.layer_names)[:3]}...; pass the same leaf_modules")
    env.scorer = ProblemScorer(problem, limit)  # type: ignore[assignment]
    return env


class BudgetCallback(BaseCallback):
    """Stops SB3 training once the problem reaches ``limit`` true evaluations; logs ``search/*``.

    Args:
        problem: the problem episodes are charged to.
        limit: evaluation count at which training stops.
    """

    def __init__(self, problem: SearchProblem, limit: int, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.problem, self.limit = problem, limit

    def _on_step(self) -> bool:
        if any(self.locals.get("dones", [])):
            best = self.problem.best
            self.logger.record("search/true_evals", self.problem.n_evals)
            if best is not None:
                self.logger.record("search/best_reward", best.reward)
        return self.problem.n_evals < self.limit and self.problem.remaining > 0
