"""CompiledLatency: batch in = batch out, pruned plans measured, failures as results."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch
from torch import nn

import npas_env  # noqa: F401  (import order: npas_env <-> evaluators cycle, see report)
from compiler_backend.threads import AdaptiveThreads, FixedThreads
from evaluators.context import ModelContext
from evaluators.registry import make_latency
from npas_env.errors import InvalidConfig
from npas_env.layers import extract_layers
from npas_env.plan import LayerAction, PruningPlan, Scheme

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _context() -> ModelContext:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 10)).eval()
    x = torch.randn(1, 3, 8, 8)
    return ModelContext(model, x, tuple(extract_layers(model, x)), name="tiny")


def test_compiled_latency_measures_plans(tmp_path) -> None:
    ctx = _context()
    names = ctx.layer_names
    dense = PruningPlan.dense(names, ctx.arch_fingerprint)
    pruned = PruningPlan((LayerAction(), LayerAction(Scheme.UNSTRUCTURED, 4.0), LayerAction()),
                         names, ctx.arch_fingerprint)
    evaluator = make_latency("compiled", warmup=1, repeats=3, min_seconds=0.0, cache_dir=tmp_path)
    results = evaluator.measure(ctx, [dense, pruned])
    assert len(results) == 2
    assert all(r.ok and r.latency_ms > 0 and r.threads == 1 for r in results), results
    assert set(results[1].details["layers_ms"]) == set(names)
    assert evaluator.config()["threads"] == 1


def test_compiled_latency_failure_is_a_result(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "missing-cc"))
    ctx = _context()
    evaluator = make_latency("compiled", warmup=0, repeats=1, cache_dir=tmp_path)
    [result] = evaluator.measure(ctx, [PruningPlan.dense(ctx.layer_names, ctx.arch_fingerprint)])
    assert not result.ok and "gcc" in result.error


def test_compiled_latency_anchors_to_the_dense_model(tmp_path) -> None:
    ctx = _context()
    names = ctx.layer_names
    dense = PruningPlan.dense(names, ctx.arch_fingerprint)
    evaluator = make_latency("compiled", warmup=1, repeats=6, rounds=3, min_seconds=0.0,
                             cache_dir=tmp_path, reference_ms=2.0)
    [result] = evaluator.measure(ctx, [dense])
    d = result.details
    assert result.ok and d["reference_ms"] == 2.0 and d["raw_ms"] > 0
    assert result.latency_ms == pytest.approx(2.0 * d["ratio_to_dense"])
    assert 0.5 < d["ratio_to_dense"] < 2.0  # the dense plan against itself
    clone = pickle.loads(pickle.dumps(evaluator))  # loaded reference libraries are not pickled
    assert clone.config() == evaluator.config()
    plain = make_latency("compiled", warmup=1, repeats=3, min_seconds=0.0, cache_dir=tmp_path,
                         anchor=False)
    [raw] = plain.measure(ctx, [dense])
    assert raw.ok and "ratio_to_dense" not in raw.details


def test_compiled_latency_rejects_bad_anchor_settings() -> None:
    with pytest.raises(InvalidConfig, match="CompiledLatency"):
        make_latency("compiled", rounds=0)
    with pytest.raises(InvalidConfig, match="CompiledLatency"):
        make_latency("compiled", reference_ms=-1.0)


def test_compiled_latency_adaptive_threads(tmp_path) -> None:
    ctx = _context()
    dense = PruningPlan.dense(ctx.layer_names, ctx.arch_fingerprint)
    fixed = make_latency("compiled", threads=2, warmup=1, repeats=3, min_seconds=0.0,
                         cache_dir=tmp_path, anchor=False)
    adaptive = make_latency("compiled", threads=2, adaptive_threads=True, warmup=1, repeats=6,
                            min_seconds=0.0, cache_dir=tmp_path, anchor=False)
    assert "adaptive_threads" not in fixed.config()  # earlier cache keys stay valid
    assert adaptive.config()["adaptive_threads"] is True
    [result] = adaptive.measure(ctx, [dense])
    assert result.ok and result.latency_ms > 0 and result.threads == 2
    compiled = adaptive._compile(ctx.model, ctx.example_input, None)
    assert isinstance(compiled.thread_policy, AdaptiveThreads)
    assert isinstance(fixed._compile(ctx.model, ctx.example_input, None).thread_policy,
                      FixedThreads)


def test_compiled_latency_banded(tmp_path) -> None:
    ctx = _context()
    dense = PruningPlan.dense(ctx.layer_names, ctx.arch_fingerprint)
    banded = make_latency("compiled", threads=2, banded=True, warmup=1, repeats=3,
                          min_seconds=0.0, cache_dir=tmp_path, anchor=False)
    assert banded.config()["banded"] is True
    [result] = banded.measure(ctx, [dense])
    assert result.ok and result.latency_ms > 0 and result.threads == 2
    assert banded._compile(ctx.model, ctx.example_input, None).program.source.count("band_join")
    wide = nn.Sequential(nn.Conv2d(3, 4, 5, padding=2), nn.AdaptiveAvgPool2d(1)).eval()
    refused = banded.measure_model(wide, torch.randn(1, 3, 8, 8))
    assert not refused.ok and "kernel height 5" in str(refused.error)
    with pytest.raises(InvalidConfig, match="2 threads"):
        make_latency("compiled", threads=1, banded=True)
