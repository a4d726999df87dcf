from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from npas_env.env import NPASEnv
from npas_env.errors import EvaluatorNotFound, InvalidAction
from npas_env.search_space import sample_masked_action
from npas_env.tables import TabularTable, build_table, load_table, table_names
from npas_env.tabular import TabularNPASEnv, register_tabular_envs
from tests.conftest import TinyNet


def tiny_env(**kwargs) -> NPASEnv:
    torch.manual_seed(0)
    return NPASEnv(TinyNet().eval(), torch.randn(1, 3, 16, 16), **kwargs)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> TabularTable:
    env = tiny_env(accuracy="proxy", latency="analytic")
    built = build_table(env.context, env.scorer.accuracy, env.scorer.latency, batch_size=64)
    path = tmp_path_factory.mktemp("tables") / "tiny.json"
    built.save(path)
    return load_table(path)


def play(env: TabularNPASEnv, seed: int) -> tuple[float, dict]:
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    while True:
        obs, reward, terminated, truncated, info = env.step(
            sample_masked_action(env.action_space.nvec, env.action_masks(), rng))
        assert env.observation_space.contains(obs) and not truncated
        if terminated:
            return reward, info


def test_tabular_env_passes_the_gymnasium_checker(table):
    check_env(TabularNPASEnv(table), skip_render_check=True)


def test_table_round_trips_and_single_layer_entries_are_real_values(table):
    env = tiny_env(accuracy="proxy", latency="analytic")
    assert table.metadata["failed_entries"] == 0 and table.metadata["accuracy"]["name"] == "proxy"
    assert TabularTable.from_dict(table.to_dict()).to_dict() == table.to_dict()
    layer = 3
    for row, action in enumerate(table.rows[layer].actions[:5]):
        actions = [a if i != layer else action for i, a in enumerate(env.plan.actions)]
        plan = env.plan.__class__(tuple(actions), env.context.layer_names, env.context.arch_fingerprint)
        score = env.scorer.score([plan])[0]
        rows = [0 if i != layer else row for i in range(len(table.layers))]
        assert table.rows[0].actions[0].is_dense
        assert table.accuracy(rows) == pytest.approx(score.accuracy.accuracy)
        assert table.latency(rows) == pytest.approx(score.latency.latency_ms)


def test_episode_scores_are_the_table_values_and_match_tabular_evaluators(table):
    env = TabularNPASEnv(table, latency_budget_ms=0.03)
    real = tiny_env(accuracy="tabular", accuracy_kwargs={"table": table},
                    latency="tabular", latency_kwargs={"table": table}, latency_budget_ms=0.03)
    for seed in range(5):
        reward, info = play(env, seed)
        assert info["accuracy"] == pytest.approx(table.accuracy(info["rows"]))
        assert info["latency_ms"] == pytest.approx(table.latency(info["rows"]))
        expected = info["accuracy"] - max(0.0, info["latency_ms"] / 0.03 - 1.0)
        assert reward == pytest.approx(expected)
        assert real.scorer.score([env.plan(info["rows"])])[0].reward == pytest.approx(reward)


def test_analytic_latency_is_additive_so_the_table_is_exact(table):
    env = tiny_env(accuracy="proxy", latency="analytic")
    tab = TabularNPASEnv(table)
    for seed in range(3):
        _, info = play(tab, seed)
        plan = tab.plan(info["rows"])
        assert env.scorer.score([plan])[0].latency.latency_ms == pytest.approx(info["latency_ms"])


def test_bad_actions_and_names_raise(table):
    env = TabularNPASEnv(table)
    env.reset()
    with pytest.raises(InvalidAction):
        env.step([0, 0, 99, 0])
    with pytest.raises(EvaluatorNotFound, match="tabular table"):
        load_table("no_such_table")


@pytest.mark.skipif("small_cnn_digits" not in table_names(), reason="shipped table not built yet")
def test_shipped_table_registers_a_gymnasium_id():
    register_tabular_envs()
    env = gym.make("npas/TabularSmallCNN-v0")
    env.reset(seed=0)
    assert isinstance(env.unwrapped, TabularNPASEnv)
    assert len(env.unwrapped.layers) == 5


def test_observations_match_the_real_env(table):
    real = tiny_env(accuracy="proxy", latency="analytic", latency_budget_ms=0.03)
    tab = TabularNPASEnv(table, latency_budget_ms=0.03)
    rng = np.random.default_rng(7)
    obs_t, _ = tab.reset(seed=0)
    obs_r, _ = real.reset(seed=0)
    for _ in range(len(tab.layers)):
        assert np.allclose(obs_t, obs_r, atol=1e-6)
        action = sample_masked_action(tab.action_space.nvec, tab.action_masks(), rng)
        assert np.all(real.action_masks()[tab.action_masks()])  # tabular masks are a subset
        obs_t, _, _, _, info_t = tab.step(action)
        obs_r, _, _, _, info_r = real.step(action)
    assert np.allclose(obs_t, obs_r, atol=1e-6)
    # analytic latency is additive, so exact; the proxy accuracy is not (the table approximates it)
    assert info_t["latency_ms"] == pytest.approx(info_r["latency_ms"])
    assert tab.plan(info_t["rows"]) == info_r["plan"]


def test_demo_renders_a_tabular_episode(capsys):
    from npas_env.cli import main

    assert main(["demo", "--env", "npas/TabularSmallCNN-v0"]) == 0
    out = capsys.readouterr().out
    assert "decision" in out and "reward =" in out
