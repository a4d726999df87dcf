"""``npas search`` killed with SIGKILL at many points resumes to the uninterrupted result.

Each run is the real CLI pipeline in its own process (``search_harness.py``: forked from a server
that did the imports once, with deterministic analytic latency); it stops at a named point (inside
an evaluation, inside a cache transaction before its ``COMMIT``, just after one, before an atomic
rename of a run file, at a stage) and is killed there with SIGKILL, then ``--resume`` continues
the same run directory. At the end the run must equal an uninterrupted run with the same seed:
same trials, plan, pruned weights and cache rows, and every evaluation that had been stored was
never run again (only the ones a kill interrupted were).
"""

from __future__ import annotations

import json
import math
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from npas_env.search_job import DONE_MARKER, RunDirectory, SearchConfig

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("search_harness.py")
CONFIG = SearchConfig(model="small_cnn", agent="random", budget=6, budget_fraction=1.0,
                      accuracy_max_batches=1, phase1_epochs=0, phase3_epochs=0,
                      phase3_candidates=("magnitude",), warm_start="rule_based", warm_start_evals=2)
#: One killed run per pause point (see search_harness.py), in order, all in the same run dir.
#: ``eval:K`` / ``write:K`` interrupt an evaluation, which the next run must do again.
KILL_POINTS = [
    "stage:phase1",        # phase 1 running, nothing written yet
    "rename:phase1.pt",    # the phase-1 checkpoint is a complete temp file, not yet in place
    "eval:1",              # inside the 1st evaluation (warm start): nothing stored
    "write:1",             # during a cache write: the 1st result inserted, COMMIT not run
    "stored:1",            # the 1st result just committed
    "write:1",             # the 2nd result's transaction
    "stored:2",            # 2nd and 3rd stored
    "eval:1",              # inside the 4th
    "write:2",             # 4th stored, 5th inside its transaction
    "rename:trials.json",  # phase 2 over (6 stored), its trial table not yet in place
    "stage:phase3",        # phase 3 starting
    "rename:model.pt",     # phase 3 done, exporting the pruned model
    "rename:DONE",         # everything written but the finished marker
]
#: Evaluations (in trial order) each plan should get over all the runs above plus the final one.
EXPECTED_RUNS_PER_PLAN = [3, 2, 1, 2, 2, 1]


def harness_env(cache: Path, eval_log: Path) -> dict[str, str]:
    return {**os.environ, "NPAS_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT),
            "NPAS_TEST_EVAL_LOG": str(eval_log), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def search_args(out: Path) -> list[str]:
    return ["search", "--out", str(out), "--resume"]  # the config.json written up front wins


def new_run(path: Path, config: SearchConfig) -> Path:
    RunDirectory(path).prepare(config, resume=False)
    return path


class ForkServer:
    """``search_harness.py serve``: runs commands in forked children and kills them on request."""

    def __init__(self, env: dict[str, str], stderr: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HARNESS), "serve"], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr.open("w"), text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("EOF")

    def run(self, point: str, args: list[str], *, kill_after_s: float | None = None,
            timeout_s: float = 240.0) -> int:
        """Run one command; SIGKILL it at ``point`` (or ``kill_after_s`` after start); its status."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join([point, *args]) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout_s
        child, kill_at = None, math.inf
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, min(deadline, kill_at) - time.monotonic()))
            except queue.Empty:
                line = ""
            assert line != "EOF", "the search harness server died"
            if line.startswith("EXIT "):
                return int(line.split()[2])
            if line.startswith("CHILD "):
                child = int(line.split()[1])
                if kill_after_s is not None:
                    kill_at = time.monotonic() + kill_after_s
            if line == f"PAUSED {point}":
                kill_at = time.monotonic()
            if child is not None and time.monotonic() >= kill_at:
                os.kill(child, signal.SIGKILL)
                kill_at = math.inf
        if child is not None:
            os.kill(child, signal.SIGKILL)
        raise AssertionError(f"a search run timed out after {timeout_s} s (pause point {point})")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=30)


def without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_times(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [without_times(v) for v in value]
    return value


def cache_rows(run: Path) -> dict[str, tuple[str, Any]]:
    """Every row of the run's cache (wall times dropped); checks integrity and unique keys."""
    conn = sqlite3.connect(run / "cache.sqlite")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT key, kind, result FROM results").fetchall()
    finally:
        conn.close()
    assert len(rows) == len({key for key, _, _ in rows})
    return {key: (kind, without_times(json.loads(text))) for key, kind, text in rows}


