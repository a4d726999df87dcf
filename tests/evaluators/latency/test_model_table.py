"""Model-specific (in-context) latency tables: build, prediction = base + entries, resume, mismatch."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import npas_env  # noqa: F401  (import first: evaluators.context <-> npas_env.env cycle)
from evaluators.context import ModelContext
from evaluators.latency.compiled import CompiledLatency
from evaluators.latency.lut import LookupTableLatency
from evaluators.latency.lut_table import TableMismatch
from evaluators.latency.model_builder import build_model_lut, layer_actions, spread_order
from evaluators.latency.model_table import ModelLatencyTable
from evaluators.latency.predictor import LatencyPredictor
from evaluators.latency.profiling import ModelTiming
from npas_env.errors import CacheError
from npas_env.layers import extract_layers
from npas_env.plan import FilterType, LayerAction, PruningPlan, Scheme
from npas_env.pruning.apply import apply_plan

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _context(channels: int = 16, name: str = "tiny") -> ModelContext:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)).eval()
    x = torch.randn(1, 3, 24, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ModelContext(model, x, tuple(extract_layers(model, x)), name=name)


class FakeRunner:
    """Deterministic 'profile': each layer op costs its kept weights / 1e5 ms, plus 0.01 ms of rest."""

    version = "fake/1"

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, model: nn.Module, x: torch.Tensor, masks: dict) -> ModelTiming:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("gcc fell over")
        ops = {}
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                kept = float(masks[name].sum()) if name in masks else float(m.weight.numel())
                ops[name] = [kept / 1e5] * 3
        wall = sum(v[0] for v in ops.values()) + 0.01
        return ModelTiming(wall, 0.0, ops, "fake", [wall] * 3)


class SlowingRunner(FakeRunner):
    """FakeRunner on a machine that runs 1.5x slower after the dense build, with a reference."""

    def set_reference(self, model: nn.Module, x: torch.Tensor) -> None:
        self.reference = FakeRunner()(model, x, {}).latency_ms

    def __call__(self, model: nn.Module, x: torch.Tensor, masks: dict) -> ModelTiming:
        t = super().__call__(model, x, masks)
        slow = 1.0 if self.calls == 1 else 1.5
        return ModelTiming(t.latency_ms * slow, 0.0, {k: [v * slow for v in r] for k, r in t.layer_rounds_ms.items()},
                           "fake", [w * slow for w in t.wall_rounds_ms], [self.reference * slow] * 3)


class SkipRunner(FakeRunner):
    """FakeRunner whose skipped convs (identities) cost 0.002 ms each in the whole call but in
    no op of a layer (as their BatchNorm and residual add do in the compiled runtime)."""

    def __call__(self, model: nn.Module, x: torch.Tensor, masks: dict) -> ModelTiming:
        t = super().__call__(model, x, masks)
        extra = 0.002 * sum(isinstance(m, nn.Identity) for m in model.modules())
        return ModelTiming(t.latency_ms + extra, 0.0, t.layer_rounds_ms, "fake",
                           [w + extra for w in t.wall_rounds_ms])


def test_model_table_charges_skip_leftovers_to_the_skipped_layers(tmp_path) -> None:
    ctx = _context()
    table = build_model_lut(ctx, tmp_path / "m.json", runner=SkipRunner(), rates=(2.0,),
                            progress=False)
    skips = {n: a for n, a in table.entries if a.filter_type is FilterType.SKIP}
    assert len(skips) == 2  # the two 16 -> 16 convs
    for name, action in skips.items():
        assert table.entries[(name, action)].latency_ms == pytest.approx(0.002)
    assert table.base_ms == pytest.approx(0.01)
    plan = _plan(ctx, [skips.get(n, LayerAction()) for n in ctx.layer_names])
    pruned = SkipRunner()(*_applied(ctx, plan))
    assert LookupTableLatency(table).measure(ctx, [plan])[0].latency_ms == pytest.approx(
        pruned.latency_ms)


def _applied(ctx: ModelContext, plan: PruningPlan) -> tuple[nn.Module, torch.Tensor, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = apply_plan(ctx.model, plan, list(ctx.layers))
    return pruned.model, ctx.example_input, pruned.masks


def test_model_table_rescales_builds_to_the_dense_build(tmp_path) -> None:
    ctx = _context()
    plain = build_model_lut(ctx, tmp_path / "a.json", runner=FakeRunner(), rates=(2.0,), progress=False)
    anchored = build_model_lut(ctx, tmp_path / "b.json", runner=SlowingRunner(), rates=(2.0,), progress=False)
    assert set(plain.entries) == set(anchored.entries)
    for key, entry in plain.entries.items():
        assert anchored.entries[key].latency_ms == pytest.approx(entry.latency_ms)
    assert anchored.base_ms == pytest.approx(plain.base_ms)


def _plan(ctx: ModelContext, actions) -> PruningPlan:
    return PruningPlan(tuple(actions), ctx.layer_names, ctx.arch_fingerprint)


def test_model_table_prediction_is_base_plus_entries(tmp_path) -> None:
    ctx = _context()
    table = build_model_lut(ctx, tmp_path / "m.json", runner=FakeRunner(), rates=(2.0, 5.0),
                            max_builds=4, progress=False)
    assert table.base_ms == pytest.approx(0.01) and len(table.builds) == 4
    assert table.machine["build"]["settings_per_min"] > 0
    lut = LookupTableLatency(tmp_path / "m.json")
    plans, walls = table.build_plans()
    for plan, result in zip(plans, lut.measure(ctx, plans), strict=True):
        expected = table.base_ms + sum(table.entries[(n, a)].latency_ms for n, a in plan.items())
        assert result.ok and result.latency_ms == pytest.approx(expected)
        assert not result.extrapolated
    assert [r.latency_ms for r in lut.measure(ctx, plans)] == pytest.approx(walls)  # additive fake
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["format"] == "npas-model-latency-table" and data["arch_fingerprint"] == ctx.arch_fingerprint


def test_model_table_interpolates_missing_rates_and_flags_them(tmp_path) -> None:
    ctx = _context()
    table = build_model_lut(ctx, tmp_path / "m.json", runner=FakeRunner(), rates=(2.0, 5.0),
                            progress=False)
    lut = LookupTableLatency(table)
    spec = ctx.layers[1]
    at = {r: lut.layer_ms(spec, LayerAction(Scheme.UNSTRUCTURED, r)) for r in (2.0, 3.0, 5.0, 10.0)}
    assert not at[2.0][1] and at[3.0][1] and at[10.0][1]
    assert at[2.0][0] > at[3.0][0] > at[5.0][0] > at[10.0][0] > 0


def test_model_table_build_resumes(tmp_path) -> None:
    ctx = _context()
    out = tmp_path / "m.json"
    runner = FakeRunner(fail_at=3)
    with pytest.warns(UserWarning, match="failed"):
        first = build_model_lut(ctx, out, runner=runner, rates=(2.0,), max_builds=5, progress=False)
    n_first, builds_first = len(first), len(first.builds)
    assert builds_first == 4  # one of five failed
    second = build_model_lut(ctx, out, runner=FakeRunner(), rates=(2.0,), progress=False)
    wanted = {(n, a) for n, acts in zip(ctx.layer_names, layer_actions(ctx, (2.0,)), strict=True) for a in acts}
    assert set(second.entries) == wanted and n_first < len(second)
    assert second.builds[:builds_first] == first.builds  # kept, not redone
    again = FakeRunner()
    build_model_lut(ctx, out, runner=again, rates=(2.0,), progress=False)
    assert again.calls == 0  # complete: nothing left to measure


def test_model_table_for_another_model_is_rejected(tmp_path) -> None:
    ctx, other = _context(16), _context(32, name="wider")
    build_model_lut(ctx, tmp_path / "m.json", runner=FakeRunner(), rates=(2.0,), max_builds=2, progress=False)
    lut = LookupTableLatency(tmp_path / "m.json")
    [result] = lut.measure(other, [PruningPlan.dense(other.layer_names, other.arch_fingerprint)])
    assert not result.ok and "another model" in result.error and "arch fingerprint" in result.error
    with pytest.raises(TableMismatch, match="another model"):
        ModelLatencyTable.load(tmp_path / "m.json", arch_fingerprint=other.arch_fingerprint)
    with pytest.raises(TableMismatch, match="another model"):
        build_model_lut(other, tmp_path / "m.json", runner=FakeRunner(), progress=False)
    with pytest.raises(TableMismatch, match="device"):
        build_model_lut(ctx, tmp_path / "m.json", runner=FakeRunner(), device="phone", progress=False)


def test_model_table_unreadable_file(tmp_path) -> None:
    path = tmp_path / "m.json"
    build_model_lut(_context(), path, runner=FakeRunner(), rates=(2.0,), max_builds=1, progress=False)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CacheError, match="truncated"):
        LookupTableLatency(path)


def test_spread_order_covers_the_range_first() -> None:
    assert spread_order([1.0, 2.0, 2.5, 3.0, 5.0, 7.0, 10.0])[:4] == [1.0, 5.0, 2.0, 10.0]


@needs_gcc
def test_model_table_predicts_compiled_latency(tmp_path) -> None:
    """Honest check on a real compiled model: plans mixing entries of different builds."""
    ctx = _context(32)
    table = build_model_lut(ctx, tmp_path / "m.json", rates=(4.0,), max_builds=4, rounds=5, progress=False)
    lut = LookupTableLatency(table)
    plans, _ = table.build_plans()
    rng = np.random.default_rng(0)
    mixed = [_plan(ctx, [plans[int(rng.integers(len(plans)))].actions[i] for i in range(len(ctx.layers))])
             for _ in range(3)]
    # the table's own dense time anchors the measurement too: a second dense timing taken
    # now would add its own noise (+-15 % between 0.2 s medians on one host) to every plan
    measured = CompiledLatency(repeats=50, min_seconds=0.2, reference_ms=table.dense_ms).measure(ctx, mixed)
    predicted = lut.measure(ctx, mixed)
    assert all(r.ok for r in measured + predicted), [r.error for r in measured + predicted]
    errors = [abs(p.latency_ms - m.latency_ms) / m.latency_ms for p, m in zip(predicted, measured, strict=True)]
    assert float(np.median(errors)) < 0.3, (errors, [m.latency_ms for m in measured])


def test_predictor_fits_and_calibrates_on_a_model_table(tmp_path) -> None:
    ctx = _context()
    table = build_model_lut(ctx, tmp_path / "m.json", runner=FakeRunner(), rates=(2.0, 5.0), progress=False)
    pred = LatencyPredictor(n_estimators=20).fit_model_table(table, ctx)
    assert pred.report["calibration"]["n"] == len(table.builds)
    plans, walls = table.build_plans()
    got = [r.latency_ms for r in pred.measure(ctx, plans)]
    assert np.median(np.abs(np.asarray(got) - walls) / walls) < 0.3
