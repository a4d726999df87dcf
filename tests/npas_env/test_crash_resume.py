"""``npas bench`` killed with SIGKILL at several points resumes to the uninterrupted result.

The benchmark runs as a subprocess and is killed once a given number of runs has finished
(``0`` = during start-up); rerunning the same command (resuming is the default) must then give
a ``results.json`` equal to an uninterrupted run, apart from wall times, with every
(method, seed) run exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from npas_env.cli import main

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["bench", "--agents", "random,uniform", "--seeds", "2", "--budget", "6", "--model", "small_cnn",
        "--accuracy", "proxy", "--latency", "analytic"]
STARTUP_KILL_S = 1.5
RUN_FILES = {f"{m}-seed{s}.json" for m in ("random", "uniform") for s in (0, 1)}


def bench_in_process(out: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("NPAS_CACHE_DIR", str(cache))
    assert main([*ARGS, "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def reference(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``results.json`` of an uninterrupted run."""
    with pytest.MonkeyPatch.context() as mp:
        return bench_in_process(tmp_path_factory.mktemp("reference"), cache, mp)


def without_times(value: Any) -> Any:
    """``value`` with every wall-time field (``seconds``, ``mean_seconds``) removed."""
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if k not in ("seconds", "mean_seconds")}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def finished_runs(out: Path) -> int:
    runs = out / "runs"
    return len(list(runs.glob("*.json"))) if runs.is_dir() else 0


def kill_bench(out: Path, cache: Path, after_runs: int, timeout_s: float = 120.0) -> int:
    """Start ``npas bench`` and SIGKILL it once ``after_runs`` runs exist; the count at the kill.

    ``after_runs=0`` kills it ``STARTUP_KILL_S`` after the start (imports, model loading).
    Returns -1 if the benchmark finished before it could be killed.
    """
    env = {**os.environ, "NPAS_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "npas_env", *ARGS, "--out", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    try:
        while proc.poll() is None and time.monotonic() - start < timeout_s:
            elapsed = time.monotonic() - start
            if (finished_runs(out) >= after_runs) if after_runs else elapsed > STARTUP_KILL_S:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                return finished_runs(out)
            time.sleep(0.005)
        assert proc.returncode == 0, f"bench exited with {proc.returncode}"
        return -1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def check_resume(tmp_path: Path, cache: Path, reference: dict[str, Any],
                 monkeypatch: pytest.MonkeyPatch, kill_points: list[int]) -> list[int]:
    out = tmp_path / "bench"
    killed_at = [kill_bench(out, cache, k) for k in kill_points]
    resumed = bench_in_process(out, cache, monkeypatch)
    assert without_times(resumed) == without_times(reference)
    keys = [(r["method"], r["seed"]) for r in resumed["runs"]]
    assert len(keys) == len(set(keys)) == 4
    assert {p.name for p in (out / "runs").iterdir() if not p.name.startswith(".")} == RUN_FILES
    return killed_at


def test_bench_killed_three_times_resumes_to_the_uninterrupted_result(tmp_path, cache, reference,
                                                                      monkeypatch):
    killed_at = check_resume(tmp_path, cache, reference, monkeypatch, [0, 1, 3])
    print("runs finished at each kill:", killed_at)


@pytest.mark.slow
def test_bench_killed_ten_times_resumes_to_the_uninterrupted_result(tmp_path, cache, reference,
                                                                    monkeypatch):
    killed_at = check_resume(tmp_path, cache, reference, monkeypatch, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    print("runs finished at each kill:", killed_at)
