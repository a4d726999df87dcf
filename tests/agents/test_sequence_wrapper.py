from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.sequence_wrapper import (
    COL_CURRENT,
    COL_DECIDED,
    COL_DECISION,
    COL_VALID,
    SequenceObservation,
)
from npas_env.errors import InvalidConfig
from npas_env.search_space import sample_masked_action
from tests.agents.conftest import make_tiny_env


def test_sequence_observation_passes_gymnasium_checker():
    check_env(SequenceObservation(make_tiny_env()), skip_render_check=True)


def test_sequence_observation_carries_layers_and_decisions_so_far():
    env = SequenceObservation(make_tiny_env(), max_layers=12)
    n, space = len(env.layers), env.search_space
    obs, _ = env.reset(seed=0)
    assert obs.shape == (13, 16 + int(space.nvec.sum()))
    assert obs[:n, COL_VALID].all() and not obs[n:12, COL_VALID].any()
    assert obs[0, COL_CURRENT] == 1 and obs[:-1, COL_CURRENT].sum() == 1
    rng = np.random.default_rng(0)
    for i in range(n):
        obs, _, terminated, _, info = env.step(sample_masked_action(space.nvec, env.action_masks(), rng))
        assert env.observation_space.contains(obs)
        assert obs[:i + 1, COL_DECIDED].all() and not obs[i + 1:-1, COL_DECIDED].any()
        row = obs[i, COL_DECISION:]
        assert row.sum() == 4  # one index per dimension
        expected = space.encode(info["layer_action"])
        offsets = np.concatenate([[0], np.cumsum(space.nvec)[:-1]])
        assert all(row[o + e] == 1 for o, e in zip(offsets, expected, strict=False))
    assert terminated and obs[:-1, COL_CURRENT].sum() == 0


def test_action_masks_pass_through_wrappers_and_vec_envs():
    env = SequenceObservation(make_tiny_env())
    env.reset(seed=0)
    assert np.array_equal(get_action_masks(env), env.unwrapped.action_masks())
    venv = DummyVecEnv([lambda: Monitor(SequenceObservation(make_tiny_env()))])
    venv.reset()
    assert is_masking_supported(venv) and get_action_masks(venv).shape == (1, int(env.search_space.nvec.sum()))


def test_too_small_max_layers_is_rejected():
    with pytest.raises(InvalidConfig, match="max_layers"):
        SequenceObservation(make_tiny_env(), max_layers=3)
