"""``predictor``: ridge + gradient-boosted trees fitted on a latency table, stored as plain JSON.

Each layer is mapped to table queries exactly as in ``lut`` (:func:`~evaluators.latency.lut.layer_queries`);
a ridge regression plus boosted trees on its residuals predict ``log(latency_ms / MACs)`` from
the features below, so predictions scale with MACs and generalize to shapes between and beyond the table's points. Model latency = sum over
layers, optionally calibrated on whole-model measurements (``calibrate``: ``a * sum + b``).

The fitted ensemble is exported to JSON (tree arrays) and evaluated with numpy, so ``save`` /
``load`` never pickle and loading a file from elsewhere cannot run code. scikit-learn is needed
only to ``fit``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.context import ModelContext
from evaluators.latency.lut import Query, layer_queries
from evaluators.latency.lut_table import KERNEL_OF, LAYER_TYPES, LatencyTable
from evaluators.latency.model_table import ModelLatencyTable
from evaluators.registry import register_latency
from evaluators.results import LatencyResult
from npas_env.errors import CacheError, InvalidConfig
from npas_env.io import atomic_write_text
from npas_env.plan import LayerAction, PruningPlan, Scheme

PREDICTOR_FORMAT = "npas-latency-predictor"
_SCHEMES = tuple(s.value for s in Scheme)
FEATURES = (*(f"type_{t}" for t in LAYER_TYPES), *(f"scheme_{s}" for s in _SCHEMES), "log_channels",
            "log_fmap", "kernel", "log_rate", "block_rows", "block_cols", "log_macs", "log_kept_macs")


def query_macs(q: Query) -> float:
    """Dense MACs of the table layer a query stands for (times its multiplier)."""
    k = KERNEL_OF[q.layer_type]
    per_out = k * k if q.layer_type == "dw3x3" else q.channels * k * k
    return q.scale * q.channels * per_out * q.fmap * q.fmap


def features(q: Query) -> np.ndarray:
    """Float64 feature vector of shape (len(FEATURES),) for one query."""
    type_hot = [float(q.layer_type == t) for t in LAYER_TYPES]
    scheme_hot = [float(q.scheme == s) for s in _SCHEMES]
    p, c = q.block or (1, 1)
    p = p or q.channels  # 0 = the whole dimension
    c = c or q.channels
    macs = query_macs(q)
    return np.array([*type_hot, *scheme_hot, math.log(q.channels), math.log(q.fmap),
                     KERNEL_OF[q.layer_type], math.log(q.rate), math.log2(p), math.log2(c),
                     math.log(macs), math.log(macs / q.rate)])


def _table_queries(table: LatencyTable) -> tuple[list[Query], np.ndarray]:
    queries, ms = [], []
    for e in table.entries.values():
        s = e.setting
        queries.append(Query(s.layer_type, float(s.channels), float(s.fmap), s.scheme, s.rate, s.block))
        ms.append(e.latency_ms)
    return queries, np.asarray(ms)


def error_report(predicted: Sequence[float] | np.ndarray,
                 measured: Sequence[float] | np.ndarray) -> dict[str, float]:
    """MAPE (%), share of predictions within +-10 % and the count."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    rel = np.abs(p - m) / m
    return {"n": int(m.size), "mape_pct": float(100 * rel.mean()) if m.size else float("nan"),
            "within_10pct": float((rel <= 0.10).mean()) if m.size else float("nan")}


