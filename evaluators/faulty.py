"""``faulty``: a fault-injecting wrapper, to test that faults end as defined results.

``FaultyEvaluator(inner, seed=0, p_raise=0.1, p_nan=0.1, ...)`` forwards each batch to an inner
evaluator (accuracy: ``proxy``, latency: ``analytic`` unless given) and, by a seeded schedule,
injects one fault per batch instead:

=============  ======================================================================
kind           what the call does
=============  ======================================================================
``raise``      raises :class:`InjectedFault`
``hang``       sleeps ``hang_s`` seconds, then answers normally (a pool times it out)
``nan``        returns results whose value is NaN
``garbage``    returns strings instead of result objects
``wrong_count`` returns one result too many
``crash``      ``os._exit(13)`` inside a pool worker; in the main process it raises
               :class:`InjectedFault` instead (it never kills the caller)
=============  ======================================================================

The schedule depends only on ``seed``, the role and the plans' keys (not on call order), so a
copy of the evaluator in another process injects exactly the same faults: ``fault_for`` tells a
test in advance which fault a batch gets.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Sequence
from typing import Any

from evaluators.context import ModelContext
from evaluators.registry import make_accuracy, make_latency, register_accuracy, register_latency
from evaluators.results import AccuracyResult, LatencyResult
from npas_env.errors import InvalidConfig
from npas_env.plan import PruningPlan

#: Fault kinds in schedule order.
FAULT_KINDS: tuple[str, ...] = ("raise", "hang", "nan", "garbage", "wrong_count", "crash")

#: Exit code of a worker killed by an injected crash.
CRASH_EXIT_CODE = 13


class InjectedFault(RuntimeError):
    """The exception a ``raise`` (or a refused ``crash``) fault raises."""


def in_pool_worker() -> bool:
    """True inside an :class:`evaluators.pool.EvaluationPool` worker process."""
    from evaluators import pool

    return pool.in_pool_worker()


@register_accuracy("faulty")
@register_latency("faulty")
class FaultyEvaluator:
    """Wraps an evaluator and injects faults by a seeded schedule; see the module docstring.

    Args:
        inner: the wrapped evaluator: an object, a registered name, or None for ``proxy``
            (accuracy) / ``analytic`` (latency). One instance may serve both roles.
        seed: seeds the schedule.
        p_raise, p_hang, p_nan, p_garbage, p_wrong_count, p_crash: probability of each fault
            kind per batch; their sum must be <= 1.
        hang_s: how long a ``hang`` fault sleeps, in seconds.

    Raises:
        InvalidConfig: a probability outside [0, 1], a sum above 1, or ``hang_s`` < 0.
    """

    name = "faulty"

    def __init__(self, inner: Any = None, *, seed: int = 0, p_raise: float = 0.0,
                 p_hang: float = 0.0, p_nan: float = 0.0, p_garbage: float = 0.0,
                 p_wrong_count: float = 0.0, p_crash: float = 0.0, hang_s: float = 10.0) -> None:
        probs = {"raise": p_raise, "hang": p_hang, "nan": p_nan, "garbage": p_garbage,
                 "wrong_count": p_wrong_count, "crash": p_crash}
        for kind, p in probs.items():
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise InvalidConfig(f"p_{kind} must be a probability in [0, 1], got {p!r}")
        if sum(probs.values()) > 1.0 + 1e-9:
            raise InvalidConfig(f"fault probabilities sum to {sum(probs.values()):g} > 1: {probs}")
        if not isinstance(hang_s, (int, float)) or not math.isfinite(hang_s) or hang_s < 0:
            raise InvalidConfig(f"hang_s must be a non-negative number of seconds, got {hang_s!r}")
        self.inner, self.seed, self.hang_s = inner, int(seed), float(hang_s)
        self.probabilities = {k: float(v) for k, v in probs.items()}
        self._inners: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        inner = self.inner if isinstance(self.inner, str) or self.inner is None else {
            "name": getattr(self.inner, "name", type(self.inner).__name__),
            **getattr(self.inner, "config", dict)()}
        return {"inner": inner, "seed": self.seed, "hang_s": self.hang_s, **self.probabilities}

    def fault_for(self, role: str, plans: Sequence[PruningPlan]) -> str | None:
        """The fault kind a batch of ``plans`` gets in ``role`` ("accuracy"/"latency"), or None."""
        text = "|".join([str(self.seed), role, *(p.key() for p in plans)])
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        u = int.from_bytes(digest, "big") / 2.0**64
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += self.probabilities[kind]
            if u < edge:
                return kind
        return None

    def evaluate(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[Any]:
        """Accuracy role: the inner evaluator's results, unless a fault is scheduled."""
        return self._call("accuracy", context, list(plans))

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[Any]:
        """Latency role: the inner evaluator's results, unless a fault is scheduled."""
        return self._call("latency", context, list(plans))

    def _call(self, role: str, context: ModelContext, plans: list[PruningPlan]) -> list[Any]:
        fault = self.fault_for(role, plans)
        if fault == "raise":
            raise InjectedFault(f"injected fault 'raise' ({role}, {len(plans)} plans)")
        if fault == "crash":
            if not in_pool_worker():
                raise InjectedFault("injected fault 'crash' refused outside a pool worker")
            os._exit(CRASH_EXIT_CODE)
        if fault == "hang":
            time.sleep(self.hang_s)
        if fault == "garbage":
            return [f"garbage-{i}" for i in range(len(plans))]
        if fault == "nan":
            if role == "accuracy":
                return [AccuracyResult(math.nan) for _ in plans]
            return [LatencyResult(math.nan) for _ in plans]
        inner = self._inner(role)
        results = list(inner.evaluate(context, plans) if role == "accuracy"
                       else inner.measure(context, plans))
        return results + results[:1] if fault == "wrong_count" else results

    def _inner(self, role: str) -> Any:
        if role not in self._inners:
            spec = self.inner
            if spec is None or isinstance(spec, str):
                make = make_accuracy if role == "accuracy" else make_latency
                spec = make(spec or ("proxy" if role == "accuracy" else "analytic"))
            self._inners[role] = spec
        return self._inners[role]

    def __repr__(self) -> str:
        active = {k: v for k, v in self.probabilities.items() if v}
        return f"FaultyEvaluator({self.inner!r}, seed={self.seed}, {active})"
