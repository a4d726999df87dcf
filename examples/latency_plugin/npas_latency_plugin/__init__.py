"""A fake device: latency = kept MACs / speed + a fixed cost per layer (an npas-env latency plugin).

Registered through the entry point ``fake_device`` in the group ``npas_env.latency`` (see this
package's ``pyproject.toml``); npas-env then builds it with ``make_latency("fake_device", ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evaluators.context import ModelContext
from evaluators.results import LatencyResult
from npas_env.plan import FilterType, PruningPlan


class FakeDeviceLatency:
    """Latency of a made-up device.

    Args:
        gmacs_per_s: throughput in giga-MACs per second.
        layer_overhead_us: fixed cost of every layer that is not skipped.
    """

    name = "fake_device"

    def __init__(self, gmacs_per_s: float = 10.0, layer_overhead_us: float = 5.0) -> None:
        if gmacs_per_s <= 0:
            raise ValueError(f"gmacs_per_s must be > 0, got {gmacs_per_s}")
        self.gmacs_per_s, self.layer_overhead_us = float(gmacs_per_s), float(layer_overhead_us)

    def config(self) -> dict[str, Any]:
        """Settings that change results (npas-env puts them in cache keys)."""
        return {"gmacs_per_s": self.gmacs_per_s, "layer_overhead_us": self.layer_overhead_us}

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        """One result per plan, same order; a bad plan is a failed result, never an exception."""
        results = []
        for plan in plans:
            if len(plan.actions) != len(context.layers):
                results.append(LatencyResult.failure(
                    f"plan has {len(plan.actions)} actions for {len(context.layers)} layers"))
                continue
            ms = 0.0
            for spec, action in zip(context.layers, plan.actions, strict=True):
                if action.filter_type is FilterType.SKIP:
                    continue
                kept = spec.macs / (1.0 if action.is_dense else action.rate)
                ms += kept / (self.gmacs_per_s * 1e6) + self.layer_overhead_us / 1e3
            results.append(LatencyResult(ms, threads=1))
        return results
