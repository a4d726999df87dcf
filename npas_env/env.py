"""The NPAS Gymnasium environment: one step decides one layer of a real PyTorch model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from evaluators.context import ModelContext
from npas_env.errors import InvalidAction, InvalidConfig, InvalidModel
from npas_env.layers import analyze_model
from npas_env.observation import ObservationEncoder
from npas_env.plan import LayerAction, PruningPlan
from npas_env.render import render_decisions
from npas_env.reward import RewardFn, make_reward
from npas_env.scoring import PlanScorer, resolve
from npas_env.search_space import SearchSpace


class NPASEnv(gym.Env):
    """Compiler-aware pruning and architecture search, one layer per step.

    ## Description
    An episode walks every prunable layer (Conv2d / Linear, in execution order) of a pretrained
    PyTorch model. At each step the agent picks, for the current layer, a filter type (keep the
    kernel, 1x1, depthwise-separable, skip), a pruning scheme (unstructured, filter, pattern,
    block-punched, block-based), a compression rate and a block size (NPAS / TODAES). After the
    last layer the whole plan is scored by the injected accuracy and latency evaluators.

    ## Action Space
    ``MultiDiscrete(search_space.nvec)``: ``[filter_type, scheme, rate, block_size]`` indices into
    the :class:`SearchSpace` tuples. ``action_masks()`` gives the allowed choices for the current
    layer in sb3-contrib's flattened layout (pattern only on 3x3, block sizes dividing the layer,
    depthwise layers dense by default, coupled layers consistent under filter pruning). Rate 1.0
    means dense whatever the scheme. A masked choice raises :class:`InvalidAction` when
    ``masked_action="raise"``; with ``"repair"`` (default, so generic agents and checkers work)
    it is replaced by the nearest allowed index and ``info["action_repaired"]`` is True.

    ## Observation Space
    ``Box(0, hi, (18,), float32)``; one row per feature:

    | idx | feature | meaning |
    |---|---|---|
    | 0-3 | kind | one-hot conv / depthwise / grouped / linear |
    | 4 | kernel | kernel height / 7 (0 for Linear) |
    | 5 | in_channels | log2(in channels) / 12 |
    | 6 | out_channels | log2(out channels) / 12 |
    | 7 | feature_map | log2(input H * W) / 16 |
    | 8 | stride | (stride - 1) / 3 |
    | 9 | macs_share | layer MACs / model MACs |
    | 10 | params_share | layer params / model params |
    | 11 | position | layer index / (layers - 1) |
    | 12 | coupled | output joined with other layers (residual / concat) |
    | 13 | kept_macs | MACs kept by the decisions so far / model MACs |
    | 14 | prev_keep | 1 / rate of the previous decision |
    | 15 | prev_scheme | previous scheme index, normalized |
    | 16 | prev_filter | previous filter-type index, normalized |
    | 17 | budget_used | kept_macs / (budget / dense latency), clipped to [0, 10] |

    ## Reward
    0 until the last layer; then ``reward(accuracy, latency_ms)`` from the :class:`RewardFn`
    (default NPAS: ``accuracy - lambda * max(0, latency / budget - 1)``). If an evaluator fails,
    the reward is ``failure_reward`` and ``info["error"]`` says why.

    ## Episode End
    Terminates after the last prunable layer; never truncates.

    ## Arguments
    model, example_input: the pretrained model and one input batch.
    accuracy, latency: evaluator names (``"proxy"``, ``"oneshot"``, ``"analytic"``,
    ``"compiled"``, plugins) or objects; ``*_kwargs`` configure named ones.
    reward: a RewardFn or name (``npas``, ``weighted_sum``, ``mnas``).
    search_space: a :class:`SearchSpace` (default: NPAS).
    latency_budget_ms: target latency (> 0); None = half of the dense model's latency.
    masked_action: ``"repair"`` or ``"raise"``. failure_reward: reward of a failed evaluation.
    leaf_modules: module types/names kept opaque while tracing. model_name: label for reports.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *,
                 accuracy: Any = "proxy", latency: Any = "analytic",
                 accuracy_kwargs: dict[str, Any] | None = None,
                 latency_kwargs: dict[str, Any] | None = None,
                 reward: RewardFn | str | None = None, search_space: SearchSpace | None = None,
                 latency_budget_ms: float | None = None,
                 masked_action: Literal["repair", "raise"] = "repair",
                 failure_reward: float = -1.0, leaf_modules: Sequence[type[nn.Module] | str] = (),
                 model_name: str | None = None, render_mode: str | None = None) -> None:
        super().__init__()
        if masked_action not in ("repair", "raise"):
            raise InvalidConfig(f"masked_action must be 'repair' or 'raise', got {masked_action!r}")
        if render_mode not in (None, "ansi"):
            raise InvalidConfig(f"render_mode must be None or 'ansi', got {render_mode!r}")
        self.search_space = search_space or SearchSpace()
        graph = analyze_model(model, example_input, leaf_modules=leaf_modules)
        if not graph.layers:
            raise InvalidModel(f"{type(model).__name__} has no prunable layers (Conv2d / Linear)"
                               + (f"; unsupported: {graph.unsupported}" if graph.unsupported else ""))
        self.layers = tuple(graph.layers)
        self.unsupported_layers = tuple(graph.unsupported)
        self.context = ModelContext(model.eval(), example_input, self.layers, self.search_space,
                                    model_name or type(model).__name__)
        self.scorer = PlanScorer(self.context, resolve("accuracy", accuracy, accuracy_kwargs),
                                 resolve("latency", latency, latency_kwargs), make_reward(reward),
                                 latency_budget_ms, failure_reward)
        self.masked_action, self.render_mode = masked_action, render_mode
        self._encoder = ObservationEncoder(self.layers, self.search_space)
        low, high = self._encoder.bounds()
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.MultiDiscrete(self.search_space.nvec)
        self._offsets = np.concatenate([[0], np.cumsum(self.search_space.nvec)[:-1]])
        self._mask_memo: dict[tuple[Any, ...], np.ndarray] = {}
        self._decode_memo: dict[tuple[Any, ...], tuple[LayerAction, bool]] = {}
        self._actions: list[LayerAction] = []
        self._kept_macs = 0.0
        self._budget_fraction = 1.0
        self.last_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._actions, self._kept_macs, self.last_info = [], 0.0, {}
        self._budget_fraction = self._compute_budget_fraction()
        return self._observe(), {"layer": self.layers[0].name, "action_mask": self.action_masks()}

    def step(self, action: Any):
        if len(self._actions) >= len(self.layers):
            raise InvalidAction("the episode is over; call reset() before step()")
        idx = len(self._actions)
        layer_action, repaired = self._decode(idx, action)
        self._actions.append(layer_action)
        self._kept_macs += self._encoder.kept_macs(idx, layer_action)
        info: dict[str, Any] = {"layer": self.layers[idx].name, "layer_action": layer_action,
                                "action_repaired": repaired}
        if len(self._actions) < len(self.layers):
            info["action_mask"] = self.action_masks()
            return self._observe(), 0.0, False, False, info
        score = self.scorer.score([self.plan])[0]
        info.update(score.info())
        self.last_info = info
        return self._observe(), float(score.reward), True, False, info

    def action_masks(self) -> np.ndarray:
        """Allowed choices for the current layer, flattened MultiDiscrete layout (bool)."""
        idx = min(len(self._actions), len(self.layers) - 1)
        key = (idx, self._group_key(idx))
        mask = self._mask_memo.get(key)
        if mask is None:
            mask = self.search_space.action_mask(self.layers[idx], self._decided())
            self._mask_memo[key] = mask
        return mask.copy()

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return render_decisions(self.layers, self._actions, self.last_info)

    # -------------------------------------------------------------------- helpers
    @property
    def plan(self) -> PruningPlan:
        """The decisions so far, padded with dense actions for undecided layers."""
        actions = self._actions + [LayerAction()] * (len(self.layers) - len(self._actions))
        return PruningPlan(tuple(actions), self.context.layer_names, self.context.arch_fingerprint,
                           {"model": self.context.name})

    def _decided(self) -> list[tuple[Any, LayerAction]]:
        return list(zip(self.layers, self._actions))

    def _group_key(self, idx: int) -> tuple[LayerAction, ...]:
        group = self.layers[idx].coupled_group
        if group is None:
            return ()
        return tuple(a for s, a in zip(self.layers, self._actions) if s.coupled_group == group)

    def _decode(self, idx: int, action: Any) -> tuple[LayerAction, bool]:
        ints = _as_index_tuple(action)
        if ints is None:
            raise InvalidAction(f"action must be 4 integers [filter_type, scheme, rate, block_size] "
                                f"in {self.action_space}, got {action!r}")
        key = (idx, ints, self._group_key(idx))
        hit = self._decode_memo.get(key)
        if hit is not None:
            return hit
        nvec = self.search_space.nvec
        if any(v < 0 or v >= n for v, n in zip(ints, nvec)):
            raise InvalidAction(f"action {list(ints)} is outside {self.action_space} (sizes {nvec.tolist()})")
        fixed, repaired = self._repair(idx, ints)
        decoded = self.search_space.decode(self.layers[idx], fixed, check=False)
        self._decode_memo[key] = (decoded, repaired)
        return decoded, repaired

    def _repair(self, idx: int, ints: tuple[int, ...]) -> tuple[list[int], bool]:
        mask = self.action_masks()
        fixed, repaired = list(ints), False
        for dim, value in enumerate(ints):
            allowed = np.flatnonzero(mask[self._offsets[dim]:self._offsets[dim] + self.search_space.nvec[dim]])
            if value in allowed:
                continue
            if self.masked_action == "raise":
                names = ["filter_type", "scheme", "rate", "block_size"]
                raise InvalidAction(f"action {list(ints)} is masked for layer {self.layers[idx].name!r}: "
                                    f"{names[dim]} index {value} not in allowed {allowed.tolist()}; "
                                    "see env.action_masks()")
            fixed[dim] = int(allowed[np.argmin(np.abs(allowed - value))])
            repaired = True
        return fixed, repaired

    def _observe(self) -> np.ndarray:
        prev = self._actions[-1] if self._actions else None
        return self._encoder.encode(len(self._actions), self._kept_macs, prev, self._budget_fraction)

    def _compute_budget_fraction(self) -> float:
        ref = self.scorer.reference_ms
        if not math.isfinite(ref) or ref <= 0:
            return 1.0
        return self.scorer.budget_ms / ref


def _as_index_tuple(action: Any) -> tuple[int, ...] | None:
    """The action as a tuple of 4 Python ints, or None if it is not 4 whole numbers."""
    if isinstance(action, np.ndarray) and action.dtype.kind in "iu" and action.shape == (4,):
        return tuple(action.tolist())
    try:
        vec = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if vec.shape != (4,) or not np.all(np.isfinite(vec)) or not np.all(np.mod(vec, 1) == 0):
        return None
    return tuple(int(v) for v in vec)
