from __future__ import annotations

import argparse
import json

import pytest
import torch

import npas_env.bench as bench
from npas_env.bench import add_bench_parser, best_so_far, mean_ci, run_benchmark
from npas_env.env import NPASEnv
from npas_env.errors import EvaluatorNotFound
from tests.conftest import TinyNet


def tiny_env() -> NPASEnv:
    torch.manual_seed(0)
    return NPASEnv(TinyNet().eval(), torch.randn(1, 3, 16, 16), accuracy="proxy", latency="analytic")


def strip(results: dict) -> list:
    """Everything deterministic of the runs (not wall times)."""
    return [(r["method"], r["seed"], [(t["n_evals"], t["reward"], json.dumps(t["plan"])) for t in r["trials"]])
            for r in results["runs"]]


def test_tiny_benchmark_writes_json_markdown_and_png(tmp_path):
    results = run_benchmark(["random", "uniform"], seeds=2, budget=4, env_factory=tiny_env, out_dir=tmp_path)
    for name in ("results.json", "results.md", "best_reward.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "best_reward.png").read_bytes()[:4] == b"\x89PNG"
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert len(on_disk["runs"]) == 4 and on_disk["checkpoints"] == [1, 2, 3, 4]
    assert all(1 <= r["n_evals"] <= 4 and r["error"] is None for r in on_disk["runs"])
    table = (tmp_path / "results.md").read_text()
    assert "| random | 2 |" in table and "±" in table
    assert results["summary"]["random"]["best_reward"]["4"]["n"] == 2


def test_resume_skips_finished_runs_and_matches_a_fresh_run(tmp_path, monkeypatch):
    fresh = run_benchmark(["uniform", "random"], seeds=2, budget=3, env_factory=tiny_env,
                          out_dir=tmp_path / "fresh")
    killed = tmp_path / "killed"
    run_benchmark(["uniform"], seeds=2, budget=3, env_factory=tiny_env, out_dir=killed)  # "killed" here
    calls = []
    original = bench.run_one
    monkeypatch.setattr(bench, "run_one", lambda name, seed, *a, **k: calls.append((name, seed)) or
                        original(name, seed, *a, **k))
    resumed = run_benchmark(["uniform", "random"], seeds=2, budget=3, env_factory=tiny_env, out_dir=killed)
    assert calls == [("random", 0), ("random", 1)]
    assert strip(resumed) == strip(fresh)
    calls.clear()
    run_benchmark(["uniform", "random"], seeds=2, budget=3, env_factory=tiny_env, out_dir=killed)
    assert calls == []
    run_benchmark(["uniform"], seeds=1, budget=2, env_factory=tiny_env, out_dir=killed)
    assert calls == [("uniform", 0)]  # other settings (budget) are not reused


def test_best_so_far_and_confidence_interval():
    curve = best_so_far([{"n_evals": 2, "reward": 0.5}, {"n_evals": 3, "reward": 0.2}], 4)
    assert curve[0] != curve[0] and list(curve[1:]) == [0.5, 0.5, 0.5]
    import numpy as np

    mean, half, n = mean_ci(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0 and n == 3 and half == pytest.approx(4.303 / np.sqrt(3), rel=1e-3)


def test_unknown_method_and_cli_parser(tmp_path):
    with pytest.raises(EvaluatorNotFound, match="did you mean 'random'"):
        run_benchmark(["randm"], seeds=1, budget=2, env_factory=tiny_env, out_dir=tmp_path)
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", "--agents", "random,uniform", "--seeds", "2", "--budget", "5",
                              "--out", str(tmp_path)])
    assert args.func is bench.bench_command and args.seeds == 2 and args.agents == "random,uniform"
