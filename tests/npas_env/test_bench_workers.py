"""``npas bench --workers N``: accuracy evaluations in a pool, the same runs as in process."""

from __future__ import annotations

import pytest

from npas_env.bench import run_benchmark
from tests.npas_env.test_bench import strip, tiny_env


@pytest.mark.timeout(120)
def test_bench_with_two_workers_matches_in_process(tmp_path):
    inline = run_benchmark(["random"], seeds=1, budget=4, env_factory=tiny_env,
                           out_dir=tmp_path / "inline")
    pooled = run_benchmark(["random"], seeds=1, budget=4, env_factory=tiny_env,
                           out_dir=tmp_path / "pooled", workers=2, eval_timeout_s=60)
    assert strip(pooled) == strip(inline)
    assert all(r["error"] is None for r in pooled["runs"])
