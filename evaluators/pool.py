"""Evaluate a batch concurrently in worker processes, every fault a defined result.

``PooledAccuracy(evaluator, workers=2, timeout_s=60)`` and ``PooledLatency(...)`` speak the
evaluator interface (``evaluate`` / ``measure``), so they plug into ``NPASEnv``, ``PlanScorer``
and ``CachedAccuracy`` unchanged (wrap the pooled evaluator in the cache, so cache hits never
reach a worker). Two backends run the same worker code and turn faults into the same results:

* ``backend="local"`` (default, embedded, no set-up): an :class:`EvaluationPool` of local
  processes (``concurrent.futures.ProcessPoolExecutor``), below;
* ``backend="ray"`` or ``ray_address=...``: :class:`evaluators.ray_pool.RayEvaluationPool`, one
  Ray actor per worker on a Ray cluster (optional extra: ``pip install 'npas-env[ray]'``).

:func:`make_pool` picks the backend; :func:`maybe_pooled` leaves an evaluator in process for one
local worker (what ``npas search --workers 1`` does) and wraps it otherwise.

Local pool:

* the evaluator and the :class:`ModelContext` are sent once per worker (initializer), a task
  only carries its plan; with ``mp_context="spawn"`` both must be picklable;
* each worker runs torch with ``threads`` threads (default: usable cores // workers);
* at most ``workers`` tasks are in flight, so a task starts when it is submitted and its
  ``timeout_s`` clock is honest; a task past its deadline gives ``"timeout after X s"`` and the
  pool is killed and rebuilt (the other in-flight plans are resubmitted, not failed);
* a dead worker (``BrokenProcessPool``) gets the pool rebuilt; if several plans were in flight,
  they are retried one at a time, so only the plan that kills its worker again is marked
  ``"worker crashed ..."``;
* an exception, a wrong result count or type becomes a failure result of that plan
  (:func:`collect_answer`, shared by both backends).

Results come back in input order.
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
from typing import Any, TypeVar

from evaluators.context import ModelContext
from evaluators.registry import make_accuracy, make_latency
from evaluators.results import AccuracyResult, LatencyResult
from npas_env.errors import InvalidConfig, InvalidPlan
from npas_env.plan import PruningPlan

_C = TypeVar("_C", bound="Closeable")
_WORKER: dict[str, Any] = {}  # set by the initializer inside a worker process


#: Failure text of a plan whose worker process died while evaluating it (both backends).
CRASHED = "worker crashed (its process died while evaluating this plan)"

BACKENDS = ("local", "ray")


def in_pool_worker() -> bool:
    """True inside a worker process of a pool (local process or Ray actor)."""
    return bool(_WORKER)


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _install(evaluator: Any, context: ModelContext, kind: str, threads: int = 1) -> None:
    """Worker start-up (both backends): torch threads, then the evaluator and model."""
    import torch

    torch.set_num_threads(max(1, int(threads)))
    _WORKER.update(evaluator=evaluator, context=context, kind=kind)


def _ping() -> int:
    time.sleep(0.02)  # long enough that each warm-up ping lands on a different worker
    return os.getpid()


def _run_one(plan: PruningPlan) -> Any:
    evaluator, context = _WORKER["evaluator"], _WORKER["context"]
    if _WORKER["kind"] == "accuracy":
        return evaluator.evaluate(context, [plan])
    return evaluator.measure(context, [plan])


def check_pool_args(kind: str, workers: int, timeout_s: float, startup_timeout_s: float) -> type:
    """Validate the settings every backend shares; the result type of ``kind``.

    Raises:
        InvalidConfig: bad ``kind``, ``workers``, ``timeout_s`` or ``startup_timeout_s``.
    """
    if kind not in ("accuracy", "latency"):
        raise InvalidConfig(f"kind must be 'accuracy' or 'latency', got {kind!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InvalidConfig(f"workers must be a positive integer, got {workers!r}")
    for label, value in (("timeout_s", timeout_s), ("startup_timeout_s", startup_timeout_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InvalidConfig(f"{label} must be a positive number of seconds, got {value!r}")
    return AccuracyResult if kind == "accuracy" else LatencyResult


def collect_answer(result_type: type, answer: Any = None, exc: BaseException | None = None) -> Any:
    """One plan's result from what its task returned or raised (both backends).

    An exception or a wrong result count or type becomes a failure result; misuse
    (:class:`InvalidPlan`, :class:`InvalidConfig`) is raised again in the caller.
    """
    if isinstance(exc, (InvalidPlan, InvalidConfig)):
        raise exc
    if exc is not None:
        return result_type.failure(f"{type(exc).__name__}: {exc}")
    if not isinstance(answer, (list, tuple)) or len(answer) != 1:
        size = len(answer) if isinstance(answer, (list, tuple)) else type(answer).__name__
        return result_type.failure(f"evaluator returned {size} results for 1 plan")
    if not isinstance(answer[0], result_type):
        return result_type.failure(f"evaluator returned {type(answer[0]).__name__}, "
                                   f"not {result_type.__name__}")
    return answer[0]


class Closeable:
    """``with`` support and a best-effort ``close()`` when garbage-collected."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown nothing is left to clean
            self.close()


