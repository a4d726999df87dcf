"""``analytic``: a roofline latency model of the compiled kernels, per layer and scheme.

Cheap (microseconds per plan) and deterministic, for tests and fast RL experiments. It is a
model, not a measurement: ``compiled`` measures, ``lut`` / ``predictor`` are fitted to
measurements. Per layer::

    time = max(kept_flops / (peak * threads * efficiency), bytes / bandwidth) + call overhead

Efficiencies follow what the block-sparse AVX-512 kernels reached on this machine class
(``shared/PERF_NOTES.md`` section 3): rows sharing kept columns in blocks of 8 run near dense
efficiency, per-row sparsity (unstructured, block rows 1) runs at a fraction of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from evaluators.context import ModelContext
from evaluators.registry import register_latency
from evaluators.results import LatencyResult
from npas_env.layers import LayerKind, LayerSpec
from npas_env.plan import FilterType, LayerAction, PruningPlan, Scheme

# Fraction of dense-kernel efficiency reached by P rows sharing kept positions (PERF_NOTES 3).
_ROW_SHARING = {1: 0.35, 2: 0.55, 4: 0.85, 8: 0.95}


@dataclass(frozen=True)
class MachineModel:
    """Peak rates of the target (defaults: one Zen 5 core with AVX-512, PERF_NOTES section 1)."""

    peak_gflops: float = 263.6
    bandwidth_gbs: float = 38.0
    dense_efficiency: float = 0.8
    depthwise_efficiency: float = 0.08
    unstructured_efficiency: float = 0.2
    pattern_efficiency: float = 0.72
    call_overhead_us: float = 2.0


@register_latency("analytic")
class AnalyticLatency:
    """Roofline latency model; see the module docstring."""

    name = "analytic"

    def __init__(self, threads: int = 1, machine: MachineModel | dict[str, float] | None = None) -> None:
        self.threads = int(threads)
        self.machine = machine if isinstance(machine, MachineModel) else MachineModel(**(machine or {}))
        self._memo: dict[tuple[str, int, LayerAction], float] = {}

    def config(self) -> dict[str, Any]:
        return {"threads": self.threads, "machine": asdict(self.machine)}

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        fp = context.arch_fingerprint
        results = []
        for plan in plans:
            total = 0.0
            for idx, (spec, action) in enumerate(zip(context.layers, plan.actions)):
                key = (fp, idx, action)
                ms = self._memo.get(key)
                if ms is None:
                    ms = self._memo[key] = self.layer_ms(spec, action)
                total += ms
            results.append(LatencyResult(total, threads=self.threads))
        return results

    def layer_ms(self, spec: LayerSpec, action: LayerAction) -> float:
        """Modelled latency of one layer under ``action``, in milliseconds."""
        m = self.machine
        if action.filter_type is FilterType.SKIP:
            return 0.0
        parts = _effective_parts(spec, action)
        seconds = 0.0
        for macs, weights, efficiency_kind in parts:
            rate = 1.0 if efficiency_kind == "depthwise" else action.rate
            eff = self._efficiency(efficiency_kind, action)
            flops = 2.0 * macs / rate
            act_bytes = 4.0 * (spec.in_channels * spec.input_hw[0] * spec.input_hw[1]
                               + spec.out_channels * spec.output_hw[0] * spec.output_hw[1])
            weight_bytes = 4.0 * weights / rate * (2.0 if action.scheme is Scheme.UNSTRUCTURED
                                                   and not action.is_dense else 1.0)
            compute = flops / (m.peak_gflops * 1e9 * self.threads * eff)
            memory = (act_bytes + weight_bytes) / (m.bandwidth_gbs * 1e9)
            seconds += max(compute, memory) + m.call_overhead_us * 1e-6
        return seconds * 1e3

    def _efficiency(self, kind: str, action: LayerAction) -> float:
        m = self.machine
        if kind == "depthwise":
            return m.depthwise_efficiency
        if action.is_dense or action.scheme is Scheme.FILTER:
            return m.dense_efficiency
        if action.scheme is Scheme.UNSTRUCTURED:
            return m.unstructured_efficiency
        if action.scheme is Scheme.PATTERN:
            return m.pattern_efficiency
        rows = action.block_size[0] if action.block_size else 8
        sharing = 1.0 if rows == 0 else _ROW_SHARING[min(k for k in _ROW_SHARING if k >= min(rows, 8))]
        return m.dense_efficiency * sharing


def _effective_parts(spec: LayerSpec, action: LayerAction) -> list[tuple[float, float, str]]:
    """(MACs, weight count, efficiency kind) of the layer after its filter-type change."""
    kernel = spec.kernel_size[0] * spec.kernel_size[1]
    weights = spec.params - (spec.out_channels if spec.has_bias else 0)
    kind = "depthwise" if spec.kind is LayerKind.DEPTHWISE else "regular"
    if action.filter_type is FilterType.CONV1X1:
        return [(spec.macs / kernel, weights / kernel, kind)]
    if action.filter_type is FilterType.DW_SEPARABLE:
        hw = spec.output_hw[0] * spec.output_hw[1]
        dw_macs = spec.in_channels * kernel * hw
        pw_macs = spec.in_channels * spec.out_channels * hw
        return [(dw_macs, spec.in_channels * kernel, "depthwise"),
                (pw_macs, spec.in_channels * spec.out_channels, "regular")]
    return [(spec.macs, weights, kind)]
