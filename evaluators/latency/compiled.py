"""Measured latency through the sparse C code-generation backend (``compiler_backend``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluators.context import ModelContext
from evaluators.latency.anchor import time_anchored
from evaluators.registry import register_latency
from evaluators.results import LatencyResult
from npas_env.errors import InvalidConfig
from npas_env.plan import PruningPlan


@register_latency("compiled")
@dataclass
class CompiledLatency:
    """Prune, compile to one C library, and time batch-1 inference on this machine.

    With ``anchor`` (default) each plan is timed in ``rounds`` rounds alternating with the
    context's dense model (``evaluators.latency.anchor``); the result is the median ratio times
    one dense latency measured at first use (or ``reference_ms``). This keeps a search's rewards
    on one scale when the machine drifts between speed states; the raw time is in ``details``.

    Attributes:
        threads: OpenMP threads of the compiled model.
        adaptive_threads: each call runs on 1 thread or ``threads``, whichever ran faster
            recently (``compiler_backend.threads.AdaptiveThreads``; for hosts that move vCPUs).
        banded: with ``threads=2``, each thread runs the convolutional trunk on its own half of
            the rows (``compiler_backend.bands``); models that do not fit bands fail.
        warmup: untimed runs before measuring.
        repeats: minimum timed runs.
        min_seconds: keep timing until at least this much wall time has passed.
        tune: run the per-layer auto-tuner (slow the first time; cached in the tuning log).
        cache_dir: artifact cache (default ``npas_env.io.cache_dir() / "compiler"``).
        anchor: time against the dense model (needs a context; plain timing without one).
        rounds: anchored rounds; each segment runs ``repeats / rounds`` calls and
            ``min_seconds / rounds`` seconds.
        reference_ms: the dense latency anchored ratios are scaled by (None: measured once per
            context, at first use). Give the same value to compare runs made at different times.
    """

    threads: int = 1
    adaptive_threads: bool = False
    banded: bool = False
    warmup: int = 10
    repeats: int = 50
    min_seconds: float = 0.2
    tune: bool = False
    cache_dir: Path | None = None
    anchor: bool = True
    rounds: int = 5
    reference_ms: float | None = None
    name: str = "compiled"
    _references: dict[tuple[str, str], tuple[Any, float]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.threads < 1 or self.repeats < 1 or self.warmup < 0 or self.min_seconds < 0
                or self.rounds < 1 or (self.reference_ms is not None and not self.reference_ms > 0)):
            raise InvalidConfig(f"bad CompiledLatency settings: {self.config()}")
        if self.banded and self.threads != 2:
            raise InvalidConfig(f"banded execution runs on 2 threads, got threads={self.threads}")

    def config(self) -> dict[str, Any]:
        from compiler_backend.codegen import GENERATOR_VERSION  # new kernels, new timings

        return {"threads": self.threads, "warmup": self.warmup, "repeats": self.repeats,
                "min_seconds": self.min_seconds, "tune": self.tune, "generator": GENERATOR_VERSION,
                "anchor": self.anchor, "rounds": self.rounds, "reference_ms": self.reference_ms,
                **({"adaptive_threads": True} if self.adaptive_threads else {}),
                **({"banded": True} if self.banded else {})}

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        """One result per plan, in order; failures come back as ``LatencyResult.failure``."""
        return [self._measure_one(context, plan) for plan in plans]

    def _measure_one(self, context: ModelContext, plan: PruningPlan) -> LatencyResult:
        try:
            from npas_env.pruning import apply_plan

            pruned = apply_plan(context.model, plan, list(context.layers))
        except Exception as exc:  # measurements never raise
            return LatencyResult.failure(f"{type(exc).__name__}: {exc}")
        return self.measure_model(pruned.model, context.example_input, pruned.masks, context=context)

    def measure_model(self, model: Any, example_input: Any, masks: Any = None, *,
                      context: ModelContext | None = None) -> LatencyResult:
        """Compile and time an already pruned ``model`` (its ``masks`` mark the kept weights).

        With ``anchor`` and a ``context`` (whose dense model is the reference) the time is anchored.
        """
        try:
            compiled = self._compile(model, example_input, masks)
            anchored = None
            if self.anchor and context is not None:
                reference, reference_ms = self._reference(context)
                per = {"repeats": max(3, self.repeats // self.rounds),
                       "min_seconds": self.min_seconds / self.rounds}
                timing = compiled.benchmark(self.warmup, **per)  # warm-up + raw spread
                anchored = time_anchored(compiled, reference, rounds=self.rounds, warmup=1, **per)
            else:
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
        if anchored is None:
            return LatencyResult(timing.median_ms, spread_ms=timing.iqr_ms, threads=timing.threads,
                                 details=details)
        details.update(raw_ms=timing.median_ms, ratio_to_dense=anchored.ratio,
                       ratio_iqr=anchored.ratio_iqr, reference_ms=reference_ms,
                       reference_now_ms=anchored.reference_ms)
        return LatencyResult(anchored.ratio * reference_ms, spread_ms=anchored.ratio_iqr * reference_ms,
                             threads=timing.threads, details=details)

    def _compile(self, model: Any, example_input: Any, masks: Any) -> Any:
        from compiler_backend import compile_model

        return compile_model(model, example_input, masks, threads=self.threads, tune=self.tune,
                             cache_dir=self.cache_dir, adaptive_threads=self.adaptive_threads,
                             banded=self.banded)

    def _reference(self, context: ModelContext) -> tuple[Any, float]:
        """The context's compiled dense model and its latency (measured once per context)."""
        key = (context.arch_fingerprint, str(tuple(context.example_input.shape)))
        if key not in self._references:
            dense = self._compile(context.model, context.example_input, None)
            ms = self.reference_ms
            if ms is None:
                ms = dense.benchmark(self.warmup, 4 * self.repeats, 4 * self.min_seconds).median_ms
            self._references[key] = (dense, float(ms))
        dense, ms = self._references[key]
        return dense, float(self.reference_ms or ms)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_references"] = {}  # loaded libraries stay in their process
        return state
