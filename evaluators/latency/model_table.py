"""A model-specific latency table: each layer's own op time, measured inside the whole model.

Where the grid table (:mod:`~evaluators.latency.lut_table`) times standalone cascades of generic
layers, this table holds, for one model (checked by its arch fingerprint), every
``(layer, action)`` timed **in context**: the whole model compiled with that action on that layer
(and other actions on the other layers), the layer's time read from the compiled runtime's per-op
profile. Everything outside the prunable layers (pooling, unfused adds, fallbacks, the call
overhead) is the **base** term, taken from the dense model::

    latency_ms = base_ms + sum_l entry[l, a_l].latency_ms
    base_ms    = whole-call latency of the dense model - sum of its layers' own op times

A skipped layer has no op of its own but leaves its BatchNorm and a residual add behind; a
build's time beyond its layers and the base goes to its skipped layers
(``model_builder._charge_skips``).

An action not in the table (a rate left out of the build) is interpolated in log rate between the
same layer's entries of the same filter type, scheme and block (the dense entry is the rate-1
anchor), or takes the nearest block size; such results are flagged ``extrapolated``. The file is
plain JSON (never pickle)::

    {"format": "npas-model-latency-table", "version": 1, "model": "resnet20",
     "arch_fingerprint": "...", "layers": ["conv1", ...], "device": "...", "backend": "...",
     "machine": {...}, "created": "...", "threads": 1, "base_ms": 0.05, "dense_ms": 3.1,
     "noise": {...}, "builds": [{"actions": [...], "wall_ms": 2.4, "layers_ms": 2.3}],
     "entries": [{"layer": "conv1", "scheme": "pattern", "rate": 3.0, "block_size": null,
                  "filter_type": "keep", "samples_ms": [0.021], "rel_iqr": 0.03}]}
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluators.latency.lut_table import LatencyTable, TableMismatch, noise_summary, utc_now
from npas_env.errors import CacheError
from npas_env.io import atomic_write_text
from npas_env.plan import LayerAction, PruningPlan

MODEL_TABLE_FORMAT = "npas-model-latency-table"
MODEL_TABLE_VERSION = 1
#: Samples kept per entry (later builds add samples while other layers still have work).
MAX_SAMPLES = 5

_Family = tuple[str, str, tuple[int, int] | None]   # (filter type, scheme, block)


@dataclass(frozen=True)
class ContextEntry:
    """One layer under one action, timed in context.

    ``samples_ms`` holds one median over profiling rounds per build that measured it (the entry is
    their median); ``rel_iqr`` is the relative IQR over the rounds of the first build.
    """

    layer: str
    action: LayerAction
    samples_ms: tuple[float, ...]
    rel_iqr: float = 0.0

    @property
    def latency_ms(self) -> float:
        return float(statistics.median(self.samples_ms))

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, **self.action.to_dict(), "samples_ms": list(self.samples_ms),
                "rel_iqr": self.rel_iqr}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContextEntry:
        action = LayerAction.from_dict({k: data[k] for k in ("scheme", "rate", "block_size", "filter_type")})
        samples = tuple(float(v) for v in data["samples_ms"])
        if not samples or not all(math.isfinite(v) and v >= 0 for v in samples):
            raise ValueError(f"samples_ms must be finite and >= 0, got {samples}")
        return cls(str(data["layer"]), action, samples, float(data.get("rel_iqr", 0.0)))


@dataclass
class ModelLatencyTable:
    """Per-(layer, action) in-context latencies of one model; see the module docstring.

    Attributes:
        model: model name (free text).
        arch_fingerprint: ``layers_fingerprint`` of the model the table is for.
        layers: the prunable layer names, in plan order.
        device, backend, machine, created, threads: as in :class:`LatencyTable`.
        base_ms: latency outside the prunable layers' own ops (from the dense model).
        dense_ms: whole-call latency of the dense model.
        builds: one record per compiled model (actions, whole-call ms, sum of its layers' ms).
        entries: (layer, action) -> entry.
    """

    model: str
    arch_fingerprint: str
    layers: tuple[str, ...]
    device: str
    backend: str
    machine: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=utc_now)
    threads: int = 1
    base_ms: float | None = None
    dense_ms: float | None = None
    builds: list[dict[str, Any]] = field(default_factory=list)
    entries: dict[tuple[str, LayerAction], ContextEntry] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: tuple[str, LayerAction]) -> bool:
        return key in self.entries

    def add_sample(self, layer: str, action: LayerAction, ms: float, rel_iqr: float) -> None:
        """Record one in-context measurement of ``layer`` under ``action`` (median over samples)."""
        old = self.entries.get((layer, action))
        if old is None:
            self.entries[(layer, action)] = ContextEntry(layer, action, (ms,), rel_iqr)
        elif len(old.samples_ms) < MAX_SAMPLES:
            self.entries[(layer, action)] = ContextEntry(layer, action, (*old.samples_ms, ms), old.rel_iqr)
        self.__dict__.pop("_index", None)

    def noise(self) -> dict[str, float]:
        """Summary of the per-entry relative IQRs over profiling rounds (median, p90, max)."""
        return noise_summary(e.rel_iqr for e in self.entries.values())

    # ------------------------------------------------------------------------ lookup
    def layer_ms(self, layer: str, action: LayerAction) -> tuple[float, bool]:
        """In-context latency of ``layer`` under a canonical ``action`` and whether it is off-table."""
        entry = self.entries.get((layer, action))
        if entry is not None:
            return entry.latency_ms, False
        families = self._families().get(layer, {})
        key = (action.filter_type.value, action.scheme.value, action.block_size)
        if key not in families:
            near = [k for k in families if k[:2] == key[:2]]
            if not near:
                raise KeyError(f"the model latency table has no entry for layer {layer!r} with "
                               f"{action}; rebuild it with this action's scheme and filter type")
            key = min(near, key=lambda k: _block_distance(k[2], action.block_size))
        points = list(families[key])
        dense = self.entries.get((layer, LayerAction(filter_type=action.filter_type)))
        if dense is not None:
            points.append((0.0, dense.latency_ms))
        return _interp_log_rate(sorted(points), math.log(action.rate)), True

    def predict(self, plan: PruningPlan) -> tuple[float, bool, list[float]]:
        """(base + sum of the layers' entries, any entry off-table, per-layer ms) of ``plan``."""
        if self.base_ms is None:
            raise KeyError("the model latency table has no dense build yet (no base term); "
                           "finish it with `npas build-lut --model ...`")
        per_layer, flagged = [], False
        for layer, action in zip(self.layers, plan.actions, strict=True):
            ms, off = self.layer_ms(layer, action)
            per_layer.append(ms)
            flagged |= off
        return self.base_ms + sum(per_layer), flagged, per_layer

    def build_plans(self) -> tuple[list[PruningPlan], list[float]]:
        """The compiled models of the build as plans and their whole-call latencies (ms)."""
        plans = [PruningPlan(tuple(LayerAction.from_dict(a) for a in b["actions"]), self.layers,
                             self.arch_fingerprint) for b in self.builds]
        return plans, [float(b["wall_ms"]) for b in self.builds]

    def _families(self) -> dict[str, dict[_Family, list[tuple[float, float]]]]:
        if "_index" not in self.__dict__:
            index: dict[str, dict[_Family, list[tuple[float, float]]]] = {}
            for (layer, a), e in self.entries.items():
                if not a.is_dense:
                    fam = (a.filter_type.value, a.scheme.value, a.block_size)
                    index.setdefault(layer, {}).setdefault(fam, []).append((math.log(a.rate), e.latency_ms))
            self.__dict__["_index"] = index
        return self.__dict__["_index"]

    # -------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return {"format": MODEL_TABLE_FORMAT, "version": MODEL_TABLE_VERSION, "model": self.model,
                "arch_fingerprint": self.arch_fingerprint, "layers": list(self.layers),
                "device": self.device, "backend": self.backend, "machine": self.machine,
                "created": self.created, "threads": self.threads, "base_ms": self.base_ms,
                "dense_ms": self.dense_ms, "noise": self.noise(), "builds": self.builds,
                "entries": [e.to_dict() for e in self.entries.values()]}

    def save(self, path: str | Path) -> None:
        """Write the table as JSON atomically."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=0))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> ModelLatencyTable:
        if not is_model_table(data):
            raise CacheError(f"{source} is not an npas model latency table (expected 'format': "
                             f"{MODEL_TABLE_FORMAT!r}); build one with `npas build-lut --model NAME`")
        if data.get("version") != MODEL_TABLE_VERSION:
            raise CacheError(f"{source} has model table version {data.get('version')!r}; this npas-env "
                             f"reads version {MODEL_TABLE_VERSION}. Rebuild it with `npas build-lut --model`")
        try:
            table = cls(str(data["model"]), str(data["arch_fingerprint"]), tuple(data["layers"]),
                        str(data["device"]), str(data["backend"]), dict(data.get("machine") or {}),
                        str(data.get("created", "")), int(data.get("threads", 1)),
                        _opt_float(data.get("base_ms")), _opt_float(data.get("dense_ms")),
                        list(data.get("builds") or []))
            for raw in data.get("entries") or []:
                entry = ContextEntry.from_dict(raw)
                table.entries[(entry.layer, entry.action)] = entry
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"{source}: malformed model latency table ({type(exc).__name__}: {exc}); "
                             "rebuild it with `npas build-lut --model`") from None
        return table

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None, backend: str | None = None,
             arch_fingerprint: str | None = None, force: bool = False) -> ModelLatencyTable:
        """Read a table file and check device, backend and model (see :meth:`check`).

        Raises:
            CacheError: missing, truncated or not a model latency table.
            TableMismatch: made for another model, or another device / backend without ``force``.
        """
        table = cls.from_dict(read_table_json(path), source=str(path))
        table.check(device=device, backend=backend, arch_fingerprint=arch_fingerprint, force=force)
        return table

    def check(self, *, device: str | None = None, backend: str | None = None,
              arch_fingerprint: str | None = None, force: bool = False) -> None:
        """Refuse a table of another model (always) or another device / backend (unless ``force``)."""
        if arch_fingerprint is not None and arch_fingerprint != self.arch_fingerprint:
            raise TableMismatch(mismatch_message(self, arch_fingerprint))
        LatencyTable(self.device, self.backend).check(device=device, backend=backend, force=force)


def mismatch_message(table: ModelLatencyTable, arch_fingerprint: str) -> str:
    """Why a model table does not fit a model (its arch fingerprint differs)."""
    return (f"the model latency table was built for another model: {table.model!r} with arch "
            f"fingerprint {table.arch_fingerprint!r}, this model's is {arch_fingerprint!r}; build "
            "one for this model with `npas build-lut --model NAME`")


def is_model_table(data: Any) -> bool:
    """Whether parsed JSON ``data`` is a model-specific table (vs a grid table)."""
    return isinstance(data, dict) and data.get("format") == MODEL_TABLE_FORMAT


def read_table_json(path: str | Path) -> Any:
    """The JSON content of a table file (CacheError saying how to rebuild if unreadable)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"cannot read latency table {path}: {type(exc).__name__}: {exc}. The file is "
                         "missing, truncated or not JSON; rebuild it with `npas build-lut` (reruns "
                         "resume from its last complete state)") from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _block_distance(a: tuple[int, int] | None, b: tuple[int, int] | None) -> float:
    a, b = a or (1, 1), b or (1, 1)
    return sum(abs(math.log(max(x, 1) / max(y, 1))) for x, y in zip(a, b, strict=True))


def _interp_log_rate(points: Sequence[tuple[float, float]], log_rate: float) -> float:
    """Latency at ``log_rate`` from sorted (log rate, ms) points: linear in log-log between the
    neighbours, beyond the last point along the last segment (slope clamped to [-1.2, 0])."""
    if len(points) == 1 or log_rate <= points[0][0]:
        return points[0][1]
    i = min(max(bisect.bisect_left([x for x, _ in points], log_rate), 1), len(points) - 1)
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    if y0 <= 0 or y1 <= 0:   # a layer without ops: interpolate plainly
        return max(y0 + (y1 - y0) * (min(log_rate, x1) - x0) / (x1 - x0), 0.0)
    slope = (math.log(y1) - math.log(y0)) / (x1 - x0)
    if log_rate > x1:
        slope = min(max(slope, -1.2), 0.0)
    return math.exp(math.log(y0) + slope * (log_rate - x0))
