from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import SubprocVecEnv
from torch import nn

from evaluators.results import LatencyResult
from npas_env import (
    EvaluatorNotFound,
    InvalidAction,
    InvalidConfig,
    InvalidModel,
    NPASEnv,
    PruningPlan,
    apply_plan,
)
from npas_env.search_space import sample_masked_action
from tests.conftest import TinyNet


def make_env(**kwargs) -> NPASEnv:
    torch.manual_seed(0)
    return NPASEnv(TinyNet().eval(), torch.randn(1, 3, 16, 16), **kwargs)


def run_episode(env: NPASEnv, seed: int = 0):
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    while True:
        action = sample_masked_action(env.action_space.nvec, env.action_masks(), rng)
        obs, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs)
        if terminated:
            return reward, info


def test_env_passes_gymnasium_and_sb3_checkers():
    check_env(make_env(), skip_render_check=True)
    sb3_check_env(make_env(), warn=True)


def test_episode_walks_every_layer_and_scores_at_the_end():
    env = make_env(latency_budget_ms=0.05)
    env.reset(seed=1)
    rewards = []
    for i in range(len(env.layers)):
        mask = env.action_masks()
        assert mask.dtype == bool and mask.shape == (int(env.action_space.nvec.sum()),)
        _, reward, terminated, truncated, info = env.step(
            sample_masked_action(env.action_space.nvec, mask, np.random.default_rng(i)))
        assert not info["action_repaired"] and not truncated
        rewards.append(reward)
        assert terminated == (i == len(env.layers) - 1)
    assert rewards[:-1] == [0.0] * (len(rewards) - 1)
    assert isinstance(info["plan"], PruningPlan) and info["error"] is None
    assert 0.0 <= info["accuracy"] <= 1.0 and info["latency_ms"] > 0
    expected = info["accuracy"] - max(0.0, info["latency_ms"] / 0.05 - 1.0)
    assert rewards[-1] == pytest.approx(expected)


def test_same_plan_scores_the_same_and_replays(tiny_net, example_input):
    env = make_env()
    _, info = run_episode(env, seed=3)
    plan = PruningPlan.from_json(info["plan"].to_json())
    again = env.scorer.score([plan])[0]
    assert again.reward == pytest.approx(run_episode(make_env(), seed=3)[0])
    first = apply_plan(env.context.model, plan, env.layers)
    second = apply_plan(env.context.model, plan, env.layers)
    assert first.masks.keys() == second.masks.keys()
    assert all(torch.equal(first.masks[k], second.masks[k]) for k in first.masks)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(first.model(x), second.model(x))


def test_masked_action_raises_in_strict_mode_and_is_repaired_by_default():
    strict = make_env(masked_action="raise")
    strict.reset()
    bad = np.zeros(4, dtype=np.int64)
    bad[2] = 1
    strict.step(bad)  # stem: unstructured 2x is allowed
    for _ in range(4):
        strict.step(np.zeros(4, dtype=np.int64))
    with pytest.raises(InvalidAction, match="masked for layer 'dw'"):
        strict.step(bad)  # depthwise layers stay dense
    lenient = make_env()
    lenient.reset()
    for _ in range(5):
        lenient.step(np.zeros(4, dtype=np.int64))
    _, _, _, _, info = lenient.step(bad)
    assert info["action_repaired"] and info["layer_action"].is_dense


@pytest.mark.parametrize("action", [[0, 0, 0], [0, 0, 99, 0], [0.5, 0, 0, 0], "abc", [-1, 0, 0, 0]])
def test_actions_outside_the_space_raise(action):
    env = make_env()
    env.reset()
    with pytest.raises(InvalidAction):
        env.step(action)


def test_step_after_episode_end_raises():
    env = make_env()
    run_episode(env)
    with pytest.raises(InvalidAction, match="reset"):
        env.step(np.zeros(4, dtype=np.int64))


def test_bad_construction_is_clear():
    with pytest.raises(InvalidModel, match="no prunable layers"):
        NPASEnv(nn.Sequential(nn.ReLU()), torch.randn(1, 3, 4, 4))
    with pytest.raises(InvalidModel, match="does not fit"):
        NPASEnv(TinyNet(), torch.randn(1, 4, 16, 16))
    with pytest.raises(InvalidConfig, match="latency_budget_ms"):
        make_env(latency_budget_ms=0)
    with pytest.raises(InvalidConfig, match="latency_budget_ms"):
        make_env(latency_budget_ms=-3.0)
    with pytest.raises(EvaluatorNotFound, match="did you mean 'analytic'"):
        make_env(latency="analytc")
    with pytest.raises(EvaluatorNotFound, match="did you mean 'proxy'"):
        make_env(accuracy="proxi")
    with pytest.raises(EvaluatorNotFound, match="reward"):
        make_env(reward="nmpas")


class FaultyLatency:
    name = "faulty"

    def __init__(self, mode: str) -> None:
        self.mode, self.calls = mode, 0

    def config(self):
        return {"mode": self.mode}

    def measure(self, context, plans):
        self.calls += 1
        if self.calls == 1:  # the dense reference measurement succeeds
            return [LatencyResult(1.0) for _ in plans]
        if self.mode == "raise":
            raise RuntimeError("device unplugged")
        if self.mode == "nan":
            return [LatencyResult(math.nan) for _ in plans]
        if self.mode == "garbage":
            return ["fast" for _ in plans]
        return []


@pytest.mark.parametrize("mode, reason", [("raise", "device unplugged"), ("nan", "invalid latency"),
                                          ("garbage", "returned str"), ("short", "0 results")])
def test_evaluator_faults_become_defined_penalties(mode, reason):
    env = make_env(latency=FaultyLatency(mode), failure_reward=-2.0)
    reward, info = run_episode(env)
    assert reward == -2.0 and reason in info["error"] and info["latency_ms"] is None


def test_reward_variants():
    for name in ("npas", "weighted_sum", "mnas"):
        reward, info = run_episode(make_env(reward=name, latency_budget_ms=0.1))
        assert math.isfinite(reward) and info["error"] is None


def test_render_ansi_lists_decisions():
    env = make_env(render_mode="ansi")
    run_episode(env)
    text = env.render()
    assert "block1.conv1" in text and "accuracy=" in text


def _env_factory():
    return make_env()


def test_vectorizes_with_gymnasium_and_sb3():
    venv = gym.vector.SyncVectorEnv([_env_factory, _env_factory])
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (2, 18)
    venv.step(np.zeros((2, 4), dtype=np.int64))
    venv.close()
    sub = SubprocVecEnv([_env_factory, _env_factory], start_method="fork")
    obs = sub.reset()
    for _ in range(len(make_env().layers)):
        obs, rewards, dones, infos = sub.step(np.zeros((2, 4), dtype=np.int64))
    assert dones.all() and all(info["error"] is None for info in infos)
    sub.close()
