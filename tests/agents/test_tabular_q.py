from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback

from agents.base import BudgetCallback, SearchAgent, make_problem_env
from agents.qbo import QBOSearch
from agents.registry import make_agent
from agents.sb3_agent import SB3Agent
from agents.tabular_q import TabularQLearning
from agents.tabular_state import TabularObservation
from npas_env.errors import InvalidConfig, InvalidPlan
from npas_env.plan import LayerAction, Scheme
from npas_env.problem import SearchProblem
from npas_env.search_space import SearchSpace
from tests.agents.conftest import TARGET, make_target_env, make_tiny_env


class CountingCallback(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.steps, self.episodes = 0, 0

    def _on_step(self) -> bool:
        self.steps += 1
        self.episodes += int(np.sum(self.locals["dones"]))
        return True


def _greedy_episode(model: TabularQLearning, env: TabularObservation) -> tuple[float, dict]:
    obs, _ = env.reset(seed=0)
    while True:
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, done, _, info = env.step(action)
        if done:
            return reward, info


def test_tabular_q_learns_the_known_optimum_through_the_env():
    problem = SearchProblem.from_env(make_target_env())
    env = make_problem_env(problem, limit=60)
    model = TabularQLearning("TabularQPolicy", env, seed=0, exploration_budget=60)
    model.learn(200 * 3, callback=BudgetCallback(problem, 60))
    rewards = [t.reward for t in problem.trials]
    assert problem.n_evals == 60 == len(model.memory)
    assert max(rewards) > max(rewards[:10])  # improves on its first episodes
    assert max(rewards) == pytest.approx(1.0) == model.memory.best()[1]  # the optimum of 245 plans
    assert model.exploration_rate == pytest.approx(0.1)  # the end of the MetaQNN schedule
    reward, info = _greedy_episode(model, TabularObservation(make_target_env()))
    assert info["error"] is None and reward >= 0.8 > np.mean(rewards[:10])  # the greedy policy learned


def test_masked_actions_are_never_taken_in_learning_or_prediction():
    env = make_tiny_env(masked_action="raise")  # a masked choice would raise InvalidAction
    model = TabularQLearning("TabularQPolicy", env, seed=0, exploration_budget=20, replay_size=8)
    model.learn(40 * len(env.layers))
    assert 0.0 < model.exploration_rate < 1.0 and len(model.memory) > 1
    wrapped = TabularObservation(make_tiny_env(masked_action="raise"))
    for deterministic in (True, False):
        for seed in range(5):
            obs, _ = wrapped.reset(seed=seed)
            done = False
            while not done:
                action, _ = model.predict(obs, deterministic=deterministic)
                obs, _, done, _, info = wrapped.step(action)
                assert not info["action_repaired"]


def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    env = make_tiny_env()
    model = TabularQLearning("TabularQPolicy", env, seed=1, exploration_budget=10, replay_size=4)
    model.learn(12 * len(env.layers))
    model.save(tmp_path / "q.zip")
    for loaded in (TabularQLearning.load(tmp_path / "q.zip"), TabularQLearning.load(tmp_path / "q.zip", env=env)):
        assert np.array_equal(loaded.policy.q, model.policy.q)
        assert loaded.memory == model.memory and loaded.vocabulary == model.vocabulary
        wrapped = TabularObservation(make_tiny_env())
        for seed in range(3):
            obs, _ = wrapped.reset(seed=seed)
            done = False
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                assert np.array_equal(action, loaded.predict(obs, deterministic=True)[0])
                obs, _, done, _, _ = wrapped.step(action)
    params = model.get_parameters()
    assert set(params) == {"policy"} and params["policy"]["q_table"].shape == model.policy.q.shape
    other_rates = SearchSpace(rates=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0))  # same spaces, other actions
    with pytest.raises(InvalidConfig, match="another model"):
        TabularQLearning.load(tmp_path / "q.zip", env=make_tiny_env(search_space=other_rates))


def test_learn_runs_callbacks_progress_bar_and_writes_tensorboard(tmp_path):
    problem = SearchProblem.from_env(make_target_env())
    model = TabularQLearning("TabularQPolicy", make_problem_env(problem, limit=8), seed=0,
                             tensorboard_log=str(tmp_path))
    counter = CountingCallback()
    model.learn(100 * 3, callback=[counter, BudgetCallback(problem, 8)], progress_bar=True, tb_log_name="tq")
    assert problem.n_evals == 8 and counter.steps == model.num_timesteps and counter.episodes >= 8
    assert any((tmp_path / "tq_1").glob("events.out.tfevents*"))


def test_registry_qlearning_is_the_sb3_algorithm_and_spends_exactly_the_budget():
    agent = make_agent("qlearning", seed=0)
    assert isinstance(agent, SB3Agent) and isinstance(agent, SearchAgent) and agent.algo == "qlearning"
    problem = SearchProblem.from_env(make_target_env())
    best = agent.run(problem, 12)
    assert problem.n_evals == 12 and best is not None and best.reward == problem.best.reward
    with pytest.raises(InvalidConfig, match="policy-gradient"):
        SB3Agent("qlearning", seq2seq=True).build(make_target_env())


def test_tell_rejects_bad_input_and_qbo_shares_the_sb3_q_function(tmp_path, target_problem):
    search = QBOSearch(target_problem, pool_size=20, seed=0)
    search.run(10)
    assert isinstance(search.q, TabularQLearning) and len(search.q.memory) == 10
    search.q.save(tmp_path / "qbo_q.zip")
    loaded = TabularQLearning.load(tmp_path / "qbo_q.zip")
    assert np.array_equal(loaded.policy.q, search.q.policy.q)
    with pytest.raises(InvalidPlan, match="not an allowed action"):
        search.q.tell([(LayerAction(Scheme.BLOCK_BASED, 2.0, (1, 1)),) + TARGET[1:]], [0.5])
    with pytest.raises(InvalidConfig, match="rewards"):
        search.q.tell([TARGET], [0.5, 0.1])
    with pytest.raises(InvalidConfig, match="finite"):
        search.q.tell([TARGET], [float("nan")])
    with pytest.raises(InvalidConfig, match="learning_rate"):
        TabularQLearning.from_problem(target_problem, learning_rate=0.0)
