"""``SequenceObservation``: show the policy the whole network and every decision taken so far.

The seq2seq controller of TODAES section 5.1 encodes the sequence of all layers with an encoder
RNN and emits one decision per layer with a decoder LSTM. To keep the env Markov (and usable by
any SB3 algorithm) the wrapper puts that whole context into each observation, so the decoder can
be teacher-forced from it: the policy reruns both RNNs on every step instead of carrying a
hidden state.

Observation: ``Box(0, hi, (max_layers + 1, width), float32)`` with
``width = 16 + sum(nvec)`` (at least 18). Rows ``0 .. max_layers - 1`` are layers (zero rows pad
networks shorter than ``max_layers``); the last row is the context row.

| columns | layer row | context row |
|---|---|---|
| 0-12 | static descriptor (``npas_env.observation.encode_layer``) | the env's 18-feature observation in columns 0-17 (see ``NPASEnv``) |
| 13 | ``is_valid``: 1 for a real layer, 0 for padding | |
| 14 | ``is_current``: 1 for the layer decided at this step | |
| 15 | ``is_decided``: 1 once the layer's decision is taken | |
| 16 .. 16+sum(nvec)-1 | the decision as one-hot indices ``[filter_type, scheme, rate, block_size]`` (canonical, as applied) | |
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from npas_env.errors import InvalidConfig
from npas_env.observation import N_FEATURES, N_STATIC, encode_layer

if TYPE_CHECKING:
    from npas_env.env import NPASEnv

COL_VALID, COL_CURRENT, COL_DECIDED, COL_DECISION = N_STATIC, N_STATIC + 1, N_STATIC + 2, N_STATIC + 3


class SequenceObservation(gym.ObservationWrapper):
    """Observation = all layer descriptors + decisions so far (+ the env's flat observation).

    Args:
        env: an :class:`NPASEnv` (possibly wrapped) with ``layers``, ``search_space`` and
            ``action_masks()``.
        max_layers: padded sequence length; None = the env's layer count. Use one value across
            models to share a policy between them.

    Raises:
        InvalidConfig: the network has more layers than ``max_layers``.
    """

    def __init__(self, env: gym.Env, max_layers: int | None = None) -> None:
        super().__init__(env)
        base = cast("NPASEnv", env.unwrapped)  # or any env with layers / search_space
        self.layers = tuple(base.layers)
        self.search_space = base.search_space
        n = len(self.layers)
        self.max_layers = n if max_layers is None else int(max_layers)
        if self.max_layers < n:
            raise InvalidConfig(f"max_layers={max_layers} is smaller than the model's {n} layers")
        nvec = self.search_space.nvec
        self._offsets = COL_DECISION + np.concatenate([[0], np.cumsum(nvec)[:-1]])
        width = max(COL_DECISION + int(nvec.sum()), N_FEATURES)
        total_macs = sum(s.macs for s in self.layers) or 1
        total_params = sum(s.params for s in self.layers) or 1
        self._template = np.zeros((self.max_layers + 1, width), dtype=np.float32)
        for i, spec in enumerate(self.layers):
            self._template[i, :N_STATIC] = encode_layer(spec, total_macs, total_params, n)
            self._template[i, COL_VALID] = 1.0
        obs_space = cast(spaces.Box, env.observation_space)
        low, high = obs_space.low, obs_space.high
        hi = np.ones_like(self._template)
        hi[-1, :N_FEATURES] = high
        lo = np.zeros_like(self._template)
        lo[-1, :N_FEATURES] = low
        self.observation_space = spaces.Box(lo, hi, dtype=np.float32)
        self._rows = self._template.copy()
        self._n_decided = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._rows = self._template.copy()
        self._n_decided = 0
        return super().reset(seed=seed, options=options)

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._record(info["layer_action"])
        return self.observation(obs), reward, terminated, truncated, info

    def observation(self, observation: np.ndarray) -> np.ndarray:
        """The (max_layers + 1, width) observation for the env's flat ``observation``."""
        out = self._rows.copy()
        if self._n_decided < len(self.layers):
            out[self._n_decided, COL_CURRENT] = 1.0
        out[-1, :N_FEATURES] = observation
        return out

    def action_masks(self) -> np.ndarray:
        """The wrapped env's mask (sb3-contrib flattened MultiDiscrete layout)."""
        return self.env.get_wrapper_attr("action_masks")()

    def _record(self, layer_action: Any) -> None:
        row = self._rows[self._n_decided]
        row[COL_DECIDED] = 1.0
        for offset, idx in zip(self._offsets, self.search_space.encode(layer_action), strict=False):
            row[offset + int(idx)] = 1.0
        self._n_decided += 1


def sequence_layout(observation_space: spaces.Box, nvec: np.ndarray | None = None) -> dict[str, int]:
    """Column layout of a :class:`SequenceObservation` space: ``max_layers``, ``width``, ``decision_dim``."""
    shape = observation_space.shape
    if shape is None or len(shape) != 2 or shape[1] < N_FEATURES:
        raise InvalidConfig(f"expected a SequenceObservation space of shape (max_layers + 1, width), got {shape}")
    decision_dim = int(nvec.sum()) if nvec is not None else shape[1] - COL_DECISION
    return {"max_layers": shape[0] - 1, "width": shape[1], "decision_dim": decision_dim}
