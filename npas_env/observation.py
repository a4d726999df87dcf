"""Observation encoding: static per-layer descriptors plus the episode's running state.

Every feature is a float32 in [0, 1] except ``budget_used`` (clipped to [0, BUDGET_CAP]). The
feature table (18 rows) is the "Observation Space" section of :class:`npas_env.env.NPASEnv`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from npas_env.layers import LayerKind, LayerSpec
from npas_env.plan import LayerAction
from npas_env.search_space import SearchSpace

N_STATIC = 13
N_FEATURES = 18
BUDGET_CAP = 10.0
_KINDS = (LayerKind.CONV, LayerKind.DEPTHWISE, LayerKind.GROUPED, LayerKind.LINEAR)


def encode_layer(spec: LayerSpec, total_macs: int, total_params: int, n_layers: int) -> np.ndarray:
    """Encode one layer's static descriptor as float32 of shape (N_STATIC,)."""
    feat = np.zeros(N_STATIC, dtype=np.float32)
    feat[_KINDS.index(spec.kind)] = 1.0
    feat[4] = 0.0 if spec.kind is LayerKind.LINEAR else min(spec.kernel_size[0] / 7.0, 1.0)
    feat[5] = min(np.log2(max(spec.in_channels, 1)) / 12.0, 1.0)
    feat[6] = min(np.log2(max(spec.out_channels, 1)) / 12.0, 1.0)
    feat[7] = min(np.log2(max(spec.input_hw[0] * spec.input_hw[1], 1)) / 16.0, 1.0)
    feat[8] = min((spec.stride[0] - 1) / 3.0, 1.0)
    feat[9] = spec.macs / max(total_macs, 1)
    feat[10] = spec.params / max(total_params, 1)
    feat[11] = spec.index / max(n_layers - 1, 1)
    feat[12] = float(spec.coupled_group is not None)
    return feat


class ObservationEncoder:
    """Builds observations fast: static features are computed once per model."""

    def __init__(self, layers: Sequence[LayerSpec], space: SearchSpace) -> None:
        self.total_macs = sum(s.macs for s in layers) or 1
        total_params = sum(s.params for s in layers) or 1
        self._static = np.stack([encode_layer(s, self.total_macs, total_params, len(layers))
                                 for s in layers]) if layers else np.zeros((0, N_STATIC), np.float32)
        self._macs = np.array([s.macs for s in layers], dtype=np.float64)
        self._n_schemes = max(len(space.schemes) - 1, 1)
        self._n_filters = max(len(space.filter_types) - 1, 1)
        self._scheme_idx = {s: i for i, s in enumerate(space.schemes)}
        self._filter_idx = {f: i for i, f in enumerate(space.filter_types)}

    def kept_macs(self, index: int, action: LayerAction) -> float:
        """MACs layer ``index`` keeps under ``action``."""
        return float(self._macs[index]) / action.rate

    def encode(self, index: int, kept_macs: float, prev: LayerAction | None,
               budget_fraction: float) -> np.ndarray:
        """Observation for the layer at ``index``.

        Args:
            index: layer to decide next (the layer count once the episode is over).
            kept_macs: MACs kept by the decisions of layers 0 .. index-1.
            prev: the previous layer's action (None at the first layer).
            budget_fraction: latency budget / latency of the dense model (> 0).
        """
        obs = np.empty(N_FEATURES, dtype=np.float32)
        obs[:N_STATIC] = self._static[min(index, len(self._static) - 1)]
        obs[13] = kept_macs / self.total_macs
        if prev is None:
            obs[14:17] = (1.0, 0.0, 0.0)
        else:
            obs[14] = 1.0 / prev.rate
            obs[15] = self._scheme_idx.get(prev.scheme, 0) / self._n_schemes
            obs[16] = self._filter_idx.get(prev.filter_type, 0) / self._n_filters
        obs[17] = min(obs[13] / max(budget_fraction, 1e-9), BUDGET_CAP)
        return obs

    @staticmethod
    def bounds() -> tuple[np.ndarray, np.ndarray]:
        low = np.zeros(N_FEATURES, dtype=np.float32)
        high = np.ones(N_FEATURES, dtype=np.float32)
        high[17] = BUDGET_CAP
        return low, high