class TreeEnsemble:
    """A boosted tree ensemble as padded numpy arrays (JSON round trip, vectorized predict)."""

    def __init__(self, init: float, learning_rate: float, trees: list[dict[str, Any]]) -> None:
        self.init, self.learning_rate, self.trees = float(init), float(learning_rate), trees
        width = max((len(t["left"]) for t in trees), default=1)
        def pad(key: str, fill: float) -> np.ndarray:
            return np.array([t[key] + [fill] * (width - len(t[key])) for t in trees] or [[fill]])
        self.left, self.right = pad("left", -1).astype(int), pad("right", -1).astype(int)
        self.feature, self.threshold = pad("feature", 0).astype(int), pad("threshold", 0.0)
        self.value = pad("value", 0.0)
        self.depth = max((int(t.get("depth", width)) for t in trees), default=0)
        self._flat: tuple[np.ndarray, ...] | None = None

    @classmethod
    def from_sklearn(cls, model: Any) -> TreeEnsemble:
        trees = []
        for est in model.estimators_[:, 0]:
            t = est.tree_
            trees.append({"left": t.children_left.tolist(), "right": t.children_right.tolist(),
                          "feature": t.feature.tolist(), "threshold": t.threshold.tolist(),
                          "value": t.value[:, 0, 0].tolist(), "depth": int(t.max_depth)})
        return cls(float(model.init_.constant_.ravel()[0]), model.learning_rate, trees)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions for rows of ``x`` (n, n_features): all trees walked together on flat arrays."""
        n_trees, width = self.left.shape
        n, nf = x.shape
        if self._flat is None:  # global node ids (a leaf points to itself), int32 for fast gathers
            base = (np.arange(n_trees) * width)[:, None]
            own = base + np.arange(width)[None, :]
            self._flat = (np.where(self.left >= 0, self.left + base, own).ravel().astype(np.int32),
                          np.where(self.right >= 0, self.right + base, own).ravel().astype(np.int32),
                          self.feature.ravel().astype(np.int32), self.threshold.ravel(),
                          self.value.ravel())
        left, right, feature, threshold, value = self._flat
        node = np.repeat(np.arange(n_trees, dtype=np.int32) * width, n)
        cols = np.tile(np.arange(n, dtype=np.int32) * nf, n_trees)
        xf = x.ravel()
        for _ in range(self.depth):
            node = np.where(xf[cols + feature[node]] <= threshold[node], left[node], right[node])
        return self.init + self.learning_rate * value[node].reshape(n_trees, n).sum(axis=0)

    def to_dict(self) -> dict[str, Any]:
        return {"init": self.init, "learning_rate": self.learning_rate, "trees": self.trees}


@register_latency("predictor")
class LatencyPredictor:
    """Layer-wise latency regression; see the module docstring.

    Args:
        path: a saved predictor (JSON) to load.
        table: a table (or its path) to fit on when no ``path`` is given.
        n_estimators, max_depth, learning_rate: boosting settings for ``fit``.
        force: accept a table of another device/backend (passed to ``LatencyTable.load``).
    """

    name = "predictor"

    def __init__(self, path: str | Path | None = None, *, table: str | Path | LatencyTable | None = None,
                 n_estimators: int = 300, max_depth: int = 4, learning_rate: float = 0.08,
                 force: bool = False) -> None:
        self.params = {"n_estimators": n_estimators, "max_depth": max_depth, "learning_rate": learning_rate}
        self.ensemble: TreeEnsemble | None = None
        self.linear = np.zeros(len(FEATURES) + 1)
        self.calibration = (1.0, 0.0)
        self.device, self.backend, self.report = "", "", {}
        self._memo: dict[tuple[str, int, LayerAction], float] = {}
        if path is not None:
            self._load(Path(path))
        elif table is not None:
            if not isinstance(table, LatencyTable):
                table = LatencyTable.load(table, force=force)
            self.fit(table)

    def config(self) -> dict[str, Any]:
        return {"device": self.device, "backend": self.backend, **self.params,
                "calibration": list(self.calibration)}

    def fit(self, table: LatencyTable, holdout: float = 0.2, seed: int = 0) -> LatencyPredictor:
        """Fit on ``table``; ``report`` gets the error on a random ``holdout`` share (then refit on all)."""
        queries, ms = _table_queries(table)
        self._fit_queries(queries, ms, holdout, seed)
        self.device, self.backend = table.device, table.backend
        return self

    def fit_model_table(self, table: ModelLatencyTable, context: ModelContext,
                        holdout: float = 0.2, seed: int = 0) -> LatencyPredictor:
        """Fit on a model table's in-context entries, then calibrate on its compiled builds.

        Entries of layers that map to one table query are the training targets (a
        depthwise-separable replacement, two queries, cannot be split and is left out); the
        builds (whole plans with their measured whole-call latency) fit ``a * sum + b``, where
        ``b`` takes the place of the table's base term.
        """
        specs = {s.name: s for s in context.layers}
        queries, ms = [], []
        for (layer, action), entry in table.entries.items():
            qs = layer_queries(specs[layer], action) if layer in specs else []
            if len(qs) == 1 and entry.latency_ms > 0:
                queries.append(qs[0])
                ms.append(entry.latency_ms)
        self._fit_queries(queries, np.asarray(ms), holdout, seed)
        self.device, self.backend = table.device, table.backend
        plans, walls = table.build_plans()
        if len(plans) >= 2:
            self.calibrate(context, plans, walls)
        return self

    def _fit_queries(self, queries: Sequence[Query], ms: np.ndarray, holdout: float, seed: int) -> None:
        try:
            from sklearn.ensemble import GradientBoostingRegressor
        except ImportError as exc:  # pragma: no cover - a core dependency
            raise InvalidConfig(f"fitting a predictor needs scikit-learn: {exc}") from None
        if len(queries) < 5:
            raise InvalidConfig(f"need at least 5 table entries to fit, got {len(queries)}")
        x = np.stack([features(q) for q in queries])
        y = np.log(ms) - x[:, FEATURES.index("log_macs")]
        rng = np.random.default_rng(seed)
        test = rng.random(len(y)) < holdout
        if 0 < test.sum() < len(y) - 4:
            self._fit_arrays(x[~test], y[~test], GradientBoostingRegressor, seed)
            self.report = {"holdout": error_report(self._predict_x(x[test]), ms[test])}
        self._fit_arrays(x, y, GradientBoostingRegressor, seed)
        self.report["train"] = error_report(self._predict_queries(queries), ms)
        self._memo.clear()

    def _fit_arrays(self, x: np.ndarray, y: np.ndarray, gbr: Any, seed: int) -> None:
        """Ridge in log space (extrapolates), then boosted trees on its residuals."""
        xa = np.hstack([x, np.ones((len(x), 1))])
        reg = 1e-3 * np.eye(xa.shape[1])
        reg[-1, -1] = 0.0
        self.linear = np.linalg.solve(xa.T @ xa + reg, xa.T @ y)
        model = gbr(random_state=seed, **self.params).fit(x, y - xa @ self.linear)
        self.ensemble = TreeEnsemble.from_sklearn(model)

    def _predict_x(self, x: np.ndarray) -> np.ndarray:
        if self.ensemble is None:
            raise InvalidConfig("predictor is not fitted: call fit(table) or load a saved one")
        linear = x @ self.linear[:-1] + self.linear[-1]
        return np.exp(linear + self.ensemble.predict(x) + x[:, FEATURES.index("log_macs")])

    def _predict_queries(self, queries: Sequence[Query]) -> np.ndarray:
        if not queries:
            return np.zeros(0)
        return self._predict_x(np.stack([features(q) for q in queries]))

    def plan_ms(self, context: ModelContext, plan: PruningPlan) -> float:
        """Uncalibrated sum of the predicted per-layer latencies (ms)."""
        self._fill_memo(context, [plan])
        return self._memo_sum(context, plan)

    def _memo_sum(self, context: ModelContext, plan: PruningPlan) -> float:
        fp, memo = context.arch_fingerprint, self._memo
        return sum(memo[(fp, i, a)] for i, a in enumerate(plan.actions))

    def _fill_memo(self, context: ModelContext, plans: Sequence[PruningPlan]) -> None:
        """Predict every (layer, action) of ``plans`` not seen yet in one vectorized call."""
        fp, missing = context.arch_fingerprint, {}
        for plan in plans:
            for idx, (spec, action) in enumerate(zip(context.layers, plan.actions, strict=True)):
                if (fp, idx, action) not in self._memo:
                    missing[(fp, idx, action)] = spec
        if not missing:
            return
        qs = [(key, q) for key, spec in missing.items() for q in layer_queries(spec, key[2])]
        preds = self._predict_queries([q for _, q in qs])
        for key in missing:
            self._memo[key] = 0.0
        for (key, _), ms in zip(qs, preds, strict=True):
            self._memo[key] += float(ms)

    def calibrate(self, context: ModelContext, plans: Sequence[PruningPlan],
                  measured_ms: Sequence[float]) -> dict[str, float]:
        """Fit ``latency = a * layer_sum + b`` on whole-model measurements; returns the new error."""
        sums = np.array([self.plan_ms(context, p) for p in plans])
        m = np.asarray(measured_ms, float)
        a, b = np.linalg.lstsq(np.stack([sums, np.ones_like(sums)], 1), m, rcond=None)[0]
        self.calibration = (float(max(a, 1e-3)), float(b))
        self.report["calibration"] = error_report(self.calibration[0] * sums + self.calibration[1], m)
        return self.report["calibration"]

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        self._fill_memo(context, [p for p in plans if len(p.actions) == len(context.layers)])
        results = []
        for plan in plans:
            if len(plan.actions) != len(context.layers):
                results.append(LatencyResult.failure(
                    f"plan has {len(plan.actions)} actions for {len(context.layers)} layers"))
                continue
            ms = self.calibration[0] * self._memo_sum(context, plan) + self.calibration[1]
            results.append(LatencyResult(ms) if ms > 0 else LatencyResult.failure(
                f"calibrated prediction {ms:.3g} ms <= 0; recalibrate the predictor"))
        return results

    def save(self, path: str | Path) -> None:
        """Write the fitted predictor as JSON (atomic)."""
        if self.ensemble is None:
            raise InvalidConfig("nothing to save: the predictor is not fitted")
        data = {"format": PREDICTOR_FORMAT, "version": 1, "features": list(FEATURES),
                "device": self.device, "backend": self.backend, "params": self.params,
                "calibration": list(self.calibration), "report": self.report,
                "linear": self.linear.tolist(), "ensemble": self.ensemble.to_dict()}
        atomic_write_text(Path(path), json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> LatencyPredictor:
        return cls(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CacheError(f"cannot read latency predictor {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != PREDICTOR_FORMAT or data.get("version") != 1:
            raise CacheError(f"{path} is not an npas latency predictor ({PREDICTOR_FORMAT} v1)")
        if data.get("features") != list(FEATURES):
            raise CacheError(f"{path} uses other features; refit it with this npas-env version")
        try:
            ens = data["ensemble"]
            self.ensemble = TreeEnsemble(ens["init"], ens["learning_rate"], ens["trees"])
            self.linear = np.asarray(data["linear"], dtype=float).reshape(len(FEATURES) + 1)
            self.calibration = (float(data["calibration"][0]), float(data["calibration"][1]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise CacheError(f"{path}: malformed predictor ({exc})") from None
        self.device, self.backend = str(data.get("device", "")), str(data.get("backend", ""))
        self.params.update(data.get("params") or {})
        self.report = dict(data.get("report") or {})
