"""SB3 ``SubprocVecEnv`` workers share one evaluation cache file safely.

Every worker's env wraps counting evaluators in ``CachedAccuracy`` / ``CachedLatency`` over the
same :class:`EvaluationCache` handle, created in the parent and handed to the env factories the
way a user would (inherited through ``fork``, or pickled as its path for ``forkserver``). The
evaluators append one line per plan they really evaluate to a shared log, so the test can tell a
true evaluation from a cache hit in any process.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import SubprocVecEnv
from torch import nn

from evaluators.cache import EvaluationCache
from evaluators.cached import CachedAccuracy, CachedLatency
from evaluators.results import AccuracyResult, LatencyResult
from npas_env import NPASEnv

N_ENVS = 3
# forkserver workers import nothing of this test module: send its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _log(path: str, kind: str, plans: Sequence[Any]) -> None:
    with open(path, "a") as fh:  # one small O_APPEND write per plan: lines never interleave
        fh.writelines(f"{os.getpid()} {kind} {p.key()}\n" for p in plans)


class _Logged:
    """An evaluator writing every plan it sees to the shared log file ``log``."""

    name = "logged"

    def __init__(self, log: str) -> None:
        self.log = log

    def config(self) -> dict[str, Any]:
        return {}


class LoggedAccuracy(_Logged):
    """Deterministic accuracy (1 / the largest rate) that logs every plan it evaluates."""

    def evaluate(self, context: Any, plans: Sequence[Any]) -> list[AccuracyResult]:
        _log(self.log, "accuracy", plans)
        return [AccuracyResult(1.0 / max(a.rate for a in p.actions)) for p in plans]


class LoggedLatency(_Logged):
    """Deterministic latency (sum of 1 / rate) that logs every plan it measures."""

    def measure(self, context: Any, plans: Sequence[Any]) -> list[LatencyResult]:
        _log(self.log, "latency", plans)
        return [LatencyResult(sum(1.0 / a.rate for a in p.actions)) for p in plans]


def make_env(cache: EvaluationCache, log: str) -> NPASEnv:
    """A three-layer CNN (same weights in every process) with cached, logged evaluators."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)).eval()
    return NPASEnv(model, torch.zeros(1, 3, 8, 8), accuracy=CachedAccuracy(LoggedAccuracy(log), cache),
                   latency=CachedLatency(LoggedLatency(log), cache), latency_budget_ms=2.0)


def logged(log: Path) -> list[tuple[int, str, str]]:
    if not log.exists():
        return []
    return [(int(pid), kind, key) for pid, kind, key in
            (line.split(" ", 2) for line in log.read_text().splitlines())]


def episode(vec: SubprocVecEnv, actions: np.ndarray, n_layers: int) -> list[dict[str, Any]]:
    """Step every env with its row of ``actions`` on every layer; the final infos."""
    for step in range(n_layers):
        _, _, dones, infos = vec.step(actions)
        assert dones.all() == (step == n_layers - 1)
    return list(infos)


@pytest.mark.parametrize("start_method", [
    "fork",
    pytest.param("forkserver", marks=pytest.mark.slow),  # SB3's default: ~5 s of imports per worker
])
def test_subproc_vec_env_workers_share_one_cache(tmp_path: Path, start_method: str) -> None:
    log = tmp_path / "evals.log"
    cache = EvaluationCache(tmp_path / "cache.sqlite")
    local = make_env(cache, str(log))
    n_layers, nvec = len(local.layers), local.action_space.nvec
    assert local.scorer.reference_ms > 0  # the parent measures the dense model: one entry
    vec = SubprocVecEnv([partial(make_env, cache, str(log))] * N_ENVS, start_method=start_method)
    try:
        vec.reset()
        # each worker evaluates its own plan (rate index i + 1 on every layer)...
        own = np.array([[0, 1, i + 1, 0] for i in range(N_ENVS)])
        first = episode(vec, own, n_layers)
        keys = [info["plan"].key() for info in first]
        assert len(set(keys)) == N_ENVS and all(info["error"] is None for info in first)
        evaluated = logged(log)
        pids = [p.pid for p in vec.processes]
        assert {(pid, key) for pid, kind, key in evaluated if kind == "accuracy"} == set(zip(pids, keys))
        # ...then the plan of its neighbour: a hit on what another process stored, no evaluation
        second = episode(vec, np.roll(own, -1, axis=0), n_layers)
        assert logged(log) == evaluated
        for i, info in enumerate(second):
            j = (i + 1) % N_ENVS
            assert info["plan"].key() == keys[j]
            assert (info["accuracy"], info["latency_ms"]) == (first[j]["accuracy"], first[j]["latency_ms"])
        # random plans, two workers always racing to store the same ones
        rng = np.random.default_rng(0)
        for _ in range(8):
            actions = rng.integers(nvec, size=(N_ENVS, len(nvec)))
            actions[1] = actions[0]
            infos = episode(vec, actions, n_layers)
            assert [info["error"] for info in infos] == [None] * N_ENVS  # never "database is locked"
    finally:
        vec.close()
    evaluated = logged(log)
    assert len({pid for pid, _, _ in evaluated}) >= N_ENVS  # the workers did evaluate
    with sqlite3.connect(tmp_path / "cache.sqlite") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == len(cache)
    # one row per distinct evaluation, none lost; a plan is evaluated twice only when two
    # workers raced for it in the same step
    assert len(cache) == len({(kind, key) for _, kind, key in evaluated})
    twice = [k for k, n in Counter((kind, key) for _, kind, key in evaluated).items() if n > 1]
    assert len(twice) <= 2 * 8
    cache.close()
