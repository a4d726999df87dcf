"""The accuracy evaluator interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from evaluators.context import ModelContext
from evaluators.results import AccuracyResult
from npas_env.plan import PruningPlan


@runtime_checkable
class AccuracyEvaluator(Protocol):
    """Scores plans by the accuracy the pruned model reaches. Batch in, batch out.

    A failure (exception inside, NaN loss, timeout) is returned as ``AccuracyResult.failure``;
    only misuse (a plan for another model) raises.
    """

    name: str

    def config(self) -> dict[str, Any]:
        """JSON-able settings that change results (part of cache keys)."""
        ...

    def evaluate(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[AccuracyResult]:
        ...
