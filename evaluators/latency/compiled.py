"""Measured latency through the sparse C code-generation backend (``compiler_backend``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluators.context import ModelContext
from evaluators.registry import register_latency
from evaluators.results import LatencyResult
from npas_env.errors import InvalidConfig
from npas_env.plan import PruningPlan


@register_latency("compiled")
@dataclass
class CompiledLatency:
    """Prune, compile to one C library, and time batch-1 inference on this machine.

    Attributes:
        threads: OpenMP threads of the compiled model.
        warmup: untimed runs before measuring.
        repeats: minimum timed runs.
        min_seconds: keep timing until at least this much wall time has passed.
        tune: run the per-layer auto-tuner (slow the first time; cached in the tuning log).
        cache_dir: artifact cache (default ``npas_env.io.cache_dir() / "compiler"``).
    """

    threads: int = 1
    warmup: int = 10
    repeats: int = 50
    min_seconds: float = 0.2
    tune: bool = False
    cache_dir: Path | None = None
    name: str = "compiled"

    def __post_init__(self) -> None:
        if self.threads < 1 or self.repeats < 1 or self.warmup < 0 or self.min_seconds < 0:
            raise InvalidConfig(f"bad CompiledLatency settings: {self.config()}")

    def config(self) -> dict[str, Any]:
        from compiler_backend.codegen import GENERATOR_VERSION  # new kernels, new timings

        return {"threads": self.threads, "warmup": self.warmup, "repeats": self.repeats,
                "min_seconds": self.min_seconds, "tune": self.tune, "generator": GENERATOR_VERSION}

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        """One result per plan, in order; failures come back as ``LatencyResult.failure``."""
        return [self._measure_one(context, plan) for plan in plans]

    def _measure_one(self, context: ModelContext, plan: PruningPlan) -> LatencyResult:
        try:
            from npas_env.pruning import apply_plan

            pruned = apply_plan(context.model, plan, list(context.layers))
        except Exception as exc:  # measurements never raise
            return LatencyResult.failure(f"{type(exc).__name__}: {exc}")
        return self.measure_model(pruned.model, context.example_input, pruned.masks)

    def measure_model(self, model: Any, example_input: Any, masks: Any = None) -> LatencyResult:
        """Compile and time an already pruned ``model`` (its ``masks`` mark the kept weights)."""
        try:
            from compiler_backend import compile_model

            compiled = compile_model(model, example_input, masks, threads=self.threads,
                                     tune=self.tune, cache_dir=self.cache_dir)
            timing = compiled.benchmark(self.warmup, self.repeats, self.min_seconds)
            report = compiled.report
        except Exception as exc:  # measurements never raise
            return LatencyResult.failure(f"{type(exc).__name__}: {exc}")
        details = {
            "layers_ms": {layer.name: layer.time_ms for layer in report.layers},
            "kernels": {layer.name: f"{layer.family}/{layer.structure}" for layer in report.layers},
            "fallback_ops": {op.name: op.share for op in report.fallbacks},
            "p10_ms": timing.p10_ms, "p90_ms": timing.p90_ms, "runs": timing.runs,
            "compile_seconds": compiled.compile_seconds, "cache_hit": compiled.cache_hit,
            "isa": compiled.isa,
        }
        return LatencyResult(timing.median_ms, spread_ms=timing.iqr_ms, threads=timing.threads,
                             details=details)
