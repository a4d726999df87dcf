"""Plan scoring: evaluators in, reward and info out, faults turned into defined results."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from evaluators.context import ModelContext
from evaluators.registry import make_accuracy, make_latency
from evaluators.results import AccuracyResult, LatencyResult
from npas_env.errors import InvalidConfig, InvalidPlan, NpasError
from npas_env.plan import PruningPlan
from npas_env.reward import RewardFn, make_reward


@dataclass(frozen=True)
class Score:
    """What one plan scored: the reward and everything it came from."""

    reward: float
    plan: PruningPlan
    accuracy: AccuracyResult
    latency: LatencyResult
    budget_ms: float
    reference_ms: float

    @property
    def error(self) -> str | None:
        errors = [f"accuracy: {self.accuracy.error}" if self.accuracy.error else None,
                  f"latency: {self.latency.error}" if self.latency.error else None]
        return "; ".join(e for e in errors if e) or None

    def info(self) -> dict[str, Any]:
        """The ``info`` dict an env returns at the end of an episode."""
        return {"plan": self.plan, "accuracy": self.accuracy.accuracy,
                "latency_ms": self.latency.latency_ms, "budget_ms": self.budget_ms,
                "reference_latency_ms": self.reference_ms, "error": self.error,
                "accuracy_result": self.accuracy, "latency_result": self.latency}


def resolve(kind: str, spec: Any, kwargs: dict[str, Any] | None) -> Any:
    """An evaluator object from a registered name (with kwargs) or an object."""
    if isinstance(spec, str):
        return (make_accuracy if kind == "accuracy" else make_latency)(spec, **(kwargs or {}))
    method = "evaluate" if kind == "accuracy" else "measure"
    if not callable(getattr(spec, method, None)):
        raise InvalidConfig(f"{kind} must be a registered name or an object with .{method}(context, "
                            f"plans), got {type(spec).__name__}")
    return spec


_R = TypeVar("_R", AccuracyResult, LatencyResult)


def _guard(call: Callable[[], Sequence[Any]], n: int, result_type: type[_R]) -> list[_R]:
    """Run a batched evaluator call; turn every fault into ``n`` failure results."""
    try:
        results = list(call())
    except (InvalidPlan, InvalidConfig):
        raise
    except Exception as exc:  # an evaluator fault must not kill the search
        return [result_type.failure(f"{type(exc).__name__}: {exc}") for _ in range(n)]
    if len(results) != n:
        return [result_type.failure(f"evaluator returned {len(results)} results for {n} plans")] * n
    return [r if isinstance(r, result_type)
            else result_type.failure(f"evaluator returned {type(r).__name__}, not {result_type.__name__}")
            for r in results]


@dataclass
class PlanScorer:
    """Scores whole plans for one model with an accuracy and a latency evaluator.

    Attributes:
        context: the model being pruned.
        accuracy, latency: evaluator objects.
        reward: the reward function.
        latency_budget_ms: budget; None means half of the dense model's latency.
        failure_reward: reward of a plan whose evaluation failed.
        overlap: measure latency in a second thread while accuracy is evaluated (as the papers
            overlap on-device measurement with training); give the two different cores.
    """

    context: ModelContext
    accuracy: Any
    latency: Any
    reward: RewardFn = field(default_factory=lambda: make_reward(None))
    latency_budget_ms: float | None = None
    failure_reward: float = -1.0
    overlap: bool = False
    _reference: LatencyResult | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        budget = self.latency_budget_ms
        if budget is not None and (not isinstance(budget, (int, float)) or not math.isfinite(budget)
                                   or budget <= 0):
            raise InvalidConfig(f"latency_budget_ms must be a positive number of milliseconds, got {budget!r}")

    @property
    def reference_ms(self) -> float:
        """Latency of the dense model (measured once); NaN if that measurement failed."""
        if self._reference is None:
            dense = PruningPlan.dense(self.context.layer_names, self.context.arch_fingerprint)
            self._reference = _guard(lambda: self.latency.measure(self.context, [dense]), 1,
                                     LatencyResult)[0]
        ref = self._reference.latency_ms
        return ref if self._reference.ok and ref is not None else math.nan  # ok implies ref is set

    @property
    def budget_ms(self) -> float:
        if self.latency_budget_ms is not None:
            return float(self.latency_budget_ms)
        return 0.5 * self.reference_ms

    def score(self, plans: Sequence[PruningPlan]) -> list[Score]:
        """Evaluate a batch of plans; never raises for evaluator faults."""
        plans = list(plans)
        for plan in plans:
            self.check_plan(plan)
        def measure() -> list[LatencyResult]:
            return _guard(lambda: self.latency.measure(self.context, plans), len(plans), LatencyResult)

        if self.overlap:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="npas-latency") as pool:
                pending = pool.submit(measure)
                acc = _guard(lambda: self.accuracy.evaluate(self.context, plans), len(plans),
                             AccuracyResult)
                lat = pending.result()
        else:
            acc = _guard(lambda: self.accuracy.evaluate(self.context, plans), len(plans), AccuracyResult)
            lat = measure()
        return [self._combine(p, a, m) for p, a, m in zip(plans, acc, lat)]

    def check_plan(self, plan: PruningPlan) -> None:
        if not isinstance(plan, PruningPlan):
            raise InvalidPlan(f"expected a PruningPlan, got {type(plan).__name__}")
        if plan.layer_names != self.context.layer_names or (
                plan.arch_fingerprint and plan.arch_fingerprint != self.context.arch_fingerprint):
            raise InvalidPlan(f"plan was made for another model (layers {list(plan.layer_names)[:3]}..., "
                              f"fingerprint {plan.arch_fingerprint!r}); this model has "
                              f"{len(self.context.layers)} layers, fingerprint "
                              f"{self.context.arch_fingerprint!r}")

    def _combine(self, plan: PruningPlan, acc: AccuracyResult, lat: LatencyResult) -> Score:
        budget, ref = self.budget_ms, self.reference_ms
        reward = self.failure_reward
        accuracy, latency_ms = acc.accuracy, lat.latency_ms  # both set when .ok
        if (acc.ok and lat.ok and accuracy is not None and latency_ms is not None
                and math.isfinite(budget) and math.isfinite(ref)):
            try:
                value = float(self.reward(accuracy, latency_ms, budget_ms=budget,
                                          reference_ms=ref))
                reward = value if math.isfinite(value) else self.failure_reward
            except NpasError:
                raise
            except Exception as exc:  # a faulty reward function is a defined failure too
                acc = AccuracyResult.failure(f"reward function failed: {exc}")
        elif not (math.isfinite(budget) and math.isfinite(ref)) and lat.ok:
            lat = LatencyResult.failure(f"reference latency unavailable: {self._reference}")
        return Score(reward, plan, acc, lat, budget, ref)
