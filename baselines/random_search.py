"""Random search: uniformly random mask-respecting plans until the budget is spent.

The simplest baseline and, in NAS, a strong one (Li & Talwalkar 2019). Each proposal samples
every layer's ``[filter_type, scheme, rate, block_size]`` uniformly among its allowed choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from baselines.base import EvalBudget, best_trial
from npas_env.problem import SearchProblem, Trial


@dataclass
class RandomSearchSettings:
    """Settings of :func:`run`."""

    batch_size: int = 1
    """Plans proposed (and evaluated as one batch) per iteration."""
    max_proposals: int | None = None
    """Stop after this many proposals even if budget is left (None: 50 x budget + 100)."""


def run(problem: SearchProblem, budget: int, seed: int = 0,
        settings: RandomSearchSettings | None = None) -> Trial | None:
    """Evaluate random plans until ``budget`` true evaluations are spent.

    Args:
        problem: the search problem; repeats are free, new plans cost one evaluation.
        budget: true evaluations this run may spend.
        seed: seeds the plan sampler.
        settings: see :class:`RandomSearchSettings`.

    Returns:
        The best trial of this run, or None if nothing was evaluated.
    """
    cfg = settings or RandomSearchSettings()
    rng = np.random.default_rng(seed)
    start = problem.n_evals
    counter = EvalBudget(problem, budget, cfg.max_proposals)
    while counter.left > 0:
        plans = [problem.random_plan(rng) for _ in range(min(cfg.batch_size, counter.left))]
        counter.evaluate(plans)
    return best_trial(problem, start)
