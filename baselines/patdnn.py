"""PatDNN-style baseline: pattern pruning on every 3x3 conv, everything else dense, rate sweep.

PatDNN (Niu et al., ASPLOS'20) prunes only 3x3 convolutions, with kernel patterns plus
connectivity pruning; other layers keep their weights. This baseline evaluates that mapping at
every rate > 1 of the search space, in increasing order, and keeps the best. It spends at most
one evaluation per rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from baselines.base import Decided, EvalBudget, best_trial, build_plan
from npas_env.layers import LayerKind, LayerSpec
from npas_env.plan import LayerAction, PruningPlan, Scheme
from npas_env.problem import SearchProblem, Trial


@dataclass
class PatDNNSettings:
    """Settings of :func:`run`."""

    rates: tuple[float, ...] | None = None
    """Rates to sweep; None: every rate > 1 of the search space."""
    include_grouped: bool = False
    """Also prune grouped (non-depthwise) 3x3 convs; PatDNN targets regular convs."""


def pattern_plan(problem: SearchProblem, rate: float, include_grouped: bool = False) -> PruningPlan:
    """Pattern pruning at ``rate`` on every 3x3 conv the masks allow, dense elsewhere."""
    kinds = {LayerKind.CONV, LayerKind.GROUPED} if include_grouped else {LayerKind.CONV}

    def choose(spec: LayerSpec, decided: Decided) -> LayerAction:
        if spec.kind in kinds and spec.kernel_size == (3, 3):
            return LayerAction(Scheme.PATTERN, rate)
        return LayerAction()

    return build_plan(problem, choose)


def run(problem: SearchProblem, budget: int, seed: int = 0,
        settings: PatDNNSettings | None = None) -> Trial | None:
    """Evaluate the pattern mapping at each rate until the sweep or the budget ends.

    Args:
        problem: the search problem.
        budget: true evaluations this run may spend.
        seed: unused (deterministic sweep); kept for the common signature.
        settings: see :class:`PatDNNSettings`.

    Returns:
        The best trial of this run, or None if nothing was evaluated.
    """
    cfg = settings or PatDNNSettings()
    start = problem.n_evals
    counter = EvalBudget(problem, budget)
    for rate in sorted(cfg.rates or [r for r in problem.space.rates if r > 1.0]):
        if counter.left <= 0:
            break
        counter.evaluate_one(pattern_plan(problem, rate, cfg.include_grouped))
    return best_trial(problem, start)
