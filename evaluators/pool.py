"""Evaluate a batch concurrently in local worker processes, every fault a defined result.

``PooledAccuracy(evaluator, workers=2, timeout_s=60)`` and ``PooledLatency(...)`` speak the
evaluator interface (``evaluate`` / ``measure``), so they plug into ``NPASEnv`` and
``PlanScorer`` unchanged. Underneath, an :class:`EvaluationPool` runs one plan per task in a
``concurrent.futures.ProcessPoolExecutor``:

* the evaluator and the :class:`ModelContext` are sent once per worker (initializer), a task
  only carries its plan; with ``mp_context="spawn"`` both must be picklable;
* at most ``workers`` tasks are in flight, so a task starts when it is submitted and its
  ``timeout_s`` clock is honest; a task past its deadline gives ``"timeout after X s"`` and the
  pool is killed and rebuilt (the other in-flight plans are resubmitted, not failed);
* a dead worker (``BrokenProcessPool``) gets the pool rebuilt; if several plans were in flight,
  they are retried one at a time, so only the plan that kills its worker again is marked
  ``"worker crashed ..."``;
* an exception, a wrong result count or type becomes a failure result of that plan.

Results come back in input order. Ray is not supported (local processes only).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from evaluators.context import ModelContext
from evaluators.registry import make_accuracy, make_latency
from evaluators.results import AccuracyResult, LatencyResult
from npas_env.errors import InvalidConfig, InvalidPlan
from npas_env.plan import PruningPlan

_WORKER: dict[str, Any] = {}  # set by the initializer inside a worker process


def in_pool_worker() -> bool:
    """True inside a worker process of an :class:`EvaluationPool`."""
    return bool(_WORKER)


def _install(evaluator: Any, context: ModelContext, kind: str) -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER.update(evaluator=evaluator, context=context, kind=kind)


def _ping() -> int:
    time.sleep(0.02)  # long enough that each warm-up ping lands on a different worker
    return os.getpid()


def _run_one(plan: PruningPlan) -> Any:
    evaluator, context = _WORKER["evaluator"], _WORKER["context"]
    if _WORKER["kind"] == "accuracy":
        return evaluator.evaluate(context, [plan])
    return evaluator.measure(context, [plan])


class EvaluationPool:
    """Worker processes running one evaluator on one model; see the module docstring.

    Args:
        evaluator: the evaluator object run in the workers.
        kind: ``"accuracy"`` (calls ``evaluate``) or ``"latency"`` (calls ``measure``).
        workers: number of worker processes.
        timeout_s: per-plan time limit in seconds.
        mp_context: ``"spawn"`` (portable; needs picklable evaluator and context), ``"fork"``
            or ``"forkserver"``.
        startup_timeout_s: time allowed for the workers to start and load the model.

    Raises:
        InvalidConfig: bad ``kind``, ``workers``, ``timeout_s`` or ``mp_context``.
    """

    def __init__(self, evaluator: Any, kind: str, *, workers: int = 2, timeout_s: float = 60.0,
                 mp_context: str = "spawn", startup_timeout_s: float = 120.0) -> None:
        if kind not in ("accuracy", "latency"):
            raise InvalidConfig(f"kind must be 'accuracy' or 'latency', got {kind!r}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InvalidConfig(f"workers must be a positive integer, got {workers!r}")
        for label, value in (("timeout_s", timeout_s), ("startup_timeout_s", startup_timeout_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidConfig(f"{label} must be a positive number of seconds, got {value!r}")
        if mp_context not in multiprocessing.get_all_start_methods():
            raise InvalidConfig(f"mp_context must be one of {multiprocessing.get_all_start_methods()}, "
                                f"got {mp_context!r}")
        self.evaluator, self.kind, self.workers = evaluator, kind, workers
        self.timeout_s, self.startup_timeout_s = float(timeout_s), float(startup_timeout_s)
        self.mp_context = mp_context
        self.result_type = AccuracyResult if kind == "accuracy" else LatencyResult
        self.restarts = 0
        self._executor: ProcessPoolExecutor | None = None
        self._context: ModelContext | None = None

    # ----------------------------------------------------------------------------- lifecycle
    def _start(self, context: ModelContext) -> ProcessPoolExecutor:
        if self._executor is not None and self._context is context:
            return self._executor
        self.close()
        if self.mp_context != "fork":
            try:
                pickle.dumps((self.evaluator, context))
            except Exception as exc:
                raise InvalidConfig(f"mp_context={self.mp_context!r} needs a picklable evaluator and "
                                    f"model context: {type(exc).__name__}: {exc}; use "
                                    "mp_context='fork'") from None
        executor = ProcessPoolExecutor(self.workers, multiprocessing.get_context(self.mp_context),
                                       initializer=_install, initargs=(self.evaluator, context, self.kind))
        self._executor, self._context = executor, context
        self._warm_up(executor)
        return executor

    def _warm_up(self, executor: ProcessPoolExecutor) -> None:
        """Wait until every worker has started and loaded the model (so timeouts are honest)."""
        deadline, pids = time.monotonic() + self.startup_timeout_s, set()
        while len(pids) < self.workers and time.monotonic() < deadline:
            futures = [executor.submit(_ping) for _ in range(self.workers)]
            done, _ = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
            try:
                pids.update(f.result() for f in done)
            except BrokenProcessPool as exc:
                self.close()
                raise InvalidConfig(f"evaluation pool workers died on start-up (the evaluator or "
                                    f"model could not be loaded): {exc}") from None
        if len(pids) < self.workers:
            self.close()
            raise InvalidConfig(f"evaluation pool workers did not start within "
                                f"{self.startup_timeout_s:g} s")

    def close(self) -> None:
        """Kill the worker processes (idempotent; a hung worker does not block)."""
        executor, self._executor, self._context = self._executor, None, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        for process in processes:
            if process.is_alive():
                process.kill()
        executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=5)

    def _restart(self, context: ModelContext) -> ProcessPoolExecutor:
        self.close()
        self.restarts += 1
        return self._start(context)

    def __enter__(self) -> EvaluationPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown nothing is left to clean
            self.close()

    # ------------------------------------------------------------------------------ running
    def run(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[Any]:
        """Evaluate ``plans`` (one task each); results in input order, faults as failures."""
        plans = list(plans)
        results: list[Any] = [None] * len(plans)
        if not plans:
            return results
        executor = self._start(context)
        pending: deque[int] = deque(range(len(plans)))
        isolate: set[int] = set()
        inflight: dict[Future[Any], tuple[int, float]] = {}
        while pending or inflight:
            window = 1 if isolate else self.workers
            while pending and len(inflight) < window:
                if isolate and pending[0] not in isolate and not inflight:
                    pending.rotate(-1)  # isolated suspects run first, alone
                    continue
                idx = pending.popleft()
                inflight[executor.submit(_run_one, plans[idx])] = (idx, time.monotonic())
            earliest = min(start for _, start in inflight.values()) + self.timeout_s
            done, _ = wait(list(inflight), timeout=max(0.0, earliest - time.monotonic()),
                           return_when=FIRST_COMPLETED)
            broken = [f for f in done if isinstance(f.exception(), BrokenProcessPool)]
            for future in done:
                if future not in broken:
                    idx, _ = inflight.pop(future)
                    results[idx] = self._collect(future)
                    isolate.discard(idx)
            expired = [f for f, (_, start) in inflight.items()
                       if f not in broken and time.monotonic() - start >= self.timeout_s]
            if not broken and not expired:
                continue
            for future in expired:
                idx, _ = inflight.pop(future)
                results[idx] = self.result_type.failure(f"timeout after {self.timeout_s:g} s")
                isolate.discard(idx)
            suspects = [inflight.pop(f)[0] for f in list(inflight)]
            if broken and len(suspects) == 1 and not expired:
                results[suspects[0]] = self.result_type.failure(
                    "worker crashed (its process died while evaluating this plan)")
                isolate.discard(suspects[0])
                suspects = []
            elif broken and not expired:
                isolate.update(suspects)
            pending.extendleft(reversed(suspects))
            executor = self._restart(context)
        return results

    def _collect(self, future: Future[Any]) -> Any:
        """One plan's result from a finished task (exceptions and bad answers as failures)."""
        exc = future.exception()
        if isinstance(exc, (InvalidPlan, InvalidConfig)):
            raise exc
        if exc is not None:
            return self.result_type.failure(f"{type(exc).__name__}: {exc}")
        answer = future.result()
        if not isinstance(answer, (list, tuple)) or len(answer) != 1:
            size = len(answer) if isinstance(answer, (list, tuple)) else type(answer).__name__
            return self.result_type.failure(f"evaluator returned {size} results for 1 plan")
        if not isinstance(answer[0], self.result_type):
            return self.result_type.failure(f"evaluator returned {type(answer[0]).__name__}, "
                                            f"not {self.result_type.__name__}")
        return answer[0]


