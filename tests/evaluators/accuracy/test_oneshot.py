"""Tests of the one-shot and zero-shot accuracy evaluators."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from evaluators.accuracy.base import AccuracyEvaluator
from evaluators.accuracy.oneshot import OneShotAccuracy
from evaluators.accuracy.zeroshot import ZeroShotAccuracy
from evaluators.cache import EvaluationCache
from evaluators.cached import CachedAccuracy
from evaluators.registry import make_accuracy
from npas_env.data import DataSplits, make_loader
from npas_env.errors import InvalidConfig, InvalidData, InvalidPlan
from npas_env.plan import PruningPlan, Scheme
from npas_env.zoo.train import evaluate_accuracy

torch.set_num_threads(1)


@pytest.mark.parametrize("name", ["oneshot", "zeroshot"])
def test_registered_evaluator_contract(name, context, data, make_plan) -> None:
    kwargs = {"epochs": 1} if name == "oneshot" else {}
    evaluator = make_accuracy(name, dataset=data, **kwargs)
    assert isinstance(evaluator, AccuracyEvaluator) and evaluator.name == name
    plans = [make_plan(context, rate=r) for r in (1.0, 2.0, 4.0)]
    results = evaluator.evaluate(context, plans)
    assert len(results) == 3 and all(r.ok for r in results)
    assert evaluator.evaluate(context, []) == []
    assert results[1].details["achieved_rate"] == pytest.approx(2.0, rel=0.1)


def test_oneshot_deterministic_and_detailed(context, data, make_plan) -> None:
    plan = make_plan(context, Scheme.PATTERN, 3.0)
    first = OneShotAccuracy(data, epochs=2, seed=3).evaluate(context, [plan])[0]
    second = OneShotAccuracy(data, epochs=2, seed=3).evaluate(context, [plan])[0]
    assert first.ok and first.accuracy == second.accuracy
    assert first.epochs == 2.0 and first.details["epochs_run"] == 2.0
    assert first.details["seconds"] > 0 and math.isfinite(first.details["train_loss"])
    assert first.details["achieved_rate"] > 1.5


def test_oneshot_does_not_touch_the_pretrained_model(context, data, make_plan) -> None:
    before = context.weights_fingerprint()
    context.extras.pop("weights_fingerprint")
    OneShotAccuracy(data, epochs=1).evaluate(context, [make_plan(context, rate=5.0)])
    assert context.weights_fingerprint() == before


def test_oneshot_finetune_recovers_accuracy(context, data, make_plan) -> None:
    plan = make_plan(context, Scheme.FILTER, 2.0)
    zero = ZeroShotAccuracy(data).evaluate(context, [plan])[0].accuracy
    tuned = OneShotAccuracy(data, epochs=3, lr=0.05).evaluate(context, [plan])[0].accuracy
    assert tuned >= zero


def test_oneshot_early_stopping_reports_best(context, data, make_plan) -> None:
    res = OneShotAccuracy(data, epochs=4, early_stopping_patience=1, max_train_batches=2).evaluate(
        context, [make_plan(context, rate=2.0)])[0]
    history = res.details["val_history"]
    assert 1 <= len(history) <= 4 and res.accuracy == max(history)


def test_oneshot_nan_loss_is_deterministic_failure(context, data, make_plan) -> None:
    bad_train = TensorDataset(torch.full((8, 1, 8, 8), float("nan")), torch.zeros(8, dtype=torch.int64))
    splits = DataSplits.from_datasets(bad_train, data.val, data.test, num_classes=10)
    res = OneShotAccuracy(splits, epochs=1).evaluate(context, [make_plan(context, rate=2.0)])[0]
    assert not res.ok and res.error == "NaN loss at epoch 0 step 0"
    assert res.details["deterministic"] is True


def test_oneshot_rejects_plan_of_other_model(context, data) -> None:
    plan = PruningPlan.dense(["a", "b"], "feedfacefeedface")
    with pytest.raises(InvalidPlan, match="another model"):
        OneShotAccuracy(data).evaluate(context, [plan])


def test_oneshot_rejects_mismatched_dataset(context, make_plan) -> None:
    ds = TensorDataset(torch.zeros(4, 3, 16, 16), torch.zeros(4, dtype=torch.int64))
    splits = DataSplits.from_datasets(ds, ds, ds, num_classes=10)
    with pytest.raises(InvalidData, match="shape"):
        OneShotAccuracy(splits).evaluate(context, [make_plan(context)])


def test_oneshot_rejects_bad_config() -> None:
    with pytest.raises(InvalidConfig):
        OneShotAccuracy(epochs=-1)
    with pytest.raises(InvalidConfig):
        OneShotAccuracy(val_fraction=0.0)


def test_zeroshot_dense_plan_equals_pretrained_accuracy(context, data) -> None:
    dense = PruningPlan.dense(context.layer_names, context.arch_fingerprint)
    res = ZeroShotAccuracy(data).evaluate(context, [dense])[0]
    assert res.accuracy == evaluate_accuracy(context.model, make_loader(data.val, 256))
    assert res.epochs == 0.0


def test_zeroshot_bn_recalibration_runs(context, data, make_plan) -> None:
    res = ZeroShotAccuracy(data, bn_recalibration_batches=2).evaluate(context, [make_plan(context, rate=4.0)])
    assert res[0].ok
    assert ZeroShotAccuracy(data, bn_recalibration_batches=2).config()["bn_recalibration_batches"] == 2


def test_oneshot_config_keys_cache(context, data, make_plan, tmp_path: Path) -> None:
    plan = make_plan(context, rate=2.0)
    with EvaluationCache(tmp_path / "c.sqlite") as cache:
        cached = CachedAccuracy(OneShotAccuracy(data, epochs=1, max_train_batches=2), cache)
        first = cached.evaluate(context, [plan])[0]
        second = cached.evaluate(context, [plan])[0]
        other = CachedAccuracy(OneShotAccuracy(data, epochs=1, max_train_batches=2, seed=1), cache)
        other.evaluate(context, [plan])
    assert first.accuracy == second.accuracy and cached.true_evaluations == 1
    assert other.true_evaluations == 1
