from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from agents.base import allowed_actions
from agents.tabular_state import ActionVocabulary, TabularObservation
from npas_env.errors import InvalidConfig, InvalidPlan
from npas_env.plan import LayerAction, Scheme
from npas_env.search_space import sample_masked_action
from tests.agents.conftest import TARGET, make_target_env, make_tiny_env


def test_vocabulary_numbers_the_canonical_actions_of_every_layer():
    env = make_tiny_env()
    vocabulary = ActionVocabulary.from_env(env)
    assert vocabulary.n_layers == len(env.layers)
    for idx, spec in enumerate(env.layers):
        assert vocabulary.actions[idx] == allowed_actions(env.search_space, spec)
        assert [vocabulary.id_of(idx, a) for a in vocabulary.actions[idx]] == list(range(len(vocabulary.actions[idx])))
    assert vocabulary.size == max(len(a) for a in vocabulary.actions)
    assert vocabulary == ActionVocabulary(env.layers, env.search_space) != ActionVocabulary.from_env(make_target_env())


def test_allowed_sets_follow_the_masks_of_coupled_layers():
    """Every mask the env produces maps to ids whose vectors are allowed and decode to them."""
    env = make_tiny_env(masked_action="raise")
    vocabulary = ActionVocabulary.from_env(env)
    rng = np.random.default_rng(0)
    for seed in range(15):
        env.reset(seed=seed)
        ids: list[int] = []
        for idx, spec in enumerate(env.layers):
            mask = env.action_masks()
            allowed = vocabulary.allowed(idx, mask)
            assert np.array_equal(allowed.ids, vocabulary.allowed_after(idx, ids).ids)
            decided = list(zip(env.layers, vocabulary.decode(ids), strict=False))
            expected = allowed_actions(env.search_space, spec, decided)
            assert [vocabulary.actions[idx][i] for i in allowed.ids] == list(expected)
            for vec, i in zip(allowed.vectors, allowed.ids, strict=True):
                assert allowed.by_vector[tuple(vec.tolist())] == i
            vec = sample_masked_action(env.action_space.nvec, mask, rng)
            _, _, _, _, info = env.step(vec)
            ids.append(vocabulary.id_of(idx, info["layer_action"]))


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped")
def test_tabular_observation_passes_the_env_checker_and_tracks_the_previous_action():
    env = TabularObservation(make_target_env())
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert (obs["layer"], obs["prev"]) == (0, 0)
    assert np.array_equal(obs["action_mask"], env.action_masks().astype(np.int8))
    obs, _, _, _, info = env.step(env.unwrapped.search_space.encode(TARGET[0]))
    assert info["action_id"] == env.vocabulary.id_of(0, TARGET[0])
    assert (obs["layer"], obs["prev"]) == (1, info["action_id"] + 1)
    assert obs in env.observation_space


def test_encode_rejects_plans_outside_the_space():
    vocabulary = ActionVocabulary.from_env(make_target_env())
    assert vocabulary.decode(vocabulary.encode(TARGET)) == TARGET
    with pytest.raises(InvalidPlan, match="need 3 actions"):
        vocabulary.encode(TARGET[:2])
    with pytest.raises(InvalidPlan, match="not an allowed action"):
        vocabulary.encode((LayerAction(Scheme.BLOCK_BASED, 2.0, (1, 1)),) + TARGET[1:])
    with pytest.raises(InvalidConfig, match="NPASEnv"):
        TabularObservation(gym.make("CartPole-v1"))
