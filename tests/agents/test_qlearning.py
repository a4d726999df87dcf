from __future__ import annotations

import itertools

import numpy as np
import pytest

from agents.base import SearchAgent, allowed_actions
from agents.qbo import QBOAgent, QBOSearch, mutate_actions
from agents.qlearning import METAQNN_SCHEDULE, epsilon_at
from agents.tabular_q import TabularQLearning
from npas_env.errors import InvalidConfig
from npas_env.problem import SearchProblem
from tests.agents.conftest import TARGET, make_tiny_env


def test_epsilon_schedule_scales_metaqnn_to_the_budget():
    assert epsilon_at(0, 54) == 1.0
    assert epsilon_at(29, 54) == 1.0  # 1500/2700 of the budget at epsilon 1
    assert epsilon_at(30, 54) == 0.9
    assert epsilon_at(53, 54) == 0.1 and epsilon_at(500, 54) == 0.1
    assert sum(n for _, n in METAQNN_SCHEDULE) == 2700
    with pytest.raises(InvalidConfig, match="epsilon"):
        epsilon_at(0, 10, [(1.5, 10)])


def test_q_updates_follow_the_metaqnn_rule(target_problem):
    q = TabularQLearning.from_problem(target_problem, learning_rate=0.5, q_init=0.0, replay_size=0)
    q.update(TARGET, 1.0)
    assert q.q_value(2, TARGET[:2], TARGET[2]) == pytest.approx(0.5)
    # backwards along the trajectory: each step already sees the updated successor
    assert q.q_value(1, TARGET[:1], TARGET[1]) == pytest.approx(0.25)
    assert q.q_value(0, (), TARGET[0]) == pytest.approx(0.125)
    q.update(TARGET, 1.0)
    assert q.q_value(1, TARGET[:1], TARGET[1]) == pytest.approx(0.25 + 0.5 * (0.75 - 0.25))
    assert q.sample_actions(0.0) == TARGET


@pytest.mark.parametrize("use_surrogate, mutation_share", [(True, 0.0), (True, 0.5), (False, 0.0)])
def test_qbo_improves_on_its_first_episodes_and_finds_the_known_optimum(target_problem, use_surrogate,
                                                                       mutation_share):
    agent = QBOAgent(use_surrogate=use_surrogate, seed=0, pool_size=50,
                     kwargs={"mutation_share": mutation_share})
    assert isinstance(agent, SearchAgent)
    best = agent.run(target_problem, 60)
    rewards = [t.reward for t in target_problem.trials]
    assert target_problem.n_evals == 60
    assert max(rewards) > max(rewards[:10])  # best-so-far improves on the first episodes
    assert best is not None and best.reward == max(rewards)
    if use_surrogate:  # the unique optimum among 245 plans, within 60 evaluations
        assert best.reward == pytest.approx(1.0) and best.plan.actions == TARGET


def _replay_strict(env, plan) -> None:
    """Step ``plan`` through an env with masked_action='raise' from allowed index vectors."""
    space = env.search_space
    env.reset(seed=0)
    decided = []
    for spec, action in zip(env.layers, plan.actions, strict=False):
        mask = env.action_masks()
        bounds = np.concatenate([[0], np.cumsum(space.nvec)])
        per_dim = [np.flatnonzero(mask[bounds[d]:bounds[d + 1]]) for d in range(4)]
        vec = next(np.array(v) for v in itertools.product(*per_dim)
                   if space.decode(spec, np.array(v), decided, check=False) == action)
        _, _, _, _, info = env.step(vec)
        assert not info["action_repaired"]
        decided.append((spec, action))
    assert info["plan"] == plan


def test_qbo_proposals_never_take_masked_actions_and_counts_are_separate(tmp_path):
    env = make_tiny_env()
    problem = SearchProblem.from_env(env)
    search = QBOSearch(problem, pool_size=20, batch_size=4, n_init=4, seed=1, mutation_share=0.5,
                       tensorboard_log=str(tmp_path), progress_bar=True)
    search.run(16)
    stats = search.stats
    assert stats["true_evals"] == problem.n_evals == 16
    assert stats["surrogate_predictions"] >= 20 and stats["proposed"] > 16
    strict = make_tiny_env(masked_action="raise")
    for plan in search.proposed[::7]:
        _replay_strict(strict, plan)
    for spec_idx, spec in enumerate(problem.layers[:1]):
        assert all(a in allowed_actions(problem.space, spec) for a in {p.actions[spec_idx] for p in search.proposed})
    assert any(tmp_path.rglob("events.out.tfevents*"))


def test_qbo_respects_the_problem_budget_and_bad_settings(target_problem):
    target_problem.budget = 7
    best = QBOSearch(target_problem, seed=0).run(20)
    assert target_problem.n_evals == 7 and best is not None
    with pytest.raises(InvalidConfig, match="budget"):
        QBOSearch(target_problem).run(0)
    with pytest.raises(InvalidConfig, match="pool_size"):
        QBOSearch(target_problem, pool_size=0)
    with pytest.raises(InvalidConfig, match="mutation_share"):
        QBOSearch(target_problem, mutation_share=1.5)


def test_mutations_stay_in_the_space_and_change_few_layers(tiny_problem):
    vocabulary = TabularQLearning.from_problem(tiny_problem).vocabulary
    parent = tiny_problem.random_plan(np.random.default_rng(0))
    rng = np.random.default_rng(0)
    for _ in range(20):
        actions = mutate_actions(vocabulary, parent.actions, 1, rng)
        child = tiny_problem.make_plan(actions)
        assert actions == child.actions
        changed = sum(a != b for a, b in zip(parent.actions, child.actions, strict=True))
        assert changed <= 1 + sum(s.coupled_group is not None for s in tiny_problem.layers)
        decided = []
        for spec, action in zip(tiny_problem.layers, child.actions, strict=True):
            assert action in allowed_actions(tiny_problem.space, spec, decided)
            decided.append((spec, action))
