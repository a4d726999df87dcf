"""Tests of the phase-3 pruning algorithms and the algorithm selection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from evaluators.accuracy.algorithms import TrainSettings, algorithm_names, make_algorithm
from evaluators.accuracy.algorithms.group_lasso import ReweightedGroupLasso, group_ids
from evaluators.accuracy.phase3 import phase3, realized_plan
from evaluators.context import ModelContext
from evaluators.results import LatencyResult
from npas_env.errors import EvaluatorNotFound, InvalidConfig, InvalidPlan
from npas_env.plan import LayerAction, PruningPlan, Scheme

torch.set_num_threads(1)
FAST = TrainSettings(lr=0.02, batch_size=32, max_train_batches=3)


class RateLatency:
    """Fake latency: 10 ms / mean achieved rate."""

    name = "rate"

    def config(self) -> dict[str, Any]:
        return {}

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        return [LatencyResult(10.0 * len(p) / sum(a.rate for a in p)) for p in plans]


def _mask_rate(masks: dict[str, torch.Tensor]) -> float:
    return sum(m.numel() for m in masks.values()) / sum(int(m.sum()) for m in masks.values())


def test_algorithm_registry() -> None:
    assert algorithm_names() == ["admm", "group_lasso", "magnitude"]
    with pytest.raises(EvaluatorNotFound, match="did you mean 'admm'"):
        make_algorithm("adm")


@pytest.mark.parametrize("name,kwargs", [("magnitude", {}), ("magnitude", {"mode": "gradual"}),
                                         ("admm", {}), ("group_lasso", {"rate_mode": "plan"})])
def test_algorithm_reaches_plan_rate_and_keeps_masks(name, kwargs, context, data, make_plan) -> None:
    plan = make_plan(context, Scheme.BLOCK_PUNCHED, 3.0, (4, 4))
    result = make_algorithm(name, **kwargs).run(context.model, context.layers, plan, data, epochs=2,
                                                settings=FAST)
    assert result.ok and 0.0 <= result.accuracy <= 1.0, result.error
    assert set(result.masks) == set(context.layer_names)
    assert _mask_rate(result.masks) == pytest.approx(3.0, rel=0.15)
    for module_name, mask in result.masks.items():  # pruned weights stay zero after retraining
        weight = result.model.get_submodule(module_name).weight
        assert torch.all(weight[~mask] == 0)


def test_algorithms_are_deterministic(context, data, make_plan) -> None:
    plan = make_plan(context, Scheme.UNSTRUCTURED, 4.0)
    runs = [make_algorithm("admm").run(context.model, context.layers, plan, data, epochs=2,
                                       settings=FAST) for _ in range(2)]
    assert runs[0].accuracy == runs[1].accuracy
    assert all(torch.equal(runs[0].masks[k], runs[1].masks[k]) for k in runs[0].masks)


def test_group_lasso_rates_emerge(context, data, make_plan) -> None:
    plan = make_plan(context, Scheme.BLOCK_PUNCHED, 2.0, (2, 2))
    settings = TrainSettings(lr=0.02, batch_size=32)
    auto = ReweightedGroupLasso(lam=5e-2, threshold=0.3, rate_mode="threshold", reweight_every=2)
    rates = auto.run(context.model, context.layers, plan, data, epochs=2, settings=settings
                     ).details["layer_rates"]
    assert len(set(rates.values())) > 1 and max(rates.values()) > 1.2  # per-layer rates differ
    floor = ReweightedGroupLasso(lam=5e-2, threshold=0.3, reweight_every=2)
    result = floor.run(context.model, context.layers, plan, data, epochs=2, settings=settings)
    assert result.ok and all(r >= 2.0 * 0.9 for r in result.details["layer_rates"].values())


def test_group_ids_block_punched_layout() -> None:
    action = LayerAction(Scheme.BLOCK_PUNCHED, 2.0, (2, 4))
    ids, count = group_ids((4, 8, 3, 3), action)
    assert count == 2 * 2 * 9 and ids.shape == (4, 8, 3, 3)
    assert ids[0, 0, 1, 1] == ids[1, 3, 1, 1] != ids[2, 0, 1, 1]
    assert ids[0, 0, 0, 0] != ids[0, 0, 0, 1]


def test_phase3_picks_best_within_budget(context, data, make_plan) -> None:
    plan = make_plan(context, Scheme.UNSTRUCTURED, 2.0)
    result = phase3(context, plan, data, candidates=("magnitude", "admm"), epochs=1, settings=FAST,
                    latency_evaluator=RateLatency(), latency_budget_ms=6.0)
    assert result.ok and result.best_name in ("magnitude", "admm") and result.meets_budget
    assert [row["name"] for row in result.table] == ["magnitude", "admm"]
    best = max(result.table, key=lambda r: r["accuracy"])
    assert result.accuracy == best["accuracy"] and result.latency_ms == pytest.approx(5.0, rel=0.1)
    assert "| magnitude" in result.to_markdown()


def test_phase3_nothing_within_budget_returns_fastest(context, data, make_plan) -> None:
    plan = make_plan(context, Scheme.UNSTRUCTURED, 2.0)
    result = phase3(context, plan, data, candidates=("magnitude",), epochs=1, settings=FAST,
                    latency_evaluator=RateLatency(), latency_budget_ms=1.0)
    assert not result.meets_budget and result.best_name == "magnitude"


def test_phase3_misuse_raises(context, data, make_plan) -> None:
    with pytest.raises(InvalidPlan):
        phase3(context, PruningPlan.dense(["x"], "0" * 16), data)
    with pytest.raises(InvalidConfig):
        phase3(context, make_plan(context), data, latency_budget_ms=3.0)


def test_realized_plan_uses_mask_rates(context, make_plan) -> None:
    plan = make_plan(context, Scheme.UNSTRUCTURED, 2.0)
    masks = {name: torch.ones(context.model.get_submodule(name).weight.shape, dtype=torch.bool)
             for name in context.layer_names}
    first = context.layer_names[0]
    masks[first].view(-1)[: masks[first].numel() * 3 // 4] = False
    realized = realized_plan(plan, context, plan.actions, masks)
    assert realized[0].rate == pytest.approx(4.0) and realized[1].rate == 1.0
