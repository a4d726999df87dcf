from __future__ import annotations

import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback

from agents.seq2seq import Seq2SeqExtractor, make_reinforce
from agents.sequence_wrapper import SequenceObservation
from npas_env.errors import InvalidConfig
from tests.agents.conftest import make_target_env, make_tiny_env


class Recorder(BaseCallback):
    """Collects episode rewards and whether any action was repaired."""

    def __init__(self) -> None:
        super().__init__()
        self.rewards: list[float] = []
        self.repaired = 0

    def _on_step(self) -> bool:
        for info, done, reward in zip(self.locals["infos"], self.locals["dones"], self.locals["rewards"], strict=False):
            self.repaired += bool(info.get("action_repaired"))
            if done:
                self.rewards.append(float(reward))
        return True


@pytest.mark.parametrize("encoder, attention", [("gru", True), ("lstm", False)])
def test_extractor_handles_padding_and_batches(encoder, attention):
    env = SequenceObservation(make_tiny_env(), max_layers=14)
    ext = Seq2SeqExtractor(env.observation_space, hidden_size=16, encoder=encoder,
                           attention=attention, features_dim=8)
    obs, _ = env.reset(seed=0)
    first = torch.as_tensor(obs)[None]
    env.step(np.zeros(4, dtype=np.int64))
    second = torch.as_tensor(env.observation(np.asarray(obs[-1, :18])))[None]
    out = ext(torch.cat([first, second]))
    assert out.shape == (2, 8) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])


def test_extractor_rejects_flat_observations():
    with pytest.raises(InvalidConfig, match="SequenceObservation"):
        Seq2SeqExtractor(make_tiny_env().observation_space)


@pytest.mark.parametrize("algo, cls", [("a2c", A2C), ("ppo", PPO), ("maskable_ppo", MaskablePPO)])
def test_make_reinforce_sets_whole_episode_monte_carlo(algo, cls):
    model = make_reinforce(make_tiny_env(), k_episodes=3, algo=algo, seed=0)
    assert isinstance(model, cls) and model.n_steps == 3 * 9
    assert model.gamma == 1.0 and model.gae_lambda == 1.0
    if algo != "a2c":
        assert model.n_epochs == 1 and model.batch_size == 27


@pytest.mark.parametrize("algo", ["ppo", "maskable_ppo"])
def test_seq2seq_policy_save_load_round_trip(tmp_path, algo):
    env = SequenceObservation(make_tiny_env())
    model = make_reinforce(env, k_episodes=2, algo=algo, seed=0, tensorboard_log=str(tmp_path / "tb"),
                           policy_kwargs={"features_extractor_kwargs": {"hidden_size": 16}})
    model.learn(2 * 9, progress_bar=True)
    assert any((tmp_path / "tb").rglob("events.out.tfevents*"))
    model.save(tmp_path / "model.zip")
    loaded = type(model).load(tmp_path / "model.zip", env=env)
    assert isinstance(loaded.policy.features_extractor, Seq2SeqExtractor)
    obs, _ = env.reset(seed=1)
    kwargs = {"action_masks": env.action_masks()} if algo == "maskable_ppo" else {}
    for a, b in zip(model.policy.state_dict().values(), loaded.policy.state_dict().values(), strict=False):
        assert torch.equal(a, b)
    assert np.array_equal(model.predict(obs, deterministic=True, **kwargs)[0],
                          loaded.predict(obs, deterministic=True, **kwargs)[0])


def test_maskable_seq2seq_never_takes_masked_actions():
    rec = Recorder()
    model = make_reinforce(SequenceObservation(make_tiny_env()), k_episodes=4, algo="maskable_ppo", seed=0)
    model.learn(4 * 9 * 3, callback=rec)
    assert rec.repaired == 0 and len(rec.rewards) == 12


def test_seq2seq_controller_learns_the_known_optimum():
    torch.manual_seed(0)
    rec = Recorder()
    model = make_reinforce(SequenceObservation(make_target_env()), k_episodes=8, algo="maskable_ppo",
                           seed=0, learning_rate=3e-3, n_epochs=4, batch_size=24)
    model.learn(3 * 8 * 30, callback=rec)
    first, last = np.mean(rec.rewards[:24]), np.mean(rec.rewards[-24:])
    assert last > first + 0.1, (first, last)
    assert max(rec.rewards) == pytest.approx(1.0)