class EvaluationPool(Closeable):
    """Worker processes running one evaluator on one model; see the module docstring.

    Args:
        evaluator: the evaluator object run in the workers.
        kind: ``"accuracy"`` (calls ``evaluate``) or ``"latency"`` (calls ``measure``).
        workers: number of worker processes.
        timeout_s: per-plan time limit in seconds.
        mp_context: ``"spawn"`` (portable; needs picklable evaluator and context), ``"fork"``
            or ``"forkserver"``.
        startup_timeout_s: time allowed for the workers to start and load the model.
        threads: torch threads per worker (None: ``max(1, usable cores // workers)``).

    Raises:
        InvalidConfig: bad ``kind``, ``workers``, ``timeout_s`` or ``mp_context``.
    """

    backend = "local"

    def __init__(self, evaluator: Any, kind: str, *, workers: int = 2, timeout_s: float = 60.0,
                 mp_context: str = "spawn", startup_timeout_s: float = 120.0,
                 threads: int | None = None) -> None:
        self.result_type = check_pool_args(kind, workers, timeout_s, startup_timeout_s)
        if mp_context not in multiprocessing.get_all_start_methods():
            raise InvalidConfig(f"mp_context must be one of {multiprocessing.get_all_start_methods()}, "
                                f"got {mp_context!r}")
        self.evaluator, self.kind, self.workers = evaluator, kind, workers
        self.timeout_s, self.startup_timeout_s = float(timeout_s), float(startup_timeout_s)
        self.mp_context = mp_context
        self.threads = threads if threads is not None else max(1, usable_cores() // workers)
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
                                       initializer=_install,
                                       initargs=(self.evaluator, context, self.kind, self.threads))
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
                results[suspects[0]] = self.result_type.failure(CRASHED)
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
        return collect_answer(self.result_type, None if exc else future.result(), exc)


def make_pool(evaluator: Any, kind: str, *, workers: int = 2, timeout_s: float = 60.0,
              backend: str | None = None, ray_address: str | None = None,
              mp_context: str = "spawn", startup_timeout_s: float = 120.0,
              threads: int | None = None) -> Any:
    """An :class:`EvaluationPool` or a Ray pool (``backend="ray"`` or a ``ray_address``).

    Raises:
        InvalidConfig: an unknown backend or a bad setting.
        MissingDependency: the Ray backend without Ray installed.
    """
    backend = backend or ("ray" if ray_address else "local")
    if backend not in BACKENDS:
        raise InvalidConfig(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "ray":
        from evaluators.ray_pool import RayEvaluationPool

        return RayEvaluationPool(evaluator, kind, workers=workers, timeout_s=timeout_s,
                                 address=ray_address, startup_timeout_s=startup_timeout_s,
                                 threads=threads)
    if ray_address:
        raise InvalidConfig(f"ray_address={ray_address!r} needs backend='ray', got {backend!r}")
    return EvaluationPool(evaluator, kind, workers=workers, timeout_s=timeout_s,
                          mp_context=mp_context, startup_timeout_s=startup_timeout_s,
                          threads=threads)


class _Pooled(Closeable):
    kind: str

    def __init__(self, evaluator: Any, workers: int = 2, timeout_s: float = 60.0, *,
                 backend: str | None = None, ray_address: str | None = None,
                 mp_context: str = "spawn", startup_timeout_s: float = 120.0,
                 threads: int | None = None) -> None:
        if isinstance(evaluator, str):
            evaluator = (make_accuracy if self.kind == "accuracy" else make_latency)(evaluator)
        self.evaluator = evaluator
        self.name: str = getattr(evaluator, "name", type(evaluator).__name__)
        self.pool = make_pool(evaluator, self.kind, workers=workers, timeout_s=timeout_s,
                              backend=backend, ray_address=ray_address, mp_context=mp_context,
                              startup_timeout_s=startup_timeout_s, threads=threads)

    def config(self) -> dict[str, Any]:
        """The wrapped evaluator's config (the pool does not change successful results)."""
        return self.evaluator.config() if callable(getattr(self.evaluator, "config", None)) else {}

    def close(self) -> None:
        """Stop the worker processes."""
        self.pool.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.evaluator!r}, workers={self.pool.workers}, "
                f"timeout_s={self.pool.timeout_s:g}, backend={self.pool.backend!r})")


class PooledAccuracy(_Pooled):
    """An accuracy evaluator run in worker processes (local or Ray; see the module docstring).

    Args:
        evaluator: accuracy evaluator object or registered name.
        workers, timeout_s, mp_context, startup_timeout_s, threads: see :class:`EvaluationPool`.
        backend: ``"local"`` (default) or ``"ray"``; a ``ray_address`` implies ``"ray"``.
        ray_address: Ray cluster address for ``ray.init`` (``"auto"``, ``"host:6379"``,
            ``"ray://host:10001"``, ``"local"``); None with ``backend="ray"``: the Ray instance
            this process already joined, else a new local one.
    """

    kind = "accuracy"

    def evaluate(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[AccuracyResult]:
        return self.pool.run(context, plans)


class PooledLatency(_Pooled):
    """A latency evaluator run in worker processes (local or Ray; see the module docstring).

    Args:
        evaluator: latency evaluator object or registered name.
        workers, timeout_s, mp_context, startup_timeout_s, threads: see :class:`EvaluationPool`.
        backend: ``"local"`` (default) or ``"ray"``; a ``ray_address`` implies ``"ray"``.
        ray_address: Ray cluster address for ``ray.init`` (``"auto"``, ``"host:6379"``,
            ``"ray://host:10001"``, ``"local"``); None with ``backend="ray"``: the Ray instance
            this process already joined, else a new local one.
    """

    kind = "latency"

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        return self.pool.run(context, plans)


def maybe_pooled(evaluator: Any, kind: str, *, workers: int = 1, ray_address: str | None = None,
                 timeout_s: float = 900.0) -> Any:
    """``evaluator`` itself for one local worker (in-process), else a pooled wrapper of it."""
    if workers == 1 and not ray_address:
        return evaluator
    cls = PooledAccuracy if kind == "accuracy" else PooledLatency
    return cls(evaluator, workers, timeout_s, ray_address=ray_address)
