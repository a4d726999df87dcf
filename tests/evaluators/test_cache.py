"""Tests of the SQLite evaluation cache and the cached evaluator wrappers."""

from __future__ import annotations

import multiprocessing
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from evaluators.cache import EvaluationCache, cache_key
from evaluators.cached import CachedAccuracy, CachedLatency
from evaluators.context import ModelContext
from evaluators.results import AccuracyResult, LatencyResult
from npas_env.errors import CacheError
from npas_env.layers import extract_layers
from npas_env.plan import LayerAction, PruningPlan, Scheme

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]


def _context(seed: int = 0) -> ModelContext:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3))
    x = torch.zeros(1, 1, 4, 4)
    return ModelContext(model, x, tuple(extract_layers(model, x)))


def _plan(ctx: ModelContext, rate: float) -> PruningPlan:
    action = LayerAction(Scheme.UNSTRUCTURED, rate)
    return PruningPlan((action,) * len(ctx.layers), ctx.layer_names, ctx.arch_fingerprint)


class CountingAccuracy:
    name = "counting"

    def __init__(self, fail_with: str | None = None, deterministic: bool = False) -> None:
        self.calls: list[int] = []
        self.fail_with, self.deterministic = fail_with, deterministic

    def config(self) -> dict[str, Any]:
        return {"v": 1}

    def evaluate(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[AccuracyResult]:
        self.calls.append(len(plans))
        if self.fail_with:
            return [AccuracyResult.failure(self.fail_with, details={"deterministic": self.deterministic})
                    for _ in plans]
        return [AccuracyResult(1.0 / p[0].rate, details={"rate": p[0].rate}) for p in plans]


class CountingLatency:
    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def config(self) -> dict[str, Any]:
        return {}

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        self.calls += len(plans)
        return [LatencyResult(10.0 / p[0].rate, spread_ms=0.1) for p in plans]


def test_cache_round_trip(tmp_path: Path) -> None:
    with EvaluationCache(tmp_path / "c.sqlite") as cache:
        assert cache.get("k") is None
        assert cache.put("k", "accuracy", {"accuracy": 0.5, "details": {"a": [1, 2]}})
        assert not cache.put("k", "accuracy", {"accuracy": 0.9})  # first writer wins
        assert cache.get("k") == ("accuracy", {"accuracy": 0.5, "details": {"a": [1, 2]}})
        stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)
    with EvaluationCache(tmp_path / "c.sqlite") as again:
        assert again.get("k") is not None
        assert again._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_cache_key_changes_with_every_part() -> None:
    ctx, other = _context(0), _context(1)
    plan = _plan(ctx, 2.0)
    base = cache_key(ctx, plan, "accuracy", "oneshot", {"epochs": 2})
    assert base == cache_key(ctx, plan, "accuracy", "oneshot", {"epochs": 2})
    assert base != cache_key(other, plan, "accuracy", "oneshot", {"epochs": 2})
    assert base != cache_key(ctx, _plan(ctx, 3.0), "accuracy", "oneshot", {"epochs": 2})
    assert base != cache_key(ctx, plan, "latency", "oneshot", {"epochs": 2})
    assert base != cache_key(ctx, plan, "accuracy", "zeroshot", {"epochs": 2})
    assert base != cache_key(ctx, plan, "accuracy", "oneshot", {"epochs": 3})
    with pytest.raises(CacheError, match="JSON"):
        cache_key(ctx, plan, "accuracy", "x", {"bad": object()})


