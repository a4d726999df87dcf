"""The latency table file, the ``lut`` evaluator's interpolation, and the resumable builder."""

from __future__ import annotations

import json
import math

import pytest

from evaluators.latency.lut import LookupTableLatency, Query, TableModel, layer_queries
from evaluators.latency.lut_builder import GridSpec, build_lut
from evaluators.latency.lut_table import LatencyTable, LayerSetting, TableMismatch
from evaluators.registry import make_latency
from npas_env.errors import CacheError
from npas_env.plan import FilterType, LayerAction, PruningPlan

from .conftest import make_table, synthetic_ms


def _query(s: LayerSetting) -> Query:
    return Query(s.layer_type, float(s.channels), float(s.fmap), s.scheme, s.rate, s.block)


def test_table_round_trip(table: LatencyTable, tmp_path) -> None:
    path = tmp_path / "t.json"
    table.save(path)
    loaded = LatencyTable.load(path, device="fake", backend="fake/1")
    assert loaded.to_dict() == table.to_dict()
    data = json.loads(path.read_text())
    assert data["format"] == "npas-latency-table" and data["version"] == 1
    assert data["noise"]["entries"] == len(table)


def test_lut_exact_at_grid_points(table: LatencyTable) -> None:
    model = TableModel(table)
    for entry in table.entries.values():
        ms, flagged = model.lookup(_query(entry.setting))
        assert ms == pytest.approx(entry.latency_ms, rel=1e-9)
        assert not flagged


@pytest.mark.parametrize("scheme, rate, block", [("dense", 1.0, None), ("pattern", 3.0, None),
                                                 ("block_punched", 2.0, (8, 16))])
def test_lut_monotone_between_grid_points(table: LatencyTable, scheme: str, rate: float, block) -> None:
    model = TableModel(table)
    values = []
    for c in [16 * 2 ** (i / 8) for i in range(17)]:   # 16 .. 64, off-grid in between
        ms, flagged = model.lookup(Query("conv3x3", c, 6.0, scheme, rate, block))
        assert not flagged
        values.append(ms)
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    by_rate = [model.lookup(Query("conv3x3", 40.0, 8.0, "pattern", r, None))[0]
               for r in (1.0, 1.5, 2.0, 3.0, 5.0)]
    assert all(b < a for a, b in zip(by_rate, by_rate[1:], strict=False))


def test_lut_interpolation_is_close_to_the_law(table: LatencyTable) -> None:
    model = TableModel(table)
    s = LayerSetting("conv3x3", 45, 11, "dense")
    ms, _ = model.lookup(Query("conv3x3", 45.0, 11.0, "dense", 1.0, None))
    assert ms == pytest.approx(synthetic_ms(s.macs, 1.0, "dense"), rel=0.1)


def test_lut_extrapolation_is_flagged(table: LatencyTable) -> None:
    model = TableModel(table)
    inside, _ = model.lookup(Query("conv3x3", 64.0, 16.0, "dense", 1.0, None))
    outside, flagged = model.lookup(Query("conv3x3", 256.0, 16.0, "dense", 1.0, None))
    assert flagged and outside > inside
    _, flagged = model.lookup(Query("conv3x3", 32.0, 8.0, "block_punched", 2.0, (4, 4)))
    assert flagged  # block size not in the table: nearest one, flagged


def test_lut_wrong_device_or_backend_refused_unless_forced(table: LatencyTable, tmp_path) -> None:
    path = tmp_path / "t.json"
    table.save(path)
    with pytest.raises(TableMismatch, match="device 'fake'"):
        LookupTableLatency(path, device="phone")
    with pytest.raises(TableMismatch, match="backend"):
        LookupTableLatency(path, backend="other/2")
    with pytest.warns(UserWarning, match="force=True"):
        LookupTableLatency(path, device="phone", force=True)


@pytest.mark.parametrize("content", [b"", b'{"format": "npas-latency-table", "vers', b"\x80\x04\x95 pickle",
                                     b'{"format": "something-else"}', b'[1, 2, 3]'])
def test_lut_unreadable_files_raise_clear_errors(tmp_path, content: bytes) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(CacheError, match="latency table"):
        LatencyTable.load(path)


def test_lut_truncated_table_file(table: LatencyTable, tmp_path) -> None:
    path = tmp_path / "t.json"
    table.save(path)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CacheError, match="truncated"):
        LookupTableLatency(path)


def test_lut_measure_contract(table: LatencyTable, context) -> None:
    lut = make_latency("lut", table=table)
    names = context.layer_names
    dense = PruningPlan.dense(names, context.arch_fingerprint)
    pruned = PruningPlan(tuple(LayerAction("unstructured", 5.0) for _ in names), names, context.arch_fingerprint)
    bad = PruningPlan(dense.actions[:2], names[:2])
    results = lut.measure(context, [dense, pruned, bad])
    assert len(results) == 3
    assert results[0].ok and results[1].ok and not results[2].ok
    assert results[1].latency_ms < results[0].latency_ms
    assert lut.config()["device"] == "fake"


def test_lut_filter_types_map_to_effective_layers(context) -> None:
    spec = next(s for s in context.layers if s.kernel_size == (3, 3) and s.in_channels == 16 and s.groups == 1)
    assert layer_queries(spec, LayerAction(filter_type=FilterType.SKIP)) == []
    assert [q.layer_type for q in layer_queries(spec, LayerAction(filter_type=FilterType.CONV1X1))] == ["conv1x1"]
    parts = layer_queries(spec, LayerAction("unstructured", 2.0, filter_type=FilterType.DW_SEPARABLE))
    assert [(q.layer_type, q.scheme) for q in parts] == [("dw3x3", "dense"), ("conv1x1", "unstructured")]
    assert math.isclose(layer_queries(spec, LayerAction())[0].channels, 16.0)


def test_build_lut_resumes_and_reports_rate(tmp_path) -> None:
    grid = GridSpec(layer_types=("conv1x1", "fc"), channels=(16, 32), fmaps=(4,), rates=(2.0,),
                    block_sizes=((4, 4),))
    calls: list[int] = []

    def runner(settings, cascade):
        calls.append(len(settings))
        if len(calls) == 2:
            raise RuntimeError("device fell asleep")
        return [(synthetic_ms(s.macs, s.rate, s.scheme), 0.01, 5) for s in settings]

    runner.version = "fake/1"  # type: ignore[attr-defined]
    out = tmp_path / "lut.json"
    with pytest.warns(UserWarning, match="failed"):
        first = build_lut("fake", out, grid, runner=runner, progress=False)
    assert 0 < len(first) < len(grid.settings())
    assert first.machine["build"]["settings_per_min"] > 0
    n_calls = len(calls)
    second = build_lut("fake", out, grid, runner=runner, progress=False)
    assert len(second) == len(grid.settings())
    assert sum(calls[n_calls:]) == len(grid.settings()) - len(first)  # only the missing ones again
    with pytest.raises(TableMismatch):
        build_lut("other-device", out, grid, runner=runner, progress=False)


def test_build_lut_eager_backend_measures(tmp_path) -> None:
    grid = GridSpec(layer_types=("conv3x3",), channels=(16,), fmaps=(4,), rates=(2.0,),
                    schemes=(("conv3x3", ("pattern",)),))
    table = build_lut("here", tmp_path / "lut.json", grid, backend="eager", progress=False, cascade=3)
    assert len(table) == 2
    assert all(e.latency_ms > 0 and e.runs > 0 for e in table.entries.values())
    assert table.backend.startswith("torch-eager")
    assert make_table().device == "fake"
