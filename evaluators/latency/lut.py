"""``lut``: the mapping paper's per-layer latency lookup table (TODAES section 5.2.1).

Model latency = sum over layers of the table's per-layer latency. A real layer is mapped to the
table's axes (:func:`layer_queries`):

* type: 1x1 / 3x3 / 5x5 conv, depthwise 3x3 or FC, after its filter type (``1x1`` -> a 1x1 conv,
  ``dw_separable`` -> a dense depthwise 3x3 plus a pruned 1x1, ``skip`` -> nothing);
* channels: ``sqrt(C_in * C_out / groups)``, so the table layer has the real layer's MACs;
* feature map: ``sqrt(H_out * W_out)``.

Between table points the log latency is interpolated linearly in log channels, log feature map and
log rate (power-law interpolation: exact at grid points, monotone between monotone points). Rates
between 1 and the smallest table rate use the dense entry as the rate-1 anchor. Outside the table's
range the nearest two points are extrapolated and the result is flagged ``extrapolated=True``; so is
a block size, kernel or scheme the table does not have (the nearest one is used).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluators.context import ModelContext
from evaluators.latency.lut_table import LatencyTable, LayerSetting
from evaluators.latency.model_table import (
    ModelLatencyTable,
    is_model_table,
    mismatch_message,
    read_table_json,
)
from evaluators.registry import register_latency
from evaluators.results import LatencyResult
from npas_env.errors import InvalidPlan
from npas_env.layers import LayerKind, LayerSpec
from npas_env.plan import FilterType, LayerAction, PruningPlan, Scheme
from npas_env.search_space import SearchSpace

#: Extrapolation slopes (d log latency / d log axis) are clamped to these ranges.
#: The third value is the slope used when an axis has a single table point.
_SLOPE_LIMITS = {"channels": (0.0, 2.5, 2.0), "fmap": (0.0, 2.5, 2.0), "rate": (-1.2, 0.0, -0.8)}
_SPACE = SearchSpace()   # canonicalization only (model tables store canonical actions)


@dataclass(frozen=True)
class Query:
    """A (possibly off-grid) table lookup: a setting with real-valued axes and a multiplier."""

    layer_type: str
    channels: float
    fmap: float
    scheme: str
    rate: float
    block: tuple[int, int] | None
    scale: float = 1.0
    approximate: bool = False


def layer_queries(spec: LayerSpec, action: LayerAction) -> list[Query]:
    """Map one layer under ``action`` to the table queries whose latencies sum to its own."""
    if action.filter_type is FilterType.SKIP:
        return []
    scheme = "dense" if action.is_dense else action.scheme.value
    rate = 1.0 if action.is_dense else action.rate
    block = action.block_size if action.scheme.uses_block and not action.is_dense else None
    fmap = math.sqrt(spec.output_hw[0] * spec.output_hw[1])
    if spec.kind is LayerKind.LINEAR:
        chans = math.sqrt(spec.in_channels * spec.out_channels)
        return [Query("fc", chans, 1.0, scheme, rate, block, scale=float(spec.output_hw[0]))]
    k = spec.kernel_size[0] * spec.kernel_size[1]
    if action.filter_type is FilterType.DW_SEPARABLE:
        dw = Query("dw3x3", float(spec.in_channels), fmap, "dense", 1.0, None,
                   scale=k / 9.0, approximate=k != 9)
        pw = Query("conv1x1", math.sqrt(spec.in_channels * spec.out_channels), fmap,
                   scheme, rate, block)
        return [dw, pw]
    if spec.kind is LayerKind.DEPTHWISE and action.filter_type is FilterType.KEEP:
        chans = math.sqrt(spec.in_channels * spec.out_channels)
        return [Query("dw3x3", chans, fmap, scheme, rate, block, scale=k / 9.0, approximate=k != 9)]
    chans = math.sqrt(spec.in_channels * spec.out_channels / spec.groups)
    if action.filter_type is FilterType.CONV1X1 or k == 1:
        return [Query("conv1x1", chans, fmap, scheme, rate, block)]
    layer_type = "conv3x3" if k <= 12 else "conv5x5"   # 2x2..3x3 -> 3x3; 4x4 and up -> 5x5
    ref = 9.0 if layer_type == "conv3x3" else 25.0
    return [Query(layer_type, chans, fmap, scheme, rate, block, scale=k / ref,
                  approximate=k not in (9, 25))]


def _interp(xs: Sequence[float], ys: Sequence[float], x: float,
            limits: tuple[float, float, float]) -> tuple[float, bool]:
    """Piecewise-linear y(x) through sorted ``xs``; outside the range extrapolate (flagged)."""
    if len(xs) == 1:
        return ys[0] + (x - xs[0]) * limits[2], abs(x - xs[0]) > 1e-9
    i = bisect.bisect_left(xs, x)
    if i < len(xs) and abs(xs[i] - x) < 1e-9:
        return ys[i], False
    outside = i == 0 or i == len(xs)
    i = min(max(i, 1), len(xs) - 1)
    slope = (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1])
    if outside:
        slope = min(max(slope, limits[0]), limits[1])
        anchor = 0 if x < xs[0] else len(xs) - 1
        return ys[anchor] + slope * (x - xs[anchor]), True
    return ys[i - 1] + slope * (x - xs[i - 1]), False


class _Family:
    """Log-space grid of one (layer type, scheme, block): {(log fmap, log rate): [(log C, log ms)]}."""

    def __init__(self) -> None:
        self.slices: dict[tuple[float, float], list[tuple[float, float]]] = {}

    def add(self, fmap: float, rate: float, channels: float, latency_ms: float) -> None:
        pts = self.slices.setdefault((math.log(fmap), math.log(rate)), [])
        pts.append((math.log(channels), math.log(latency_ms)))
        pts.sort()

    def log_latency(self, log_c: float, log_f: float, log_r: float) -> tuple[float, bool]:
        fmaps = sorted({f for f, _ in self.slices})
        flagged = False
        f_vals = []
        for f in _neighbours(fmaps, log_f):
            rates = sorted(r for ff, r in self.slices if ff == f)
            r_vals = []
            for r in _neighbours(rates, log_r):
                pts = self.slices[(f, r)]
                v, ex = _interp([p[0] for p in pts], [p[1] for p in pts], log_c, _SLOPE_LIMITS["channels"])
                r_vals.append((r, v))
                flagged |= ex
            v, ex = _interp([r for r, _ in r_vals], [v for _, v in r_vals], log_r, _SLOPE_LIMITS["rate"])
            f_vals.append((f, v))
            flagged |= ex
        v, ex = _interp([f for f, _ in f_vals], [v for _, v in f_vals], log_f, _SLOPE_LIMITS["fmap"])
        return v, flagged or ex


def _neighbours(sorted_xs: list[float], x: float) -> list[float]:
    """The grid values needed to interpolate/extrapolate at ``x`` (one if exact, else two)."""
    i = bisect.bisect_left(sorted_xs, x)
    if i < len(sorted_xs) and abs(sorted_xs[i] - x) < 1e-9 or len(sorted_xs) == 1:
        return [sorted_xs[min(i, len(sorted_xs) - 1)]]
    i = min(max(i, 1), len(sorted_xs) - 1)
    return [sorted_xs[i - 1], sorted_xs[i]]


class TableModel:
    """Fast lookups into a :class:`LatencyTable` (precomputed log-space families)."""

    def __init__(self, table: LatencyTable) -> None:
        self.table = table
        self.families: dict[tuple[str, str, tuple[int, int] | None], _Family] = {}
        dense: dict[str, list[LayerSetting]] = {}
        for entry in table.entries.values():
            s = entry.setting
            self.families.setdefault(s.family, _Family()).add(s.fmap, s.rate, s.channels, entry.latency_ms)
            if s.scheme == "dense":
                dense.setdefault(s.layer_type, []).append(s)
        # the dense entry is every scheme's rate-1 anchor
        for (layer_type, scheme, _), fam in self.families.items():
            if scheme == "dense":
                continue
            for s in dense.get(layer_type, []):
                key = (math.log(s.fmap), 0.0)
                if key not in fam.slices or all(abs(c - math.log(s.channels)) > 1e-9 for c, _ in fam.slices[key]):
                    fam.add(s.fmap, 1.0, s.channels, table.entries[s.key()].latency_ms)

    def lookup(self, q: Query) -> tuple[float, bool]:
        """Latency in ms of one query and whether it was extrapolated or approximated."""
        fam, approx = self._family(q)
        log_ms, ex = fam.log_latency(math.log(q.channels), math.log(q.fmap), math.log(q.rate))
        return q.scale * math.exp(log_ms), ex or approx or q.approximate

    def _family(self, q: Query) -> tuple[_Family, bool]:
        fam = self.families.get((q.layer_type, q.scheme, q.block))
        if fam is not None:
            return fam, False
        same_scheme = [k for k in self.families if k[0] == q.layer_type and k[1] == q.scheme]
        block = q.block
        if same_scheme and block is not None:
            def dist(k: tuple[str, str, tuple[int, int] | None]) -> float:
                b = k[2] or (1, 1)
                return sum(abs(math.log(max(x, 1) / max(y, 1))) for x, y in zip(b, block, strict=False))
            return self.families[min(same_scheme, key=dist)], True
        if same_scheme:
            return self.families[same_scheme[0]], True
        dense = self.families.get((q.layer_type, "dense", None))
        if dense is None:
            raise InvalidPlan(f"latency table has no {q.layer_type} entries; rebuild it with a grid "
                              f"that includes {q.layer_type!r}")
        return dense, True


@register_latency("lut")
class LookupTableLatency:
    """Sum of per-layer table latencies; see the module docstring.

    With a model-specific table (:class:`~evaluators.latency.model_table.ModelLatencyTable`, from
    ``npas build-lut --model``) the latency is the table's base term plus its in-context entries,
    and plans of any other model (arch fingerprint) fail.

    Args:
        table: a :class:`LatencyTable`, a ``ModelLatencyTable`` or the path of either file.
        device: the device the table must be for (None: accept the table's device).
        backend: the backend version the table must be for (None: accept any).
        force: use a table made for another device/backend anyway (with a warning).
    """

    name = "lut"

    def __init__(self, table: str | Path | LatencyTable | ModelLatencyTable, *, device: str | None = None,
                 backend: str | None = None, force: bool = False) -> None:
        self.path = None if isinstance(table, (LatencyTable, ModelLatencyTable)) else str(table)
        if self.path is not None:
            table = load_table(self.path, device=device, backend=backend, force=force)
        else:
            table.check(device=device, backend=backend, force=force)  # type: ignore[union-attr]
        self.table: LatencyTable | ModelLatencyTable = table  # type: ignore[assignment]
        self.model = None if isinstance(table, ModelLatencyTable) else TableModel(table)  # type: ignore[arg-type]
        self.base_ms = (table.base_ms or 0.0) if isinstance(table, ModelLatencyTable) else 0.0
        self._memo: dict[tuple[str, int, LayerAction], tuple[float, bool]] = {}

    def config(self) -> dict[str, Any]:
        cfg = {"device": self.table.device, "backend": self.table.backend,
               "created": self.table.created, "entries": len(self.table)}
        if isinstance(self.table, ModelLatencyTable):
            cfg.update(arch_fingerprint=self.table.arch_fingerprint, base_ms=self.table.base_ms)
        return cfg

    def layer_ms(self, spec: LayerSpec, action: LayerAction) -> tuple[float, bool]:
        """Latency of one layer in ms and whether any part was extrapolated."""
        if isinstance(self.table, ModelLatencyTable):
            try:
                return self.table.layer_ms(spec.name, _SPACE.canonical(spec, action))
            except KeyError as exc:
                raise InvalidPlan(str(exc.args[0])) from None
        assert self.model is not None
        total, flagged = 0.0, False
        for q in layer_queries(spec, action):
            ms, ex = self.model.lookup(q)
            total += ms
            flagged |= ex
        return total, flagged

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        fp = context.arch_fingerprint
        if isinstance(self.table, ModelLatencyTable) and self.table.arch_fingerprint != fp:
            return [LatencyResult.failure(mismatch_message(self.table, fp)) for _ in plans]
        if isinstance(self.table, ModelLatencyTable) and self.table.base_ms is None:
            return [LatencyResult.failure("the model latency table has no dense build yet; finish it "
                                          "with `npas build-lut --model ...`") for _ in plans]
        results = []
        for plan in plans:
            if len(plan.actions) != len(context.layers):
                results.append(LatencyResult.failure(
                    f"plan has {len(plan.actions)} actions for {len(context.layers)} layers"))
                continue
            total, flagged, per_layer = self.base_ms, False, []
            try:
                for idx, (spec, action) in enumerate(zip(context.layers, plan.actions, strict=False)):
                    key = (fp, idx, action)
                    if key not in self._memo:
                        self._memo[key] = self.layer_ms(spec, action)
                    ms, ex = self._memo[key]
                    total, flagged = total + ms, flagged or ex
                    per_layer.append(ms)
            except InvalidPlan as exc:
                results.append(LatencyResult.failure(str(exc)))
                continue
            results.append(LatencyResult(total, threads=self.table.threads, extrapolated=flagged,
                                         details={"layer_ms": per_layer, "base_ms": self.base_ms}))
        return results

    def scheme_names(self) -> list[str]:
        """Schemes present in the table (for diagnostics)."""
        if self.model is None:
            return sorted({a.scheme.value for _, a in self.table.entries} | {Scheme.DENSE.value})  # type: ignore[union-attr]
        return sorted({s for _, s, _ in self.model.families} | {Scheme.DENSE.value})


def load_table(path: str | Path, *, device: str | None = None, backend: str | None = None,
               force: bool = False) -> LatencyTable | ModelLatencyTable:
    """A grid table or a model-specific table, whichever ``path`` holds (checked like ``load``)."""
    data = read_table_json(path)
    table = (ModelLatencyTable.from_dict(data, str(path)) if is_model_table(data)
             else LatencyTable.from_dict(data, str(path)))
    table.check(device=device, backend=backend, force=force)
    return table
