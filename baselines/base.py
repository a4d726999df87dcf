"""What every baseline shares: the ``run`` contract, budget accounting and mask-safe plans.

A baseline is a module with a settings dataclass and a function::

    run(problem: SearchProblem, budget: int, seed: int = 0, settings: Settings | None = None)
        -> Trial | None

Registered baselines are wrapped by ``baselines.registry.make_baseline`` into objects that satisfy
``agents.base.SearchAgent`` (``name`` + ``run(problem, budget)``), so the harness runs agents and
baselines alike. It spends at most ``budget`` true evaluations of ``problem`` (and never more than
``problem.remaining``); plans it has already seen are answered for free by the problem, so
every loop also carries a *proposal* cap to stop when a small space keeps yielding repeats. It
returns the best trial it evaluated (None if it evaluated nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from npas_env.layers import LayerSpec
from npas_env.plan import LayerAction, PruningPlan, Scheme
from npas_env.problem import SearchProblem, Trial
from npas_env.scoring import Score
from npas_env.search_space import SearchSpace

#: (spec, action) pairs of the layers decided so far in layer order.
Decided = list[tuple[LayerSpec, LayerAction]]
#: Chooses the action of one layer given the layers decided before it.
LayerChooser = Callable[[LayerSpec, Decided], LayerAction]


class EvalBudget:
    """Counts the true evaluations one run may still spend and the proposals it made.

    Args:
        problem: the problem being searched (its own budget is respected too).
        budget: true evaluations this run may spend.
        max_proposals: stop after this many proposals (repeats are free, so a search over a
            tiny space could otherwise loop forever). None: 50 x budget + 100.
    """

    def __init__(self, problem: SearchProblem, budget: int, max_proposals: int | None = None) -> None:
        self.problem, self.start = problem, problem.n_evals
        self.budget = int(budget)
        self.max_proposals = max_proposals if max_proposals is not None else 50 * self.budget + 100
        self.proposals = 0

    @property
    def spent(self) -> int:
        return self.problem.n_evals - self.start

    @property
    def left(self) -> int:
        """True evaluations left for this run (0 when done)."""
        room = min(self.budget - self.spent, self.problem.remaining)
        return 0 if self.proposals >= self.max_proposals else max(int(min(room, 1 << 30)), 0)

    def evaluate(self, plans: Sequence[PruningPlan]) -> list[Score | None]:
        """Scores of ``plans`` in order; None where the budget ran out before a new plan."""
        plans = list(plans)
        self.proposals += len(plans)
        new_keys: list[str] = []
        known = {t.plan.key() for t in self.problem.trials}
        for plan in plans:
            if plan.key() not in known and plan.key() not in new_keys:
                new_keys.append(plan.key())
        allowed = set(new_keys[:max(self.budget - self.spent, 0)])
        batch = [p for p in plans if p.key() in known or p.key() in allowed]
        scores = {s.plan.key(): s for s in self.problem.evaluate(batch)}
        return [scores.get(p.key()) for p in plans]

    def evaluate_one(self, plan: PruningPlan) -> Score | None:
        return self.evaluate([plan])[0]


def best_trial(problem: SearchProblem, since: int = 0) -> Trial | None:
    """The best trial among those after evaluation count ``since``."""
    return max(problem.trials[since:], key=lambda t: t.reward, default=None)


def reward_of(score: Score | None, failure: float = -math.inf) -> float:
    """A score's reward, or ``failure`` when it was not evaluated."""
    return failure if score is None else float(score.reward)


def is_allowed(space: SearchSpace, spec: LayerSpec, decided: Decided, action: LayerAction) -> bool:
    """Whether ``action`` (canonical form allowed) passes ``spec``'s mask after ``decided``.

    Decoding canonicalizes some masked-in choices (pattern on a kernel that becomes 1x1 turns
    unstructured, block-punched turns block-based), so an action also counts as allowed when a
    raw action that the mask allows canonicalizes to it.
    """
    raws = [action]
    uncanonical = {Scheme.BLOCK_BASED: Scheme.BLOCK_PUNCHED, Scheme.UNSTRUCTURED: Scheme.PATTERN}
    if action.scheme in uncanonical and not action.is_dense:
        raws.append(LayerAction(uncanonical[action.scheme], action.rate, action.block_size,
                                action.filter_type))
    mask = space.action_mask(spec, decided)
    offsets = np.concatenate([[0], np.cumsum(space.nvec)[:-1]])
    for raw in raws:
        try:
            idx = space.encode(raw)
        except ValueError:
            continue
        if all(mask[offsets[d] + int(idx[d])] for d in range(4)) and space.canonical(spec, raw) == action:
            return True
    return False


def fallback_action(space: SearchSpace, spec: LayerSpec, decided: Decided) -> LayerAction:
    """Dense, or filter pruning at the group's rate when an earlier coupled layer forces it."""
    schemes = space.allowed_schemes(spec, decided)
    if schemes == [Scheme.FILTER] and Scheme.FILTER in space.schemes:
        rates = space.allowed_rates(spec, decided)
        if len(rates) == 1 and rates[0] > 1.0:
            return LayerAction(Scheme.FILTER, rates[0])
    return LayerAction()


def build_plan(problem: SearchProblem, choose: LayerChooser) -> PruningPlan:
    """A mask-respecting plan: ``choose`` per layer, falling back to dense when it is masked.

    Args:
        problem: the search problem (layers and search space).
        choose: ``(spec, decided) -> LayerAction`` for each layer in order.
    """
    space = problem.space
    decided: Decided = []
    for spec in problem.layers:
        action = space.canonical(spec, choose(spec, decided))
        if not is_allowed(space, spec, decided, action):
            action = fallback_action(space, spec, decided)
        decided.append((spec, action))
    return problem.make_plan([a for _, a in decided])


def nearest(values: Sequence[Any], target: float) -> Any:
    """The element of ``values`` closest to ``target`` (first on ties)."""
    return min(values, key=lambda v: abs(float(v) - target))
