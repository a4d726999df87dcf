"""The ``predictor`` latency evaluator: fit on a synthetic table, error report, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluators.latency.lut import Query
from evaluators.latency.lut_table import LatencyTable
from evaluators.latency.predictor import LatencyPredictor, error_report, query_macs
from evaluators.registry import make_latency
from npas_env.errors import CacheError, InvalidConfig
from npas_env.plan import LayerAction, PruningPlan

from .conftest import make_table, synthetic_ms

FAST = {"n_estimators": 80, "max_depth": 3, "learning_rate": 0.15}


@pytest.fixture(scope="module")
def predictor() -> LatencyPredictor:
    return LatencyPredictor(table=make_table(), **FAST)


def test_predictor_fits_and_reports_error(predictor: LatencyPredictor) -> None:
    holdout = predictor.report["holdout"]
    assert holdout["n"] > 10
    assert holdout["mape_pct"] < 15.0
    assert 0.0 <= holdout["within_10pct"] <= 1.0
    assert predictor.report["train"]["mape_pct"] < 5.0


def test_predictor_generalizes_to_unseen_shapes(predictor: LatencyPredictor) -> None:
    queries = [Query(t, c, f, s, r, b) for t in ("conv3x3", "conv1x1") for c in (24.0, 45.0)
               for f in (6.0, 12.0) for s, r, b in (("dense", 1.0, None), ("unstructured", 3.0, None),
                                                    ("filter", 4.0, None))]
    truth = [synthetic_ms(query_macs(q), q.rate, q.scheme) for q in queries]
    report = error_report(predictor._predict_queries(queries), truth)
    assert report["mape_pct"] < 15.0


def test_predictor_measure_contract(predictor: LatencyPredictor, context) -> None:
    names = context.layer_names
    plan = PruningPlan(tuple(LayerAction("filter", 5.0) for _ in names), names, context.arch_fingerprint)
    dense = PruningPlan.dense(names, context.arch_fingerprint)
    results = predictor.measure(context, [plan, dense])
    assert len(results) == 2 and all(r.ok for r in results)
    assert results[0].latency_ms < results[1].latency_ms


def test_predictor_save_load_round_trip(predictor: LatencyPredictor, context, tmp_path) -> None:
    path = tmp_path / "pred.json"
    predictor.save(path)
    assert json.loads(path.read_text())["format"] == "npas-latency-predictor"
    loaded = make_latency("predictor", path=path)
    plan = PruningPlan.dense(context.layer_names, context.arch_fingerprint)
    a = predictor.measure(context, [plan])[0].latency_ms
    b = loaded.measure(context, [plan])[0].latency_ms
    assert a == pytest.approx(b, rel=1e-12)
    assert loaded.report == json.loads(json.dumps(predictor.report))


@pytest.mark.parametrize("content", [b"\x80\x04\x95pickle", b'{"format": "npas-latency-predictor", "version": 1}',
                                     b'{"format": "npas-latency-table"}', b"{"])
def test_predictor_rejects_bad_files(tmp_path, content: bytes) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(content)
    with pytest.raises(CacheError):
        LatencyPredictor(path)


def test_predictor_calibration_and_contract(predictor: LatencyPredictor, context) -> None:
    names = context.layer_names
    plans = [PruningPlan(tuple(LayerAction("filter", r) for _ in names), names) for r in (1.0, 2.0, 5.0)]
    sums = [predictor.plan_ms(context, p) for p in plans]
    report = predictor.calibrate(context, plans, [2 * s + 0.5 for s in sums])
    assert report["mape_pct"] < 1.0
    results = predictor.measure(context, [*plans, PruningPlan(plans[0].actions[:1], names[:1])])
    assert len(results) == 4 and not results[-1].ok
    assert results[0].latency_ms == pytest.approx(2 * sums[0] + 0.5, rel=1e-6)
    predictor.calibration = (1.0, 0.0)


def test_predictor_misuse() -> None:
    with pytest.raises(InvalidConfig, match="not fitted"):
        LatencyPredictor().save("x.json")
    tiny = LatencyTable("d", "b")
    with pytest.raises(InvalidConfig, match="at least 5"):
        LatencyPredictor().fit(tiny)
    assert error_report([1.0, 1.2], [1.0, 1.0])["within_10pct"] == 0.5
    assert np.isnan(error_report([], [])["mape_pct"])
