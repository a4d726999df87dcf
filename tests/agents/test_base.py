from __future__ import annotations

import pytest

from agents.base import BUDGET_EXHAUSTED, SearchAgent, make_problem_env
from agents.sb3_agent import SB3Agent
from npas_env.problem import SearchProblem
from npas_env.search_space import sample_masked_action
from tests.agents.conftest import make_target_env


def _episode(env, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    while True:
        _, reward, done, _, info = env.step(sample_masked_action(env.action_space.nvec, env.action_masks(), rng))
        if done:
            return reward, info


def test_problem_env_charges_episodes_to_the_problem_and_stops_at_the_limit(target_problem):
    env = make_problem_env(target_problem, limit=3)
    rewards = [_episode(env, seed)[0] for seed in range(30)]
    assert target_problem.n_evals == 3
    reward, info = _episode(env, 99)
    assert info["error"] is None or BUDGET_EXHAUSTED in info["error"]
    assert len(rewards) == 30


@pytest.mark.parametrize("algo, seq2seq", [("a2c", False), ("dqn", False), ("ppo", False),
                                           ("maskable_ppo", True)])
def test_sb3_agents_spend_exactly_the_budget(algo, seq2seq):
    problem = SearchProblem.from_env(make_target_env())
    agent = SB3Agent(algo, seq2seq=seq2seq, seed=0, k_episodes=2)
    assert isinstance(agent, SearchAgent)
    best = agent.run(problem, 6)
    assert problem.n_evals == 6 and best is not None and best.reward == problem.best.reward


def test_sb3_runs_are_reproducible_whatever_the_evaluator_cache_holds():
    from tests.agents.conftest import make_tiny_env

    env = make_tiny_env()  # proxy accuracy builds replacement modules (torch RNG) on cache misses
    runs = []
    for _ in range(2):
        problem = SearchProblem.from_env(env)
        SB3Agent("ppo", seed=0, k_episodes=2).run(problem, 6)
        runs.append([t.plan.key() for t in problem.trials])
    assert runs[0] == runs[1]


@pytest.mark.parametrize("algo", ["ppo", "qlearning"])
def test_runs_without_tensorboard_leave_no_sb3_folder(algo, monkeypatch, tmp_path):
    """SB3's default logger makes an empty ``/tmp/SB3-<date>`` folder per ``learn()`` when no
    TensorBoard folder is given: our agents (SB3 algorithms and TabularQLearning) do not."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    problem = SearchProblem.from_env(make_target_env())
    SB3Agent(algo, seed=0, k_episodes=2).run(problem, 4)
    assert problem.n_evals == 4
    assert not list(tmp_path.glob("SB3-*"))


def test_folderless_logger_keeps_a_tensorboard_folder(tmp_path):
    from stable_baselines3 import PPO

    from agents.base import folderless_logger

    env = make_target_env()
    with_tb = PPO("MlpPolicy", env, n_steps=8, batch_size=8, tensorboard_log=str(tmp_path), device="cpu")
    folderless_logger(with_tb)
    with_tb.learn(8)
    assert list(tmp_path.glob("PPO_1/events.out.tfevents*"))
