"""``npas search --workers N``: accuracy evaluations in a pool, same results as in process."""

from __future__ import annotations

import json

import pytest
import torch

from evaluators.accuracy.oneshot import OneShotAccuracy
from evaluators.context import ModelContext
from npas_env import InvalidConfig
from npas_env.cli import main
from npas_env.commands.search import run_search
from npas_env.layers import extract_layers
from npas_env.plan import PruningPlan
from npas_env.search_job import RunDirectory, SearchConfig

FAST = {"model": "small_cnn", "agent": "random", "budget": 4, "budget_fraction": 1.0,
        "accuracy_max_batches": 2, "phase1_epochs": 0, "phase3_epochs": 1,
        "phase3_candidates": ("magnitude",), "warm_start": "rule_based", "warm_start_evals": 1}


def in_process_accuracies(out, plans: list[PruningPlan]) -> list[float | None]:
    """The run's one-shot accuracies of ``plans``, recomputed here without a pool."""
    from evaluators.accuracy.phase1 import replace_unfriendly_ops
    from npas_env.data import load_dataset
    from npas_env.zoo import pretrained

    splits = load_dataset("digits")
    model = replace_unfriendly_ops(pretrained("small_cnn", "digits", seed=0)).model
    model.load_state_dict(torch.load(out / "phase1.pt", weights_only=True))
    example = torch.zeros(1, *splits.input_shape)
    context = ModelContext(model.eval(), example, tuple(extract_layers(model, example)))
    oneshot = OneShotAccuracy(dataset=splits, epochs=1, seed=0, max_train_batches=2)
    return [r.accuracy for r in oneshot.evaluate(context, plans)]


@pytest.mark.timeout(300)
def test_search_cli_with_two_workers_runs_end_to_end(tmp_path):
    out = tmp_path / "run"
    RunDirectory(out).prepare(SearchConfig(**FAST), resume=False)  # the fast settings, saved
    argv = ["search", "--out", str(out), "--resume", "--workers", "2", "--eval-timeout", "300"]
    assert main(argv) == 0
    trials = json.loads((out / "trials.json").read_text())
    assert len(trials) == 4 and all(t["error"] is None for t in trials)
    plans = [PruningPlan.from_dict(t["plan"]) for t in trials]
    assert [t["accuracy"] for t in trials] == in_process_accuracies(out, plans)
    assert json.loads((out / "config.json").read_text())["workers"] == 1  # saved run untouched


def test_worker_settings_are_checked_and_persisted(tmp_path):
    with pytest.raises(InvalidConfig, match="--workers"):
        SearchConfig(workers=0)
    with pytest.raises(InvalidConfig, match="--eval-timeout"):
        SearchConfig(eval_timeout_s=0)
    run = RunDirectory(tmp_path / "run")
    run.prepare(SearchConfig(workers=2, ray_address="auto", eval_timeout_s=30), resume=False)
    (run.path / "cache.sqlite").write_bytes(b"")
    saved = RunDirectory(run.path).prepare(SearchConfig(), resume=True)
    assert (saved.workers, saved.ray_address, saved.eval_timeout_s) == (2, "auto", 30)
    with pytest.raises(InvalidConfig, match="execution settings"):
        run_search(SearchConfig(), tmp_path / "other", execution={"budget": 3})
