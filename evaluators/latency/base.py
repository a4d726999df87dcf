"""The latency evaluator interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from evaluators.context import ModelContext
from evaluators.results import LatencyResult
from npas_env.plan import PruningPlan


@runtime_checkable
class LatencyEvaluator(Protocol):
    """Measures or predicts batch-1 latency of pruned models. Batch in, batch out.

    A failure (compile error, device timeout) is returned as ``LatencyResult.failure``; only
    misuse raises.
    """

    name: str

    def config(self) -> dict[str, Any]:
        """JSON-able settings that change results (part of cache keys)."""
        ...

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        ...
