"""The main job: NPAS phases 1-3 on one model, end to end, into a resumable run directory.

Phase 1 rewrites mobile-unfriendly ops and fine-tunes briefly; phase 2 searches per-layer
decisions with one-shot accuracy and compiled latency measured on this machine (overlapped);
phase 3 prunes the best plan with the best of several algorithms and retrains. Every evaluation
is stored in the run's SQLite cache, so ``--resume`` replays a deterministic search for free up
to where it stopped.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from evaluators.accuracy.oneshot import OneShotAccuracy
from evaluators.cache import EvaluationCache
from evaluators.cached import CachedAccuracy, CachedLatency
from evaluators.pool import maybe_pooled
from evaluators.registry import make_latency
from npas_env.env import NPASEnv
from npas_env.errors import InvalidConfig
from npas_env.io import atomic_write_bytes, atomic_write_text
from npas_env.plan import PruningPlan
from npas_env.problem import SearchProblem, Trial
from npas_env.reward import make_reward

DONE_MARKER = "DONE"

#: SearchConfig fields that change how evaluations run, not their results (``--resume`` may
#: override them).
EXECUTION_FIELDS = ("workers", "ray_address", "eval_timeout_s")


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one ``npas search`` run (saved as ``config.json`` in the run directory)."""

    model: str = "resnet20"
    data: str = "digits"
    agent: str = "qbo"
    budget: int = 24
    latency_budget_ms: float | None = None
    budget_fraction: float = 0.5
    accuracy_epochs: int = 1
    accuracy_max_batches: int | None = None
    phase1_epochs: int = 1
    phase3_epochs: int = 8
    phase3_candidates: tuple[str, ...] = ("magnitude", "admm", "group_lasso")
    threads: int = 1
    seed: int = 0
    reward: str = "npas"
    overlap: bool = True
    warm_start: str | None = "rule_based"
    warm_start_evals: int = 3
    workers: int = 1
    ray_address: str | None = None
    eval_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if not isinstance(self.budget, int) or self.budget <= 0:
            raise InvalidConfig(f"--budget must be a positive number of evaluations, got {self.budget!r}")
        if self.latency_budget_ms is not None and not (self.latency_budget_ms > 0):
            raise InvalidConfig(f"--latency-budget-ms must be > 0, got {self.latency_budget_ms}")
        if self.warm_start is not None and self.warm_start_evals >= self.budget:
            raise InvalidConfig(f"--budget ({self.budget}) must exceed the warm start's "
                                f"{self.warm_start_evals} evaluations")
        if not 0 < self.budget_fraction <= 1:
            raise InvalidConfig(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise InvalidConfig(f"--workers must be a positive integer, got {self.workers!r}")
        if not (isinstance(self.eval_timeout_s, (int, float)) and self.eval_timeout_s > 0):
            raise InvalidConfig(f"--eval-timeout must be > 0 seconds, got {self.eval_timeout_s!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class RunDirectory:
    """The files of one run; refuses to clobber a finished run."""

    path: Path
    files: dict[str, Path] = field(init=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        names = ["config.json", "cache.sqlite", "phase1.pt", "plan.json", "model.pt", "model.onnx",
                 "report.md", "pareto.png", "trials.json", "compiled", "tensorboard", DONE_MARKER]
        self.files = {n: self.path / n for n in names}

    def prepare(self, config: SearchConfig, resume: bool) -> SearchConfig:
        """Create the directory, or check it for ``--resume``; returns the config to use."""
        if self.path.is_symlink():
            raise InvalidConfig(f"output directory {self.path} is a symlink; give a real directory")
        if self.files[DONE_MARKER].exists():
            raise InvalidConfig(f"{self.path} holds a finished run; choose another --out (nothing "
                                "was overwritten)")
        cfg_path = self.files["config.json"]
        if self.path.exists() and any(self.path.iterdir()):
            if not resume:
                raise InvalidConfig(f"{self.path} exists and holds an unfinished run; pass --resume "
                                    "to continue it or choose another --out")
            self._drop_stale_temp_files()
            if cfg_path.exists():
                saved = json.loads(cfg_path.read_text())
                saved["phase3_candidates"] = tuple(saved.get("phase3_candidates", ()))
                return SearchConfig(**saved)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cfg_path, config.to_json())
        return config

    def _drop_stale_temp_files(self) -> None:
        """Delete the temp files (``.<name>.*.tmp``) of atomic writes a killed run left behind."""
        for stale in [*self.path.glob(".*.tmp"), *self.path.glob("compiled/.*.tmp")]:
            stale.unlink(missing_ok=True)


def fastest_reachable_plan(env: NPASEnv) -> PruningPlan:
    """The highest allowed rate on every layer, block 8x16 where it fits (budget feasibility)."""
    import numpy as np

    space = env.search_space
    names = [s.value for s in space.schemes]
    scheme = next((names.index(n) for n in ("block_punched", "block_based", "filter") if n in names), 0)
    block = space.block_sizes.index((8, 16)) if (8, 16) in space.block_sizes else 0
    vectors = np.tile([0, scheme, int(np.argmax(space.rates)), block], (len(env.layers), 1))
    return SearchProblem.from_env(env).decode(vectors)  # masks repair what a layer forbids


def build_env(config: SearchConfig, model: torch.nn.Module, splits: Any,
              cache: EvaluationCache) -> NPASEnv:
    """The phase-2 env: cached one-shot accuracy and cached compiled latency, overlapped.

    With ``workers > 1`` or a ``ray_address``, one-shot accuracy runs in an evaluation pool
    behind the cache (hits never reach a worker); latency stays in this process, one
    measurement at a time. Stop the pool with :func:`close_pools`.
    """
    oneshot = OneShotAccuracy(dataset=splits, epochs=config.accuracy_epochs, seed=config.seed,
                              max_train_batches=config.accuracy_max_batches)
    accuracy = CachedAccuracy(maybe_pooled(oneshot, "accuracy", workers=config.workers,
                                           ray_address=config.ray_address,
                                           timeout_s=config.eval_timeout_s), cache)
    latency = CachedLatency(make_latency("compiled", threads=config.threads), cache)
    example = torch.zeros(1, *splits.input_shape)
    env = NPASEnv(model, example, accuracy=accuracy, latency=latency,
                  reward=make_reward(config.reward), latency_budget_ms=config.latency_budget_ms,
                  model_name=f"{config.model}@{config.data}")
    env.scorer.overlap = config.overlap
    if config.latency_budget_ms is None:
        env.scorer.latency_budget_ms = config.budget_fraction * env.scorer.reference_ms
    return env


def close_pools(env: NPASEnv) -> None:
    """Stop the evaluation-pool workers behind the env's (cached) evaluators; idempotent."""
    for evaluator in (env.scorer.accuracy, env.scorer.latency):
        close = getattr(getattr(evaluator, "evaluator", None), "close", None)
        if callable(close):
            close()


def check_feasible(env: NPASEnv) -> float:
    """Latency of the fastest reachable plan; raises if the budget is below it.

    The dense model is reachable too, and on tiny models it can beat every pruned plan, so the
    floor is the faster of the two.
    """
    score = env.scorer.latency.measure(env.context, [fastest_reachable_plan(env)])[0]
    fastest = min(score.latency_ms, env.scorer.reference_ms) if score.ok else math.nan
    budget = env.scorer.budget_ms
    if math.isfinite(fastest) and budget < 0.9 * fastest:  # 10% margin for timing noise
        raise InvalidConfig(f"latency budget {budget:.4f} ms cannot be met: the fastest plan we can "
                            f"reach measures {fastest:.4f} ms (dense: {env.scorer.reference_ms:.4f} ms); "
                            "raise --latency-budget-ms")
    return fastest


def trials_to_json(trials: list[Trial]) -> str:
    rows = [{"n_evals": t.n_evals, "reward": t.reward, "accuracy": t.accuracy,
             "latency_ms": t.latency_ms, "error": t.error, "seconds": t.seconds,
             "plan": t.plan.to_dict()} for t in trials]
    return json.dumps(rows, indent=1)


def save_artifact(compiled: Any, dest: Path) -> list[str]:
    """Store the compiled model: generated C, shared library, packed weights / indices, manifest.

    The library's entry points are called with the packed float32 weights and int32 indices
    (``weights.npy``, ``ints.npy``) and an arena of ``arena_floats`` floats; ``manifest.json``
    lists the op segments and any op that runs through PyTorch.
    """
    import numpy as np

    dest.mkdir(parents=True, exist_ok=True)
    so_path = Path(compiled.artifact.path)
    written = []
    for candidate in [so_path, so_path.with_suffix(".c")]:
        if candidate.is_file():  # every file atomically: a killed run never leaves half of one
            atomic_write_bytes(dest / candidate.name, candidate.read_bytes())
            written.append(candidate.name)
    program = compiled.program
    for name, array in [("weights.npy", np.asarray(program.weights, dtype=np.float32)),
                        ("ints.npy", np.asarray(program.ints, dtype=np.int32))]:
        buffer = io.BytesIO()
        np.save(buffer, array)
        atomic_write_bytes(dest / name, buffer.getvalue())
    manifest = {"library": so_path.name, "arena_floats": int(program.arena_floats),
                "segments": program.segments, "ops": list(zip(program.op_names, program.op_kinds)),
                "threads": compiled.threads, "isa": str(compiled.isa)}
    atomic_write_text(dest / "manifest.json", json.dumps(manifest, indent=1, default=str))
    return [*written, "weights.npy", "ints.npy", "manifest.json"]


class Stopwatch:
    """Named wall-clock phases for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._start
        self._start = now
