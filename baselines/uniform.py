"""Uniform pruning: one scheme and one rate for every layer, swept over the space.

Every (scheme, rate > 1) pair of the search space becomes one plan: each layer takes that scheme
and rate if its mask allows them (block schemes use the allowed block size closest to
``block_size``), and stays dense otherwise (depthwise layers, pattern on non-3x3 kernels, filter
pruning on layers coupled to a fixed input...). Plans are evaluated in order of increasing rate,
so a small budget covers the gentle rates of every scheme first.
"""

from __future__ import annotations

from dataclasses import dataclass

from baselines.base import Decided, EvalBudget, best_trial, build_plan
from npas_env.layers import LayerSpec
from npas_env.plan import BlockSize, LayerAction, PruningPlan, Scheme
from npas_env.problem import SearchProblem, Trial


@dataclass
class UniformSettings:
    """Settings of :func:`run`."""

    schemes: tuple[str, ...] | None = None
    """Schemes to sweep (values of :class:`Scheme`); None: every scheme of the search space."""
    rates: tuple[float, ...] | None = None
    """Rates to sweep; None: every rate > 1 of the search space."""
    block_size: BlockSize = (8, 4)
    """Preferred block size for block schemes (the nearest allowed one is used per layer)."""


def uniform_action(problem: SearchProblem, spec: LayerSpec, scheme: Scheme, rate: float,
                   block_size: BlockSize) -> LayerAction:
    """``scheme`` at ``rate`` for ``spec``, with the allowed block size nearest ``block_size``."""
    block = None
    if scheme.uses_block:
        allowed = problem.space.allowed_block_sizes(spec)
        block = min(allowed, key=lambda b: abs(b[0] - block_size[0]) + abs(b[1] - block_size[1]))
    return LayerAction(scheme, rate, block)


def candidate_plans(problem: SearchProblem, cfg: UniformSettings) -> list[PruningPlan]:
    """One plan per (rate, scheme), rates ascending; duplicates (all-dense) removed."""
    schemes = [Scheme(s) for s in cfg.schemes] if cfg.schemes else list(problem.space.schemes)
    rates = sorted(cfg.rates or [r for r in problem.space.rates if r > 1.0])
    plans: dict[str, PruningPlan] = {}
    for rate in rates:
        for scheme in schemes:
            def choose(spec: LayerSpec, decided: Decided, s: Scheme = scheme, r: float = rate) -> LayerAction:
                return uniform_action(problem, spec, s, r, cfg.block_size)
            plan = build_plan(problem, choose)
            if not all(a.is_dense for a in plan.actions):
                plans.setdefault(plan.key(), plan)
    return list(plans.values())


def run(problem: SearchProblem, budget: int, seed: int = 0,
        settings: UniformSettings | None = None) -> Trial | None:
    """Evaluate the uniform plans in order until the sweep or the budget ends.

    Args:
        problem: the search problem.
        budget: true evaluations this run may spend.
        seed: unused (the sweep is deterministic); kept for the common signature.
        settings: see :class:`UniformSettings`.

    Returns:
        The best trial of this run, or None if nothing was evaluated.
    """
    cfg = settings or UniformSettings()
    start = problem.n_evals
    counter = EvalBudget(problem, budget)
    for plan in candidate_plans(problem, cfg):
        if counter.left <= 0:
            break
        counter.evaluate_one(plan)
    return best_trial(problem, start)