class _Pooled:
    kind: str

    def __init__(self, evaluator: Any, workers: int = 2, timeout_s: float = 60.0, *,
                 mp_context: str = "spawn", startup_timeout_s: float = 120.0) -> None:
        if isinstance(evaluator, str):
            evaluator = (make_accuracy if self.kind == "accuracy" else make_latency)(evaluator)
        self.evaluator = evaluator
        self.name: str = getattr(evaluator, "name", type(evaluator).__name__)
        self.pool = EvaluationPool(evaluator, self.kind, workers=workers, timeout_s=timeout_s,
                                   mp_context=mp_context, startup_timeout_s=startup_timeout_s)

    def config(self) -> dict[str, Any]:
        """The wrapped evaluator's config (the pool does not change successful results)."""
        return self.evaluator.config() if callable(getattr(self.evaluator, "config", None)) else {}

    def close(self) -> None:
        """Stop the worker processes."""
        self.pool.close()

    def __enter__(self) -> _Pooled:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.evaluator!r}, workers={self.pool.workers}, "
                f"timeout_s={self.pool.timeout_s:g})")


class PooledAccuracy(_Pooled):
    """An accuracy evaluator run in worker processes (see :class:`EvaluationPool` for args).

    Args:
        evaluator: accuracy evaluator object or registered name.
        workers, timeout_s, mp_context, startup_timeout_s: see :class:`EvaluationPool`.
    """

    kind = "accuracy"

    def evaluate(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[AccuracyResult]:
        return self.pool.run(context, plans)


class PooledLatency(_Pooled):
    """A latency evaluator run in worker processes (see :class:`EvaluationPool` for args).

    Args:
        evaluator: latency evaluator object or registered name.
        workers, timeout_s, mp_context, startup_timeout_s: see :class:`EvaluationPool`.
    """

    kind = "latency"

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        return self.pool.run(context, plans)
