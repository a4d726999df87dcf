"""The tabular Q state of an :class:`NPASEnv`: layer index, previous decision, allowed decisions.

MetaQNN's state is "which layer, and what the previous layer became"; its actions are the layer
choices allowed there. :class:`ActionVocabulary` numbers each layer's distinct canonical actions
(the masked ``MultiDiscrete`` product with equivalent index vectors merged, e.g. every scheme at
rate 1.0 is "dense"), in the order of :func:`agents.base.allowed_actions` on the layer's
unconstrained mask. Masks of coupled layers depend on earlier decisions of their group and only
ever remove choices, so every allowed action has a fixed id.

:class:`TabularObservation` turns an env's observation into that state, read from the env itself
(``info["layer_action"]`` of each step and ``env.action_masks()``):

| key | space | meaning |
|---|---|---|
| ``layer`` | ``Discrete(L)`` | index of the layer to decide (the last layer once the episode is over) |
| ``prev`` | ``Discrete(V + 1)`` | 0 at the first layer, else 1 + vocabulary id of the previous layer's action |
| ``action_mask`` | ``MultiBinary(sum(nvec))`` | ``env.action_masks()`` of the current layer |
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from agents.base import allowed_actions
from npas_env.env import NPASEnv
from npas_env.errors import InvalidConfig, InvalidPlan
from npas_env.layers import LayerSpec
from npas_env.plan import LayerAction, PruningPlan
from npas_env.search_space import SearchSpace

OBS_KEYS = ("layer", "prev", "action_mask")


@dataclass(frozen=True)
class AllowedActions:
    """The decisions allowed under one mask of one layer.

    Attributes:
        mask: the flattened ``MultiDiscrete`` mask (bool, shape ``(sum(nvec),)``).
        ids: vocabulary ids of the distinct canonical actions allowed (int64, first-seen order).
        vectors: for each id, the first allowed index vector decoding to it (int64, ``(n, 4)``).
        by_vector: every allowed index vector (as a tuple) -> the vocabulary id it decodes to.
        id_set: ``ids`` as a set.
    """

    mask: np.ndarray
    ids: np.ndarray
    vectors: np.ndarray
    by_vector: dict[tuple[int, ...], int]
    id_set: frozenset[int]


class ActionVocabulary:
    """Numbers the canonical actions of every layer of one model's search space.

    Args:
        layers: the model's prunable layers (``env.layers``).
        space: the search space (``env.search_space``).
    """

    def __init__(self, layers: Sequence[LayerSpec], space: SearchSpace) -> None:
        if not layers:
            raise InvalidConfig("an action vocabulary needs at least one layer")
        self.layers, self.space = tuple(layers), space
        self.actions: tuple[tuple[LayerAction, ...], ...] = tuple(allowed_actions(space, s) for s in self.layers)
        self.size = max(len(a) for a in self.actions)
        self._init_caches()

    @classmethod
    def from_env(cls, env: gym.Env) -> ActionVocabulary:
        """The vocabulary of an :class:`NPASEnv` (possibly wrapped)."""
        base = env.unwrapped
        if not isinstance(base, NPASEnv):
            raise InvalidConfig(f"tabular Q-learning needs an NPASEnv, got {type(base).__name__}")
        return cls(base.layers, base.search_space)

    def _init_caches(self) -> None:
        self._index = [{a: i for i, a in enumerate(acts)} for acts in self.actions]
        self._group_prev = [tuple(j for j in range(i) if spec.coupled_group is not None
                                  and self.layers[j].coupled_group == spec.coupled_group)
                            for i, spec in enumerate(self.layers)]
        self._by_mask: dict[tuple[int, bytes], AllowedActions] = {}
        self._by_prefix: dict[tuple[int, tuple[int, ...]], AllowedActions] = {}

    # ---------------------------------------------------------------- pickling / equality
    def __getstate__(self) -> dict[str, Any]:
        return {"layers": self.layers, "space": self.space, "actions": self.actions, "size": self.size}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_caches()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActionVocabulary) and (self.layers, self.space) == (other.layers, other.space)

    def __hash__(self) -> int:
        return hash((self.layers, self.space))

    def __repr__(self) -> str:
        return f"ActionVocabulary({len(self.layers)} layers, up to {self.size} actions per layer)"

    # ------------------------------------------------------------------------- spaces
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def observation_space(self) -> spaces.Dict:
        """The :class:`TabularObservation` observation space (see the module docstring)."""
        return spaces.Dict({"layer": spaces.Discrete(self.n_layers), "prev": spaces.Discrete(self.size + 1),
                            "action_mask": spaces.MultiBinary(int(self.space.nvec.sum()))})

    def action_space(self) -> spaces.MultiDiscrete:
        return spaces.MultiDiscrete(self.space.nvec)

    # ------------------------------------------------------------------------ lookups
    def id_of(self, idx: int, action: LayerAction) -> int:
        """Vocabulary id of ``action`` (canonicalized) at layer ``idx``.

        Raises:
            InvalidPlan: the action is not an allowed action of that layer.
        """
        canonical = self.space.canonical(self.layers[idx], action)
        found = self._index[idx].get(canonical)
        if found is None:
            raise InvalidPlan(f"{action} is not an allowed action of layer {idx} ({self.layers[idx].name!r}); "
                              "see agents.base.allowed_actions for the layer's choices")
        return found

    def allowed(self, idx: int, mask: np.ndarray) -> AllowedActions:
        """The decisions allowed at layer ``idx`` under ``mask`` (cached per mask)."""
        mask = np.asarray(mask, dtype=bool)
        key = (int(idx), mask.tobytes())
        hit = self._by_mask.get(key)
        if hit is None:
            hit = self._build_allowed(int(idx), mask)
            self._by_mask[key] = hit
        return hit

    def allowed_after(self, idx: int, prefix_ids: Sequence[int]) -> AllowedActions:
        """The decisions allowed at layer ``idx`` after the decisions ``prefix_ids`` (ids of layers < idx)."""
        group = tuple(int(prefix_ids[j]) for j in self._group_prev[idx])
        hit = self._by_prefix.get((idx, group))
        if hit is None:
            decided = [(self.layers[j], self.actions[j][g]) for j, g in zip(self._group_prev[idx], group)]
            hit = self.allowed(idx, self.space.action_mask(self.layers[idx], decided))
            self._by_prefix[(idx, group)] = hit
        return hit

    def encode(self, plan: PruningPlan | Sequence[LayerAction]) -> tuple[int, ...]:
        """Vocabulary ids of a whole plan, checked layer by layer against the masks.

        Raises:
            InvalidPlan: wrong length, or an action not allowed where it stands.
        """
        actions = plan.actions if isinstance(plan, PruningPlan) else tuple(plan)
        if len(actions) != self.n_layers:
            raise InvalidPlan(f"need {self.n_layers} actions (one per layer), got {len(actions)}")
        ids: list[int] = []
        for idx, action in enumerate(actions):
            found = self.id_of(idx, action)
            if found not in self.allowed_after(idx, ids).id_set:
                raise InvalidPlan(f"{action} at layer {idx} ({self.layers[idx].name!r}) is masked after the "
                                  "earlier decisions of its coupled group")
            ids.append(found)
        return tuple(ids)

    def decode(self, ids: Sequence[int]) -> tuple[LayerAction, ...]:
        """The canonical actions of vocabulary ids (one per layer)."""
        return tuple(self.actions[i][int(a)] for i, a in enumerate(ids))

    def _build_allowed(self, idx: int, mask: np.ndarray) -> AllowedActions:
        nvec = self.space.nvec
        bounds = np.concatenate([[0], np.cumsum(nvec)])
        per_dim = [np.flatnonzero(mask[bounds[d]:bounds[d + 1]]) for d in range(len(nvec))]
        spec, index = self.layers[idx], self._index[idx]
        by_vector: dict[tuple[int, ...], int] = {}
        first: dict[int, tuple[int, ...]] = {}
        for vec in itertools.product(*per_dim):
            vec = tuple(int(v) for v in vec)
            action = self.space.decode(spec, vec, check=False)
            found = index.get(action)
            if found is None:  # masks only ever narrow the layer's unconstrained choices
                raise InvalidConfig(f"mask of layer {idx} allows {action}, outside the layer's unconstrained "
                                    "choices; the search space's coupling rules changed?")
            by_vector[vec] = found
            first.setdefault(found, vec)
        ids = np.fromiter(first, dtype=np.int64, count=len(first))
        vectors = np.array(list(first.values()), dtype=np.int64).reshape(-1, len(nvec))
        return AllowedActions(mask.copy(), ids, vectors, by_vector, frozenset(first))


class TabularObservation(gym.Wrapper):
    """An :class:`NPASEnv` whose observation is the tabular Q state (module docstring).

    Each step's ``info`` also carries ``action_id``, the vocabulary id of the decision taken (after
    the env's canonicalization and repair). ``action_masks()`` passes through.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.vocabulary = ActionVocabulary.from_env(env)
        self.observation_space = self.vocabulary.observation_space()
        self._ids: list[int] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        _, info = self.env.reset(seed=seed, options=options)
        self._ids = []
        return self._observe(), info

    def step(self, action: Any):
        _, reward, terminated, truncated, info = self.env.step(action)
        action_id = self.vocabulary.id_of(len(self._ids), info["layer_action"])
        self._ids.append(action_id)
        return self._observe(), reward, terminated, truncated, {**info, "action_id": action_id}

    def action_masks(self) -> np.ndarray:
        return cast(NPASEnv, self.env.unwrapped).action_masks()  # from_env checked the type

    def _observe(self) -> dict[str, Any]:
        last = self.vocabulary.n_layers - 1
        return {"layer": np.int64(min(len(self._ids), last)),
                "prev": np.int64(self._ids[-1] + 1 if self._ids else 0),
                "action_mask": self.action_masks().astype(np.int8)}
