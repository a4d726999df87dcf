"""Tabular tables: per-(layer, action) accuracy drops and latency deltas of one model (data + I/O).

Like NAS-Bench-201 for NPAS: one zoo model's evaluations are measured once, then RL and search
methods run against the table in minutes. The table holds, for every layer and every canonical
action its mask allows, what that action alone does to the model (all other layers dense):

* ``drop``: dense accuracy minus the accuracy of that single-layer plan;
* ``latency_ms``: latency of that single-layer plan minus the dense latency (a delta, so any
  end-to-end overhead the real evaluator measures stays in ``dense_latency_ms``); taken on the
  layer's own ops when the evaluator reports a per-op profile (see :func:`latency_delta`).

A whole plan is then scored **additively** (no pairwise terms)::

    accuracy   = clip(base_accuracy - sum_l drop[l, a_l], 0, 1)
    latency_ms = max(dense_latency_ms + sum_l latency_ms[l, a_l], floor)

Additivity is the approximation that makes the table small; it ignores interactions between
layers (fine-tuning recovers joint damage differently). Coupled layers (residual groups) have
filter pruning removed from their choices, so every layer's mask is independent of the others.
``scripts/build_tabular.py`` regenerates tables; shipped tables live in ``npas_env/tables``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.context import ModelContext
from npas_env.errors import EvaluatorNotFound, InvalidConfig
from npas_env.layers import LayerKind, LayerSpec
from npas_env.plan import LayerAction, PruningPlan, Scheme
from npas_env.search_space import SearchSpace

TABLE_FORMAT = "npas-tabular/1"
TABLES_DIR = Path(__file__).parent


@dataclass
class LayerTable:
    """Rows of one layer: canonical actions with their accuracy-drop and latency deltas."""

    actions: list[LayerAction]
    drop: np.ndarray
    latency_ms: np.ndarray
    index: dict[LayerAction, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.drop = np.asarray(self.drop, dtype=np.float64)
        self.latency_ms = np.asarray(self.latency_ms, dtype=np.float64)
        self.index = {a: i for i, a in enumerate(self.actions)}


@dataclass
class TabularTable:
    """A per-(layer, action) table for one model; see the module docstring for the model.

    Attributes:
        layers: the model's prunable layers (specs).
        space: the search space the table covers.
        base_accuracy: accuracy of the dense model.
        dense_latency_ms: latency of the dense model.
        rows: one :class:`LayerTable` per layer.
        metadata: provenance (model, evaluators and their configs, build date, notes).
    """

    layers: tuple[LayerSpec, ...]
    space: SearchSpace
    base_accuracy: float
    dense_latency_ms: float
    rows: list[LayerTable]
    metadata: dict[str, Any] = field(default_factory=dict)

    def accuracy(self, rows: Sequence[int]) -> float:
        drop = sum(float(t.drop[r]) for t, r in zip(self.rows, rows, strict=True))
        return min(max(self.base_accuracy - drop, 0.0), 1.0)

    def latency(self, rows: Sequence[int]) -> float:
        delta = sum(float(t.latency_ms[r]) for t, r in zip(self.rows, rows, strict=True))
        return max(self.dense_latency_ms + delta, 1e-3 * self.dense_latency_ms)

    def plan_rows(self, plan: PruningPlan) -> list[int] | None:
        """Row index per layer of ``plan``, or None if an action is not in the table."""
        out = []
        for table, action in zip(self.rows, plan.actions, strict=True):
            row = table.index.get(action)
            if row is None:
                return None
            out.append(row)
        return out

    # ------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        space = {"filter_types": [f.value for f in self.space.filter_types],
                 "schemes": [s.value for s in self.space.schemes], "rates": list(self.space.rates),
                 "block_sizes": [list(b) for b in self.space.block_sizes],
                 "prune_depthwise": self.space.prune_depthwise, "num_patterns": self.space.num_patterns}
        layers = [{**asdict(s), "kind": s.kind.value} for s in self.layers]
        rows = [[{**a.to_dict(), "drop": float(t.drop[i]), "latency_ms": float(t.latency_ms[i])}
                 for i, a in enumerate(t.actions)] for t in self.rows]
        return {"format": TABLE_FORMAT, "metadata": self.metadata, "search_space": space,
                "base_accuracy": self.base_accuracy, "dense_latency_ms": self.dense_latency_ms,
                "layers": layers, "rows": rows}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TabularTable:
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise InvalidConfig(f"not a tabular table (expected 'format': {TABLE_FORMAT!r})")
        layers = tuple(_spec_from_dict(d) for d in data["layers"])
        rows = []
        for entries in data["rows"]:
            actions = [LayerAction.from_dict({k: e[k] for k in ("scheme", "rate", "block_size", "filter_type")})
                       for e in entries]
            rows.append(LayerTable(actions, np.asarray([e["drop"] for e in entries], dtype=np.float64),
                                   np.asarray([e["latency_ms"] for e in entries], dtype=np.float64)))
        sp = data["search_space"]
        space = SearchSpace(tuple(sp["filter_types"]), tuple(sp["schemes"]), tuple(sp["rates"]),
                            tuple(tuple(b) for b in sp["block_sizes"]), sp["prune_depthwise"],
                            sp["num_patterns"])
        return cls(layers, space, float(data["base_accuracy"]), float(data["dense_latency_ms"]), rows,
                   dict(data.get("metadata") or {}))

    def save(self, path: str | Path) -> None:
        from npas_env.io import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=0))


def _spec_from_dict(d: dict[str, Any]) -> LayerSpec:
    pairs = ("kernel_size", "stride", "padding", "dilation", "input_hw", "output_hw")
    return LayerSpec(**{**d, "kind": LayerKind(d["kind"]), **{k: tuple(d[k]) for k in pairs}})


def table_names() -> list[str]:
    """Names of the shipped tables (``npas_env/tables/*.json``)."""
    return sorted(p.stem for p in TABLES_DIR.glob("*.json"))


def load_table(table: str | Path | TabularTable) -> TabularTable:
    """A table by shipped name, JSON path, or as given.

    Raises:
        EvaluatorNotFound: unknown name (with did-you-mean); InvalidConfig: not a table file.
    """
    if isinstance(table, TabularTable):
        return table
    path = Path(table)
    if not path.suffix:
        if str(table) not in table_names():
            raise EvaluatorNotFound(str(table), kind="tabular table", known=table_names())
        path = TABLES_DIR / f"{table}.json"
    return _load_path(str(path.resolve()))


_LOADED: dict[str, TabularTable] = {}


def _load_path(path: str) -> TabularTable:
    if path not in _LOADED:
        try:
            _LOADED[path] = TabularTable.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidConfig(f"cannot read tabular table {path}: {exc}") from None
    return _LOADED[path]


# ---------------------------------------------------------------------------------- build
def table_actions(space: SearchSpace, spec: LayerSpec, *, coupled_filter: bool = False) -> list[LayerAction]:
    """Canonical actions the layer's own mask allows.

    Filter pruning is dropped on coupled layers (residual groups) unless ``coupled_filter``: a
    table whose rows must be independent cannot hold it, a per-layer latency table can.
    """
    mask = space.action_mask(spec)
    offsets = np.concatenate([[0], np.cumsum(space.nvec)[:-1]])
    allowed = [np.flatnonzero(mask[o:o + n]) for o, n in zip(offsets, space.nvec, strict=True)]
    seen: dict[LayerAction, None] = {}
    for vec in itertools.product(*allowed):
        action = space.decode(spec, np.array(vec), check=False)
        if (not coupled_filter and spec.coupled_group is not None and action.scheme is Scheme.FILTER
                and not action.is_dense):
            continue
        seen.setdefault(action, None)
    return list(seen)


def latency_delta(layer: str, result: Any, reference: Any) -> float:
    """Latency change of ``layer``'s single-layer plan against dense, in ms.

    When both results carry the compiled runtime's per-op profile (``details["layers_ms"]``),
    the delta is taken on the ops of that layer only (the layer itself, or ``<layer>.*`` after a
    filter-type change): on small models the whole-model difference is within timing noise.
    """
    mine, ref = result.details.get("layers_ms"), reference.details.get("layers_ms")
    if not mine or not ref:
        return float(result.latency_ms - reference.latency_ms)
    return layer_ops_ms(layer, mine) - layer_ops_ms(layer, ref)


def layer_ops_ms(layer: str, ops_ms: Mapping[str, float]) -> float:
    """Time of ``layer``'s own ops in a per-op profile ``{op name: ms}``.

    A layer's ops are the layer itself or its ``<layer>.*`` replacements after a filter-type
    change; a skipped layer has none (0.0).
    """
    return sum(ms for op, ms in ops_ms.items() if op == layer or op.startswith(layer + "."))


def build_table(context: ModelContext, accuracy: Any, latency: Any, *, batch_size: int = 32,
                metadata: dict[str, Any] | None = None,
                progress: Callable[[int, int], None] | None = None) -> TabularTable:
    """Measure every (layer, action) with real evaluators: single-layer plans against dense.

    Args:
        context: the model (its layers and search space define the table).
        accuracy, latency: evaluator objects (``evaluate`` / ``measure`` batches).
        batch_size: plans per evaluator call.
        metadata: extra provenance stored in the table.
        progress: called with (done, total) after each batch.

    Raises:
        InvalidConfig: the dense model could not be evaluated. A failed single-layer plan is
            stored as drop = base accuracy and latency delta 0 (and counted in metadata).
    """
    dense = PruningPlan.dense(context.layer_names, context.arch_fingerprint)
    base, ref = accuracy.evaluate(context, [dense])[0], latency.measure(context, [dense])[0]
    if not (base.ok and ref.ok):
        raise InvalidConfig(f"dense model evaluation failed: {base.error or ref.error}")
    jobs = [(i, a) for i, s in enumerate(context.layers) for a in table_actions(context.search_space, s)]
    values: dict[tuple[int, LayerAction], tuple[float, float]] = {}
    failures = 0
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        plans = [PruningPlan(tuple(a if j == i else LayerAction() for j in range(len(context.layers))),
                             context.layer_names, context.arch_fingerprint) for i, a in chunk]
        for (i, a), acc, lat in zip(chunk, accuracy.evaluate(context, plans),
                                    latency.measure(context, plans), strict=True):
            ok = acc.ok and lat.ok
            failures += not ok
            values[i, a] = ((base.accuracy - acc.accuracy,
                             latency_delta(context.layers[i].name, lat, ref)) if ok
                            else (base.accuracy, 0.0))
        if progress:
            progress(min(start + batch_size, len(jobs)), len(jobs))
    rows = []
    for i, spec in enumerate(context.layers):
        acts = table_actions(context.search_space, spec)
        rows.append(LayerTable(acts, np.asarray([values[i, a][0] for a in acts], dtype=np.float64),
                               np.asarray([values[i, a][1] for a in acts], dtype=np.float64)))
    meta = {"model": context.name, "arch_fingerprint": context.arch_fingerprint,
            "accuracy": {"name": accuracy.name, "config": accuracy.config()},
            "latency": {"name": latency.name, "config": latency.config()},
            "entries": len(jobs), "failed_entries": failures, **(metadata or {})}
    return TabularTable(tuple(context.layers), context.search_space, float(base.accuracy),
                        float(ref.latency_ms), rows, json.loads(json.dumps(meta, default=str)))