def test_cache_rejects_corrupt_file_untouched(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    data = b"this is not a database at all\x00\x01" * 100
    path.write_bytes(data)
    with pytest.raises(CacheError, match="not an SQLite database"):
        EvaluationCache(path)
    assert path.read_bytes() == data
    assert not (tmp_path / "junk.sqlite-wal").exists()


def test_cache_rejects_foreign_sqlite_untouched(tmp_path: Path) -> None:
    path = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER, name TEXT)")
    conn.execute("INSERT INTO users VALUES (1, 'ada')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(CacheError, match="not an npas-env evaluation cache"):
        EvaluationCache(path)
    assert path.read_bytes() == before


def test_cache_rejects_other_format_version(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    EvaluationCache(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE cache_meta SET value = '99' WHERE name = 'version'")
    conn.commit()
    conn.close()
    with pytest.raises(CacheError, match="version '99'"):
        EvaluationCache(path)


def _writer(path: str, worker: int, n: int) -> None:
    cache = EvaluationCache(path)
    for i in range(n):
        cache.put(f"w{worker}-{i}", "accuracy", {"accuracy": i / n})
        cache.put(f"shared-{i}", "accuracy", {"accuracy": worker})  # contended duplicate keys
    cache.close()


def test_cache_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "multi.sqlite")
    ctx = multiprocessing.get_context("fork")  # workers use only sqlite, never torch
    procs = [ctx.Process(target=_writer, args=(path, w, 50)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    with EvaluationCache(path) as cache:
        keys = [r[0] for r in cache._conn.execute("SELECT key FROM results")]
    assert len(keys) == len(set(keys)) == 4 * 50 + 50


_KILL_SCRIPT = """
import sys
from evaluators.cache import EvaluationCache
cache = EvaluationCache(sys.argv[1])
i = 0
while True:
    cache.put(f"k{i}", "latency", {"latency_ms": float(i + 1)})
    print(i, flush=True)
    i += 1
"""


def test_cache_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "kill.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acked = [int(proc.stdout.readline()) for _ in range(40)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with EvaluationCache(path) as cache:
        for i in acked:
            assert cache.get(f"k{i}") == ("latency", {"latency_ms": float(i + 1)})


def test_cached_accuracy_evaluates_only_misses(tmp_path: Path) -> None:
    ctx = _context()
    inner = CountingAccuracy()
    with EvaluationCache(tmp_path / "c.sqlite") as cache:
        cached = CachedAccuracy(inner, cache)
        p2, p4 = _plan(ctx, 2.0), _plan(ctx, 4.0)
        first = cached.evaluate(ctx, [p2, p2, p4])
        assert [r.accuracy for r in first] == [0.5, 0.5, 0.25]
        assert inner.calls == [2]  # duplicate within the batch evaluated once
        second = cached.evaluate(ctx, [p4, _plan(ctx, 5.0), p2])
        assert inner.calls == [2, 1]
        assert second[0] == first[2] and second[0].details == {"rate": 4.0}
        assert (cached.true_evaluations, cached.cache_hits) == (3, 2)
        assert cached.name == "counting" and cached.config() == {"v": 1}


def test_cached_failures_only_when_deterministic(tmp_path: Path) -> None:
    ctx = _context()
    plan = _plan(ctx, 2.0)
    with EvaluationCache(tmp_path / "c.sqlite") as cache:
        transient = CachedAccuracy(CountingAccuracy("timeout after 60 s"), cache)
        assert not transient.evaluate(ctx, [plan])[0].ok
        assert not transient.evaluate(ctx, [plan])[0].ok
        assert transient.true_evaluations == 2 and len(cache) == 0
        nan = CachedAccuracy(CountingAccuracy("NaN loss", deterministic=True), cache)
        nan.evaluate(ctx, [plan])
        assert nan.evaluate(ctx, [plan])[0].error == "NaN loss"
        assert nan.true_evaluations == 1 and len(cache) == 1


def test_cached_latency_shares_file_with_accuracy(tmp_path: Path) -> None:
    ctx = _context()
    plan = _plan(ctx, 2.0)
    with EvaluationCache(tmp_path / "c.sqlite") as cache:
        lat = CachedLatency(CountingLatency(), cache)
        CachedAccuracy(CountingAccuracy(), cache).evaluate(ctx, [plan])
        assert lat.measure(ctx, [plan])[0].latency_ms == 5.0
        assert lat.measure(ctx, [plan])[0].spread_ms == 0.1
        assert (lat.true_evaluations, lat.cache_hits) == (1, 1)


def _put_from_child(cache: EvaluationCache, key: str) -> None:
    cache.put(key, "accuracy", {"accuracy": 0.25})


def test_cache_handle_survives_fork_and_pickle(tmp_path: Path) -> None:
    import pickle

    with EvaluationCache(tmp_path / "c.sqlite") as cache:
        ctx = multiprocessing.get_context("fork")
        proc = ctx.Process(target=_put_from_child, args=(cache, "from-child"))
        proc.start()
        proc.join(timeout=60)
        assert proc.exitcode == 0 and cache.get("from-child") is not None
        clone = pickle.loads(pickle.dumps(cache))
        assert clone.get("from-child") == ("accuracy", {"accuracy": 0.25})
        clone.close()
