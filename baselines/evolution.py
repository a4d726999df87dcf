"""Regularized (aging) evolution (Real et al., AAAI 2019) over whole plans.

Keep a population of the ``population_size`` most recent plans. Each cycle samples
``sample_size`` of them at random, mutates the best of the sample in one layer (one of its four
action indices is redrawn among the allowed ones; later masks are repaired by
``SearchProblem.decode``), evaluates the child, adds it and removes the *oldest* member. A
repeated child is scored for free and still ages the population.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from baselines.base import EvalBudget, best_trial, reward_of
from npas_env.plan import PruningPlan
from npas_env.problem import SearchProblem, Trial


@dataclass
class EvolutionSettings:
    """Settings of :func:`run`."""

    population_size: int = 20
    """Plans kept alive (the oldest one dies each cycle)."""
    sample_size: int = 5
    """Tournament size: the parent is the best of this many random members."""
    max_proposals: int | None = None
    """Stop after this many proposals even if budget is left (None: 50 x budget + 100)."""


def mutate(problem: SearchProblem, plan: PruningPlan, rng: np.random.Generator) -> PruningPlan:
    """``plan`` with one action index of one layer redrawn among that layer's allowed ones."""
    matrix = problem.encode(plan)
    nvec = problem.space.nvec
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
    decided = list(zip(problem.layers, plan.actions, strict=True))
    for _ in range(16):  # find a (layer, dim) with an alternative; give up on frozen plans
        layer = int(rng.integers(len(problem.layers)))
        dim = int(rng.integers(4))
        mask = problem.space.action_mask(problem.layers[layer], decided[:layer])
        allowed = np.flatnonzero(mask[offsets[dim]:offsets[dim] + nvec[dim]])
        options = allowed[allowed != matrix[layer, dim]]
        if len(options):
            matrix[layer, dim] = int(rng.choice(options))
            break
    return problem.decode(matrix)


def run(problem: SearchProblem, budget: int, seed: int = 0,
        settings: EvolutionSettings | None = None) -> Trial | None:
    """Regularized evolution until ``budget`` true evaluations are spent.

    Args:
        problem: the search problem.
        budget: true evaluations this run may spend.
        seed: seeds sampling and mutation.
        settings: see :class:`EvolutionSettings`.

    Returns:
        The best trial of this run, or None if nothing was evaluated.
    """
    cfg = settings or EvolutionSettings()
    rng = np.random.default_rng(seed)
    start = problem.n_evals
    counter = EvalBudget(problem, budget, cfg.max_proposals)
    population: deque[tuple[PruningPlan, float]] = deque()
    while counter.left > 0 and len(population) < cfg.population_size:
        plan = problem.random_plan(rng)
        score = counter.evaluate_one(plan)
        if score is not None:
            population.append((plan, reward_of(score)))
    while counter.left > 0 and population:
        picks = rng.choice(len(population), size=min(cfg.sample_size, len(population)), replace=False)
        parent = max((population[int(i)] for i in picks), key=lambda m: m[1])[0]
        child = mutate(problem, parent, rng)
        score = counter.evaluate_one(child)
        if score is None:
            break
        population.append((child, reward_of(score)))
        population.popleft()
    return best_trial(problem, start)
