"""The Ray backend of the evaluation pool: one Ray actor per worker, every fault a result.

``RayEvaluationPool(evaluator, "accuracy", workers=2, timeout_s=60, address=None)`` has the
interface of :class:`evaluators.pool.EvaluationPool` (``run(context, plans)``, ``close()``,
``restarts``) and runs the same worker code, so results equal the local pool's:

* Ray is an optional extra, imported lazily; without it, :class:`MissingDependency` says
  ``pip install 'npas-env[ray]'``;
* ``ray.init(address=address)`` if this process has not joined Ray yet and an address is given
  (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``, ``"local"``), a local ``ray.init()``
  without one; a process that already joined Ray (the caller's ``ray.init(...)``) keeps its
  connection. The pool never shuts Ray down;
* the evaluator and the model context go to the object store once; each actor reserves
  ``cpus_per_worker`` CPUs, loads both at start-up and runs torch with ``threads`` threads
  (default: its CPUs);
* an actor runs one plan at a time, so a plan's ``timeout_s`` clock starts when it runs
  (``ray.wait`` with a timeout); a plan past its deadline gives ``"timeout after X s"`` and only
  its actor is killed and replaced (Ray cannot cancel a running call of a synchronous actor);
* a dead actor (``RayActorError``, ``WorkerCrashedError``, any other system error) fails only the
  plan it was running with ``"worker crashed ..."`` and is replaced;
* a replacement boots in the background while the other actors keep working; it takes plans
  once it has loaded the model (if it cannot, within ``startup_timeout_s``, InvalidConfig);
* an exception, a wrong result count or type becomes a failure result
  (:func:`evaluators.pool.collect_answer`, shared with the local pool).

Every node of a remote cluster must be able to import this package (``pip install npas-env``
there, or a Ray ``runtime_env``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from evaluators.context import ModelContext
from evaluators.pool import CRASHED, Closeable, _install, _run_one, check_pool_args, collect_answer
from npas_env.errors import InvalidConfig, MissingDependency
from npas_env.plan import PruningPlan


def import_ray() -> Any:
    """The ``ray`` module, or :class:`MissingDependency` naming the ``ray`` extra."""
    try:
        import ray
    except ModuleNotFoundError as exc:
        if exc.name != "ray":
            raise
        raise MissingDependency("ray", "ray") from None
    return ray


class _Worker:
    """Body of one Ray actor (wrapped with ``ray.remote`` when the pool starts)."""

    def __init__(self, evaluator: Any, context: ModelContext, kind: str, threads: int) -> None:
        _install(evaluator, context, kind, threads)

    def ping(self) -> int:
        return os.getpid()

    def run(self, plan: PruningPlan) -> Any:
        return _run_one(plan)


class RayEvaluationPool(Closeable):
    """Ray actors running one evaluator on one model; see the module docstring.

    Args:
        evaluator: the evaluator object run in the actors (must be serializable).
        kind: ``"accuracy"`` (calls ``evaluate``) or ``"latency"`` (calls ``measure``).
        workers: number of actors.
        timeout_s: per-plan time limit in seconds.
        address: Ray cluster address for ``ray.init``; None: the Ray instance this process
            already joined, else a new local one.
        startup_timeout_s: time allowed for the actors to start and load the model.
        threads: torch threads per actor (None: ``cpus_per_worker``).
        cpus_per_worker: CPUs each actor reserves on the cluster.

    Raises:
        InvalidConfig: a bad setting, or a cluster too small for the actors.
        MissingDependency: Ray is not installed.
    """

    backend = "ray"

    def __init__(self, evaluator: Any, kind: str, *, workers: int = 2, timeout_s: float = 60.0,
                 address: str | None = None, startup_timeout_s: float = 120.0,
                 threads: int | None = None, cpus_per_worker: float = 1.0) -> None:
        self.result_type = check_pool_args(kind, workers, timeout_s, startup_timeout_s)
        if isinstance(cpus_per_worker, bool) or not isinstance(cpus_per_worker, (int, float)) \
                or not cpus_per_worker > 0:
            raise InvalidConfig(f"cpus_per_worker must be > 0, got {cpus_per_worker!r}")
        self.ray = import_ray()
        self.evaluator, self.kind, self.workers = evaluator, kind, workers
        self.timeout_s, self.startup_timeout_s = float(timeout_s), float(startup_timeout_s)
        self.address, self.cpus_per_worker = address, float(cpus_per_worker)
        self.threads = threads if threads is not None else max(1, int(cpus_per_worker))
        self.restarts = 0
        self._actors: list[Any] = []
        self._context: ModelContext | None = None
        self._refs: tuple[Any, Any] | None = None
        self._actor_class: Any = None
        self._booting: dict[Any, tuple[int, float]] = {}  # ping ref -> (actor slot, spawn time)

    # ----------------------------------------------------------------------------- lifecycle
    def _start(self, context: ModelContext) -> None:
        if self._actors and self._context is context:
            return
        self.close()
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.address) if self.address else ray.init()
        cpus = ray.cluster_resources().get("CPU", 0.0)
        if cpus < self.workers * self.cpus_per_worker:
            raise InvalidConfig(f"the Ray cluster has {cpus:g} CPUs, too few for {self.workers} "
                                f"workers of {self.cpus_per_worker:g} CPU; lower --workers")
        self._refs, self._context = (ray.put(self.evaluator), ray.put(context)), context
        self._actors = [self._spawn() for _ in range(self.workers)]
        self._await_ready(self._actors)

    def _spawn(self) -> Any:
        assert self._refs is not None
        if self._actor_class is None:
            self._actor_class = self.ray.remote(_Worker)
        actor = self._actor_class.options(num_cpus=self.cpus_per_worker, max_restarts=0)
        return actor.remote(*self._refs, self.kind, self.threads)

    def _await_ready(self, actors: list[Any]) -> None:
        """Wait until ``actors`` have started and loaded the model (so timeouts are honest)."""
        exceptions = self.ray.exceptions
        try:
            self.ray.get([a.ping.remote() for a in actors], timeout=self.startup_timeout_s)
        except exceptions.GetTimeoutError:
            self.close()
            raise InvalidConfig(f"Ray evaluation workers did not start within "
                                f"{self.startup_timeout_s:g} s") from None
        except exceptions.RayError as exc:
            self.close()
            raise InvalidConfig(f"Ray evaluation workers died on start-up (the evaluator or model "
                                f"could not be loaded): {type(exc).__name__}: {exc}") from None

    def _replace(self, slot: int) -> None:
        """Kill the actor in ``slot`` and boot a fresh one there (in the background)."""
        with contextlib.suppress(Exception):
            self.ray.kill(self._actors[slot], no_restart=True)
        self.restarts += 1
        self._actors[slot] = self._spawn()
        self._booting[self._actors[slot].ping.remote()] = (slot, time.monotonic())

    def close(self) -> None:
        """Kill the actors (idempotent; Ray itself stays up)."""
        actors, self._actors, self._context, self._refs = self._actors, [], None, None
        self._booting = {}
        if not actors or not self.ray.is_initialized():
            return
        for actor in actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)

    # ------------------------------------------------------------------------------ running
    def run(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[Any]:
        """Evaluate ``plans`` (one actor call each); results in input order, faults as failures."""
        plans = list(plans)
        results: list[Any] = [None] * len(plans)
        if not plans:
            return results
        self._start(context)
        booting = {slot for slot, _ in self._booting.values()}
        pending = deque(range(len(plans)))
        free = deque(s for s in range(len(self._actors)) if s not in booting)
        inflight: dict[Any, tuple[int, int, float]] = {}  # ref -> (plan index, actor slot, start)
        while pending or inflight:
            while pending and free:
                idx, slot = pending.popleft(), free.popleft()
                inflight[self._actors[slot].run.remote(plans[idx])] = (idx, slot, time.monotonic())
            for ref in self._wait(inflight):
                if ref in self._booting:
                    free.append(self._booted(ref))
                    continue
                idx, slot, _ = inflight.pop(ref)
                results[idx], alive = self._collect(ref)
                if alive:
                    free.append(slot)
                else:
                    self._replace(slot)
            now = time.monotonic()
            for ref, (idx, slot, start) in list(inflight.items()):
                if now - start >= self.timeout_s:
                    del inflight[ref]
                    results[idx] = self.result_type.failure(f"timeout after {self.timeout_s:g} s")
                    self._replace(slot)
        return results

    def _wait(self, inflight: dict[Any, tuple[int, int, float]]) -> list[Any]:
        """Finished calls and booted actors, waiting at most until the next deadline."""
        deadlines = [start + self.timeout_s for _, _, start in inflight.values()]
        deadlines += [start + self.startup_timeout_s for _, start in self._booting.values()]
        refs = [*inflight, *self._booting]
        done, _ = self.ray.wait(refs, num_returns=1,
                                timeout=max(0.0, min(deadlines) - time.monotonic()))
        late = [ref for ref, (_, start) in self._booting.items()
                if ref not in done and time.monotonic() - start >= self.startup_timeout_s]
        if late:
            self.close()
            raise InvalidConfig(f"a replacement Ray evaluation worker did not start within "
                                f"{self.startup_timeout_s:g} s")
        return done

    def _booted(self, ref: Any) -> int:
        """The slot of a replacement actor that answered its start-up ping."""
        slot, _ = self._booting.pop(ref)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            self.close()
            raise InvalidConfig(f"a replacement Ray evaluation worker died on start-up: "
                                f"{type(exc).__name__}: {exc}") from None
        return slot

    def _collect(self, ref: Any) -> tuple[Any, bool]:
        """One plan's result from a finished call, and whether its actor is still alive."""
        exceptions = self.ray.exceptions
        try:
            answer = self.ray.get(ref)
        except exceptions.RayTaskError as exc:  # the evaluator raised: the actor lives on
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            return collect_answer(self.result_type, exc=cause), True
        except exceptions.RayError:  # RayActorError, WorkerCrashedError, a lost node, ...
            return self.result_type.failure(CRASHED), False
        return collect_answer(self.result_type, answer), True
