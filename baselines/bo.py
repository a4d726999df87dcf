"""Bayesian optimization over whole plans with scikit-optimize (ask/tell).

The plan is flattened into one categorical dimension per (layer, action dimension) whose
choices are the indices that layer's mask allows; dimensions with a single allowed choice are
fixed and left out of the space. A point decodes through ``SearchProblem.decode``, which repairs
choices masked by earlier layers (coupled filter pruning). scikit-optimize minimizes, so it is
told ``-reward``. With ``batch_size > 1`` batches come from the constant-liar strategy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from baselines.base import EvalBudget, best_trial
from npas_env.problem import SearchProblem, Trial


@dataclass
class BOSettings:
    """Settings of :func:`run`."""

    n_initial_points: int = 10
    """Random points evaluated before the surrogate is used."""
    base_estimator: str = "GP"
    """scikit-optimize surrogate: "GP", "RF", "ET" or "GBRT"."""
    acq_func: str = "gp_hedge"
    """Acquisition: "EI", "PI", "LCB" or "gp_hedge" (a portfolio of the three)."""
    batch_size: int = 1
    """Points per ask; > 1 uses the constant-liar strategy ``liar``."""
    liar: str = "cl_min"
    """Constant-liar strategy for batches: "cl_min", "cl_mean" or "cl_max"."""
    n_points: int = 2000
    """Random candidates the acquisition is optimized over per ask."""
    max_proposals: int | None = None
    """Stop after this many proposals even if budget is left (None: 50 x budget + 100)."""


class PlanSpace:
    """Maps skopt points (lists of category indices) to plans of a problem."""

    def __init__(self, problem: SearchProblem) -> None:
        self.problem = problem
        nvec = problem.space.nvec
        offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
        self.base = np.zeros((len(problem.layers), 4), dtype=np.int64)
        self.free: list[tuple[int, int, list[int]]] = []
        for i, spec in enumerate(problem.layers):
            mask = problem.space.action_mask(spec)
            for dim in range(4):
                allowed = np.flatnonzero(mask[offsets[dim]:offsets[dim] + nvec[dim]]).tolist()
                self.base[i, dim] = allowed[0]
                if len(allowed) > 1:
                    self.free.append((i, dim, allowed))

    def dimensions(self) -> list:
        from skopt.space import Categorical

        return [Categorical(allowed, name=f"l{i}d{dim}") for i, dim, allowed in self.free]

    def to_plan(self, point: list[int]):
        matrix = self.base.copy()
        for (i, dim, _), value in zip(self.free, point, strict=True):
            matrix[i, dim] = int(value)
        return self.problem.decode(matrix)


def run(problem: SearchProblem, budget: int, seed: int = 0, settings: BOSettings | None = None) -> Trial | None:
    """Ask/tell Bayesian optimization until ``budget`` true evaluations are spent.

    Args:
        problem: the search problem.
        budget: true evaluations this run may spend.
        seed: seeds scikit-optimize.
        settings: see :class:`BOSettings`.

    Returns:
        The best trial of this run, or None if nothing was evaluated.
    """
    from skopt import Optimizer

    cfg = settings or BOSettings()
    start = problem.n_evals
    counter = EvalBudget(problem, budget, cfg.max_proposals)
    space = PlanSpace(problem)
    if not space.free:  # nothing to choose: the only plan is the dense one
        counter.evaluate_one(space.to_plan([]))
        return best_trial(problem, start)
    opt = Optimizer(space.dimensions(), base_estimator=cfg.base_estimator, acq_func=cfg.acq_func,
                    n_initial_points=cfg.n_initial_points, random_state=seed,
                    acq_optimizer="sampling", acq_optimizer_kwargs={"n_points": cfg.n_points})
    while counter.left > 0:
        n = min(cfg.batch_size, counter.left)
        # skopt is untyped; ask() returns one point (a list of categorical values) or a list of them
        points = cast("list[list[int]]", opt.ask(n_points=n, strategy=cfg.liar) if n > 1 else [opt.ask()])
        scores = counter.evaluate([space.to_plan(p) for p in points])
        told = [(p, -float(s.reward)) for p, s in zip(points, scores, strict=True) if s is not None]
        if not told:
            break
        opt.tell([p for p, _ in told], [y for _, y in told])
    return best_trial(problem, start)
