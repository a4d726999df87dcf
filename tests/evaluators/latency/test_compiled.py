"""CompiledLatency: batch in = batch out, pruned plans measured, failures as results."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

import npas_env  # noqa: F401  (import order: npas_env <-> evaluators cycle, see report)
from evaluators.context import ModelContext
from evaluators.registry import make_latency
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
