"""Evaluators wrapped with an :class:`~evaluators.cache.EvaluationCache`.

``CachedAccuracy(evaluator, cache)`` and ``CachedLatency(evaluator, cache)`` speak the same
interface as what they wrap. For a batch they look every plan up, hand only the misses (each
distinct plan once) to the wrapped evaluator in one batch, store what is cacheable, and return
results in input order.

Failure policy: successful results are always stored. A failure is stored only when it is
*deterministic*, i.e. re-running would fail the same way (a NaN loss with a fixed seed, a plan the
backend cannot compile); the evaluator marks such a result with ``details["deterministic"] =
True``. Other failures (timeouts, a lost device, an out-of-memory) are returned but not stored,
so they are retried next time. Pass ``cache_failure=`` to change the rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from evaluators.accuracy.base import AccuracyEvaluator
from evaluators.cache import EvaluationCache, cache_key
from evaluators.context import ModelContext
from evaluators.latency.base import LatencyEvaluator
from evaluators.results import AccuracyResult, LatencyResult
from npas_env.errors import NpasError
from npas_env.plan import PruningPlan

R = TypeVar("R", AccuracyResult, LatencyResult)


def is_deterministic_failure(result: AccuracyResult | LatencyResult) -> bool:
    """The default rule: cache a failure only if its evaluator marked it deterministic."""
    return bool(result.details.get("deterministic", False))


class _CachedEvaluator(Generic[R]):
    """Shared lookup / evaluate-misses / store logic."""

    kind: str
    result_type: type[R]

    def __init__(self, evaluator: Any, cache: EvaluationCache, *,
                 cache_failure: Callable[[R], bool] = is_deterministic_failure) -> None:
        self.evaluator = evaluator
        self.cache = cache
        self.cache_failure = cache_failure
        self.name: str = evaluator.name
        self.true_evaluations = 0
        self.cache_hits = 0

    def config(self) -> dict[str, Any]:
        return self.evaluator.config()

    def _run(self, context: ModelContext, plans: Sequence[PruningPlan],
             compute: Callable[[ModelContext, list[PruningPlan]], list[R]]) -> list[R]:
        cfg = self.config()
        keys = [cache_key(context, p, self.kind, self.name, cfg) for p in plans]
        stored = self.cache.get_many(keys)
        results: dict[str, R] = {}
        for key, (kind, data) in stored.items():
            if kind == self.kind:
                results[key] = self.result_type.from_dict(data)
        self.cache_hits += sum(1 for k in keys if k in results)
        todo: dict[str, PruningPlan] = {}
        for key, plan in zip(keys, plans, strict=True):
            if key not in results and key not in todo:
                todo[key] = plan
        if todo:
            fresh = compute(context, list(todo.values()))
            if len(fresh) != len(todo):
                raise NpasError(f"evaluator {self.name!r} returned {len(fresh)} results for {len(todo)} plans")
            self.true_evaluations += len(todo)
            results.update(zip(todo, fresh, strict=True))
            keep = [(k, self.kind, r.to_dict()) for k, r in zip(todo, fresh, strict=True)
                    if r.ok or self.cache_failure(r)]
            self.cache.put_many(keep)
        return [results[k] for k in keys]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.evaluator!r}, {self.cache!r})"


class CachedAccuracy(_CachedEvaluator[AccuracyResult]):
    """An accuracy evaluator whose results persist in an :class:`EvaluationCache`.

    Args:
        evaluator: any :class:`AccuracyEvaluator`.
        cache: the store (may be shared with other wrappers and processes).
        cache_failure: which failed results to store (default: deterministic ones).

    Attributes:
        true_evaluations: plans actually handed to ``evaluator``.
        cache_hits: plans answered from the cache.
    """

    kind = "accuracy"
    result_type = AccuracyResult

    def __init__(self, evaluator: AccuracyEvaluator, cache: EvaluationCache, *,
                 cache_failure: Callable[[AccuracyResult], bool] = is_deterministic_failure) -> None:
        super().__init__(evaluator, cache, cache_failure=cache_failure)

    def evaluate(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[AccuracyResult]:
        """Cached :meth:`AccuracyEvaluator.evaluate` (batch in = batch out, same order)."""
        return self._run(context, plans, self.evaluator.evaluate)


class CachedLatency(_CachedEvaluator[LatencyResult]):
    """A latency evaluator whose results persist in an :class:`EvaluationCache`.

    Args:
        evaluator: any :class:`LatencyEvaluator`.
        cache: the store (may be shared with other wrappers and processes).
        cache_failure: which failed results to store (default: deterministic ones).

    Attributes:
        true_evaluations: plans actually handed to ``evaluator``.
        cache_hits: plans answered from the cache.
    """

    kind = "latency"
    result_type = LatencyResult

    def __init__(self, evaluator: LatencyEvaluator, cache: EvaluationCache, *,
                 cache_failure: Callable[[LatencyResult], bool] = is_deterministic_failure) -> None:
        super().__init__(evaluator, cache, cache_failure=cache_failure)

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        """Cached :meth:`LatencyEvaluator.measure` (batch in = batch out, same order)."""
        return self._run(context, plans, self.evaluator.measure)
