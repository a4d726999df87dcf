"""Fast tabular mode: an NPAS env whose scores are looked up in a per-(layer, action) table.

Like NAS-Bench-201 for NPAS: one zoo model is measured once per (layer, action) with real
evaluators (``scripts/build_tabular.py``), then RL and search methods run against the table at
tens of thousands of env steps per second. The additive model and the table format are
documented in :mod:`npas_env.tables`. Two ways in:

* :class:`TabularNPASEnv` (``gymnasium.make("npas/TabularSmallCNN-v0")`` once
  :func:`register_tabular_envs` ran): same action space, masks and observation layout as
  :class:`~npas_env.env.NPASEnv`, no torch model at all;
* the ``tabular`` accuracy / latency evaluators, for the normal env and ``SearchProblem``
  (``NPASEnv(model, x, accuracy="tabular", latency="tabular")``; the table must match the model).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from evaluators.context import ModelContext
from evaluators.registry import register_accuracy, register_latency
from evaluators.results import AccuracyResult, LatencyResult
from npas_env.errors import InvalidAction, InvalidConfig
from npas_env.observation import BUDGET_CAP, ObservationEncoder, encode_layer
from npas_env.plan import LayerAction, PruningPlan, Scheme
from npas_env.render import render_decisions
from npas_env.reward import RewardFn, make_reward
from npas_env.tables import TabularTable, load_table

#: gymnasium id -> shipped table name.
TABULAR_ENV_IDS: dict[str, str] = {"npas/TabularSmallCNN-v0": "small_cnn_digits"}


class TabularNPASEnv(gym.Env):
    """NPAS pruning decisions scored from a precomputed table, one layer per step.

    ## Description
    The episode walks the table's layers in order; each step picks ``[filter_type, scheme, rate,
    block_size]`` for one layer, as in :class:`~npas_env.env.NPASEnv`. After the last layer the
    plan is scored additively from the table (see :mod:`npas_env.tables`).

    ## Action Space
    ``MultiDiscrete(space.nvec)``. Masked choices are repaired to the nearest allowed index (as
    ``NPASEnv`` does by default). Masks depend only on the layer: filter pruning is not offered
    on coupled layers (residual groups), so no cross-layer constraint exists.

    ## Observation Space
    ``Box(0, hi, (18,), float32)``, the same features as ``NPASEnv`` (see
    :mod:`npas_env.observation`).

    ## Reward
    0 until the last layer, then ``reward(accuracy, latency_ms)`` (default NPAS hinge).

    ## Episode End
    Terminates after the last layer; never truncates.

    ## Arguments
    table: shipped table name, JSON path or :class:`TabularTable`. reward: RewardFn or name.
    latency_budget_ms: target (None: half the dense latency).
    render_mode: None or ``"ansi"`` (``render()`` returns the decisions as text).
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, table: str | Path | TabularTable = "small_cnn_digits", *,
                 reward: RewardFn | str | None = None, latency_budget_ms: float | None = None,
                 render_mode: str | None = None) -> None:
        super().__init__()
        if render_mode not in (None, "ansi"):
            raise InvalidConfig(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.render_mode, self._last_info = render_mode, None
        self.table = load_table(table)
        self.layers, space = self.table.layers, self.table.space
        self.reward_fn = make_reward(reward)
        self.reference_ms = self.table.dense_latency_ms
        self.budget_ms = float(latency_budget_ms) if latency_budget_ms is not None else 0.5 * self.reference_ms
        if not self.budget_ms > 0:
            raise InvalidConfig(f"latency_budget_ms must be > 0, got {latency_budget_ms!r}")
        low, high = ObservationEncoder.bounds()
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.MultiDiscrete(space.nvec)
        self._nvec = [int(n) for n in space.nvec]
        self._strides = [self._nvec[1] * self._nvec[2] * self._nvec[3], self._nvec[2] * self._nvec[3],
                         self._nvec[3], 1]
        self._budget_fraction = self.budget_ms / self.reference_ms
        self._build_lookups()
        self._idx, self._rows = 0, []

    def _build_lookups(self) -> None:
        space, n = self.table.space, len(self.layers)
        total_macs = sum(s.macs for s in self.layers) or 1
        total_params = sum(s.params for s in self.layers) or 1
        self._static = [encode_layer(s, total_macs, total_params, n) for s in self.layers]
        offsets = np.concatenate([[0], np.cumsum(space.nvec)[:-1]])
        self._masks, self._lut, self._row_obs = [], [], []
        for spec, rows in zip(self.layers, self.table.rows, strict=True):
            mask = space.action_mask(spec)
            if spec.coupled_group is not None and Scheme.FILTER in space.schemes:
                mask[offsets[1] + space.schemes.index(Scheme.FILTER)] = False
            allowed = [np.flatnonzero(mask[o:o + k]) for o, k in zip(offsets, space.nvec, strict=True)]
            lut = np.empty(int(np.prod(space.nvec)), dtype=np.int64)
            for flat, vec in enumerate(itertools.product(*(range(k) for k in self._nvec))):
                fixed = [int(a[np.argmin(np.abs(a - v))]) for a, v in zip(allowed, vec, strict=True)]
                lut[flat] = rows.index[space.decode(spec, fixed, check=False)]
            self._masks.append(mask)
            self._lut.append(lut.tolist())
            n_s, n_f = max(len(space.schemes) - 1, 1), max(len(space.filter_types) - 1, 1)
            self._row_obs.append([(spec.macs / a.rate / total_macs, 1.0 / a.rate,
                                   space.schemes.index(a.scheme) / n_s if a.scheme in space.schemes else 0.0,
                                   space.filter_types.index(a.filter_type) / n_f) for a in rows.actions])
        self._drop = [t.drop.tolist() for t in self.table.rows]
        self._dlat = [t.latency_ms.tolist() for t in self.table.rows]
        self._kept_share = [[r[0] for r in rows] for rows in self._row_obs]
        # Observation after deciding layer i with row r, except the two running features
        # (kept MACs, budget used), which are filled in per step.
        self._obs_after: list[list[np.ndarray]] = []
        for i, rows_obs in enumerate(self._row_obs):
            static = self._static[min(i + 1, n - 1)]
            self._obs_after.append([np.concatenate([static, [0.0, *r[1:], 0.0]]).astype(np.float32)
                                    for r in rows_obs])
        self._obs_reset = np.concatenate([self._static[0], [0.0, 1.0, 0.0, 0.0, 0.0]]).astype(np.float32)

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._idx, self._rows, self._kept, self._last_info = 0, [], 0.0, None
        self._drop_sum, self._lat_sum = 0.0, 0.0
        return self._obs_reset.copy(), {"action_mask": self._masks[0].copy()}

    def step(self, action: Any):
        idx = self._idx
        if idx >= len(self.layers):
            raise InvalidAction("the episode is over; call reset() before step()")
        vec = action.tolist() if isinstance(action, np.ndarray) else action
        try:
            a, b, c, d = vec
            n = self._nvec
            valid = (0 <= a < n[0] and 0 <= b < n[1] and 0 <= c < n[2] and 0 <= d < n[3]
                     and a == int(a) and b == int(b) and c == int(c) and d == int(d))
        except (TypeError, ValueError):
            valid = False
        if not valid:
            raise InvalidAction(f"action must be 4 indices in {self.action_space}, got {action!r}")
        s = self._strides
        row = self._lut[idx][int(a) * s[0] + int(b) * s[1] + int(c) * s[2] + int(d)]
        self._rows.append(row)
        self._drop_sum += self._drop[idx][row]
        self._lat_sum += self._dlat[idx][row]
        self._kept += self._kept_share[idx][row]
        obs = self._obs_after[idx][row].copy()
        obs[13] = self._kept
        obs[17] = min(self._kept / self._budget_fraction, BUDGET_CAP)
        self._idx = idx + 1
        if self._idx < len(self.layers):
            return obs, 0.0, False, False, {"action_mask": self._masks[self._idx].copy()}
        return obs, *self._finish()

    def _finish(self) -> tuple[float, bool, bool, dict[str, Any]]:
        accuracy = min(max(self.table.base_accuracy - self._drop_sum, 0.0), 1.0)
        latency = max(self.reference_ms + self._lat_sum, 1e-3 * self.reference_ms)
        reward = float(self.reward_fn(accuracy, latency, budget_ms=self.budget_ms, reference_ms=self.reference_ms))
        self._last_info = {"accuracy": accuracy, "latency_ms": latency, "budget_ms": self.budget_ms,
                           "reference_latency_ms": self.reference_ms, "rows": tuple(self._rows),
                           "error": None}
        return reward, True, False, self._last_info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return render_decisions(self.layers, self.plan().actions[:len(self._rows)], self._last_info)

    def action_masks(self) -> np.ndarray:
        """Allowed choices for the current layer, flattened MultiDiscrete layout (bool)."""
        return self._masks[min(self._idx, len(self.layers) - 1)].copy()

    def plan(self, rows: tuple[int, ...] | None = None) -> PruningPlan:
        """The plan of ``rows`` (default: this episode's decisions, dense after them)."""
        rows = tuple(self._rows if rows is None else rows)
        actions = [t.actions[r] for t, r in zip(self.table.rows, rows, strict=False)]
        actions += [LayerAction()] * (len(self.layers) - len(actions))
        return PruningPlan(tuple(actions), tuple(s.name for s in self.layers),
                           str(self.table.metadata.get("arch_fingerprint", "")))


# ----------------------------------------------------------------------------- evaluators
class _TabularEvaluator:
    def __init__(self, table: str | Path | TabularTable = "small_cnn_digits") -> None:
        self.table_ref = table if isinstance(table, (str, Path)) else "<in-memory>"
        self.table = load_table(table)

    def config(self) -> dict[str, Any]:
        return {"table": str(self.table_ref), "arch_fingerprint": self.table.metadata.get("arch_fingerprint")}

    def _rows(self, context: ModelContext, plan: PruningPlan) -> list[int] | str:
        if self.table.metadata.get("arch_fingerprint") not in (None, context.arch_fingerprint):
            return "the table was built for another model (arch fingerprint differs)"
        rows = self.table.plan_rows(plan)
        return "plan has an action outside the table (e.g. filter pruning on a coupled layer)" \
            if rows is None else rows


@register_accuracy("tabular")
class TabularAccuracy(_TabularEvaluator):
    """Accuracy from a tabular table (additive drops). Args: table name, path or object."""

    name = "tabular"

    def evaluate(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[AccuracyResult]:
        out = []
        for plan in plans:
            rows = self._rows(context, plan)
            out.append(AccuracyResult.failure(rows) if isinstance(rows, str)
                       else AccuracyResult(self.table.accuracy(rows)))
        return out


@register_latency("tabular")
class TabularLatency(_TabularEvaluator):
    """Latency from a tabular table (dense latency + additive deltas). Args: table."""

    name = "tabular"

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        out = []
        for plan in plans:
            rows = self._rows(context, plan)
            out.append(LatencyResult.failure(rows) if isinstance(rows, str)
                       else LatencyResult(self.table.latency(rows)))
        return out


def make_tabular_env(table: str | Path | TabularTable = "small_cnn_digits", **kwargs: Any) -> TabularNPASEnv:
    """A :class:`TabularNPASEnv` over a table (the gymnasium entry point)."""
    return TabularNPASEnv(table, **kwargs)


def register_tabular_envs() -> None:
    """Register the tabular env ids (``npas/TabularSmallCNN-v0``); idempotent."""
    import gymnasium as gym

    for env_id, name in TABULAR_ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="npas_env.tabular:make_tabular_env", kwargs={"table": name})