def evaluations_per_plan(eval_log: Path) -> list[int]:
    """How often each plan was handed to the accuracy evaluator, in order of first evaluation."""
    keys = [line.split(" ", 1)[1] for line in eval_log.read_text().splitlines()]
    counts = Counter(keys)
    return [counts[k] for k in dict.fromkeys(keys)]


def assert_same_run(run: Path, reference: Path, config: SearchConfig) -> None:
    assert (run / DONE_MARKER).exists()
    for name in ("trials.json", "plan.json"):
        ours, theirs = (json.loads((d / name).read_text()) for d in (run, reference))
        assert without_times(ours) == without_times(theirs), name
    assert len(json.loads((run / "trials.json").read_text())) == config.budget
    ours, theirs = (torch.load(d / "model.pt", weights_only=True) for d in (run, reference))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert cache_rows(run) == cache_rows(reference)
    assert len(list((run / "tensorboard").glob("events.*"))) == 1  # the replay is logged once
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def stored_evaluations(run: Path) -> int:
    if not (run / "cache.sqlite").exists():
        return 0
    conn = sqlite3.connect(run / "cache.sqlite")
    try:
        return conn.execute("SELECT COUNT(*) FROM results WHERE kind = 'accuracy'").fetchone()[0]
    finally:
        conn.close()


def kill_and_resume(tmp_path: Path, cache: Path, config: SearchConfig,
                    points: list[str | float], *, strict: bool = True) -> tuple[list[int], list[int]]:
    """Run the reference and, in the run dir, one killed run per point, then a final resume.

    A point is a pause point, or a delay in seconds after which the run is killed wherever it
    is. ``strict``: every run must be killed; otherwise the runs stop at the first one that
    finishes before its point. Returns the evaluations per plan and, after each kill, how many
    evaluations were stored.
    """
    ref_log, log, server_err = tmp_path / "reference.log", tmp_path / "evals.log", tmp_path / "server.err"
    ref_args = search_args(new_run(tmp_path / "ref", config))
    reference = subprocess.Popen([sys.executable, str(HARNESS), *ref_args], cwd=ROOT,
                                 env=harness_env(cache, ref_log), stdout=subprocess.DEVNULL,
                                 stderr=(tmp_path / "ref.err").open("w"))
    run = new_run(tmp_path / "run", config)
    server = ForkServer(harness_env(cache, log), server_err)
    progress: list[int] = []
    try:
        for point in points:
            if isinstance(point, float):
                status = server.run("-", search_args(run), kill_after_s=point)
            else:
                status = server.run(point, search_args(run))
            if status == 0 and not strict:
                break
            assert status == -signal.SIGKILL, (point, status, server_err.read_text()[-3000:])
            progress.append(stored_evaluations(run))
        if not (run / DONE_MARKER).exists():
            assert server.run("-", search_args(run)) == 0, server_err.read_text()[-3000:]
    finally:
        server.close()
    assert reference.wait(timeout=240) == 0, (tmp_path / "ref.err").read_text()[-3000:]
    assert_same_run(run, tmp_path / "ref", config)
    assert evaluations_per_plan(ref_log) == [1] * config.budget
    return evaluations_per_plan(log), progress


def test_search_killed_at_thirteen_points_resumes_to_the_uninterrupted_result(tmp_path, cache):
    per_plan, progress = kill_and_resume(tmp_path, cache, CONFIG, KILL_POINTS)
    assert progress == [0, 0, 0, 0, 1, 1, 3, 3, 4, 6, 6, 6, 6]
    # stored evaluations are never repeated; each interrupted one is repeated exactly once
    assert per_plan == EXPECTED_RUNS_PER_PLAN


@pytest.mark.slow
def test_search_killed_at_random_moments_resumes_to_the_uninterrupted_result(tmp_path, cache,
                                                                             capsys):
    """Up to 24 kills at random moments (seeded): after a random delay, or at a random point."""
    config = replace(CONFIG, budget=24)
    rng = random.Random(8)
    points: list[str | float] = [
        round(rng.uniform(0.3, 2.5), 2) if rng.random() < 0.5
        else f"{rng.choice(['eval', 'write', 'stored'])}:{rng.randint(1, 3)}" for _ in range(24)]
    per_plan, progress = kill_and_resume(tmp_path, cache, config, points, strict=False)
    assert len(progress) >= 10
    assert all(n >= 1 for n in per_plan) and sum(per_plan) - config.budget <= len(progress)
    with capsys.disabled():
        print(f"\n{len(progress)} kills; evaluations stored after each: {progress}; "
              f"evaluations per plan: {per_plan}")
