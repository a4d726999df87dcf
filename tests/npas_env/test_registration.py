from __future__ import annotations

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import npas_env  # noqa: F401
from npas_env.registration import ZOO_ENV_IDS


@pytest.mark.parametrize("env_id", sorted(ZOO_ENV_IDS))
def test_every_registered_id_builds_and_checks(env_id):
    env = gym.make(env_id, pretrained=False)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and "action_mask" in info
    env.close()


def test_default_id_needs_no_arguments():
    """``gymnasium.make("npas/NPAS-v0")`` trains the small CNN on first use (tmp cache)."""
    env = gym.make("npas/NPAS-v0")
    env.reset(seed=0)
    done = False
    while not done:
        _, reward, done, _, info = env.step(env.action_space.sample())
    assert info["error"] is None and -2.0 < reward <= 1.0
