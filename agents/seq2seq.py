"""Seq2seq policy-gradient controller (TODAES section 5.1) as SB3 components.

TODAES: "The input to the encoder RNN is the sequence of the information of each layer in the
target DNN and the decoder is an LSTM with N time steps to output the mapping decision for each
layer", trained with ``grad J = 1/K sum_k (R(M_k) - B) grad log pi(M_k | I)`` (K samples per
update, a baseline B). Here:

* :class:`Seq2SeqExtractor` reads a :class:`~agents.sequence_wrapper.SequenceObservation`: a
  bidirectional GRU (or LSTM) encodes all layer descriptors; an LSTM decoder runs over the
  decisions already taken, teacher-forced from the observation (input at step t = decision
  t-1 and encoding t); the decoder state at the current layer attends over the encodings.
* :func:`make_reinforce` configures A2C / PPO / MaskablePPO so one update is exactly the REINFORCE
  estimate above with the value head as a (state-dependent) baseline.
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from agents.sequence_wrapper import COL_CURRENT, COL_DECISION, COL_VALID, SequenceObservation
from npas_env.errors import InvalidConfig
from npas_env.observation import N_FEATURES, N_STATIC

N_CONTEXT = N_FEATURES - N_STATIC  # running-state features of the env observation (kept MACs, ...)


class Seq2SeqExtractor(BaseFeaturesExtractor):
    """Encoder RNN over layers + decoder LSTM over past decisions -> features of the current step.

    Args:
        observation_space: a ``SequenceObservation`` space, shape (max_layers + 1, width).
        hidden_size: encoder hidden size per direction and decoder hidden size.
        encoder: ``"gru"`` or ``"lstm"``.
        bidirectional: encode each layer with both earlier and later layers (the whole network).
        attention: add dot-product attention of the decoder state over all layer encodings;
            without it the current layer's encoding is only concatenated.
        features_dim: size of the output feature vector.
    """

    def __init__(self, observation_space: gym.spaces.Box, hidden_size: int = 64,
                 encoder: Literal["gru", "lstm"] = "gru", bidirectional: bool = True,
                 attention: bool = True, features_dim: int = 64) -> None:
        super().__init__(observation_space, features_dim)
        shape = observation_space.shape
        if shape is None or len(shape) != 2 or shape[1] <= COL_DECISION:
            raise InvalidConfig(f"Seq2SeqExtractor needs a SequenceObservation space (max_layers + 1, width), "
                                f"got shape {shape}; wrap the env with agents.SequenceObservation")
        if encoder not in ("gru", "lstm"):
            raise InvalidConfig(f"encoder must be 'gru' or 'lstm', got {encoder!r}")
        self.decision_dim = shape[1] - COL_DECISION
        rnn = nn.GRU if encoder == "gru" else nn.LSTM
        self.encoder = rnn(N_STATIC, hidden_size, batch_first=True, bidirectional=bidirectional)
        enc_dim = hidden_size * (2 if bidirectional else 1)
        self.decoder = nn.LSTM(self.decision_dim + enc_dim, hidden_size, batch_first=True)
        self.attention = nn.Linear(hidden_size, enc_dim, bias=False) if attention else None
        head_in = hidden_size + enc_dim * (2 if attention else 1) + N_CONTEXT
        self.head = nn.Sequential(nn.Linear(head_in, features_dim), nn.Tanh())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        layers, context = observations[:, :-1, :], observations[:, -1, N_STATIC:N_FEATURES]
        valid = layers[..., COL_VALID] > 0.5                                    # (B, L)
        enc = self._encode(layers[..., :N_STATIC], valid)                        # (B, L, E)
        decisions = layers[..., COL_DECISION:]
        shifted = torch.cat([torch.zeros_like(decisions[:, :1]), decisions[:, :-1]], dim=1)
        dec, _ = self.decoder(torch.cat([shifted, enc], dim=-1))                 # (B, L, H)
        current = layers[..., COL_CURRENT].argmax(dim=1)                         # (B,)
        rows = torch.arange(observations.shape[0], device=observations.device)
        dec_t, enc_t = dec[rows, current], enc[rows, current]
        parts = [dec_t, enc_t]
        if self.attention is not None:
            scores = torch.einsum("be,ble->bl", self.attention(dec_t), enc)
            scores = scores.masked_fill(~valid, -1e9)
            parts.append(torch.einsum("bl,ble->be", torch.softmax(scores, dim=1), enc))
        return self.head(torch.cat([*parts, context], dim=-1))

    def _encode(self, static: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        lengths = valid.sum(dim=1).clamp(min=1).cpu()
        if bool((lengths == static.shape[1]).all()):
            enc, _ = self.encoder(static)
            return enc
        packed = nn.utils.rnn.pack_padded_sequence(static, lengths, batch_first=True, enforce_sorted=False)
        enc, _ = self.encoder(packed)
        enc, _ = nn.utils.rnn.pad_packed_sequence(enc, batch_first=True, total_length=static.shape[1])
        return enc


def _preset(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs.setdefault("features_extractor_class", Seq2SeqExtractor)
    kwargs.setdefault("net_arch", {"pi": [], "vf": [64]})
    return kwargs


class Seq2SeqPolicy(ActorCriticPolicy):
    """``ActorCriticPolicy`` preset with :class:`Seq2SeqExtractor` (env: ``SequenceObservation``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_preset(kwargs))


class MaskableSeq2SeqPolicy(MaskableActorCriticPolicy):
    """sb3-contrib ``MaskableActorCriticPolicy`` preset with :class:`Seq2SeqExtractor`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_preset(kwargs))


_ALGOS: dict[str, tuple[type[BaseAlgorithm], type]] = {
    "a2c": (A2C, Seq2SeqPolicy), "ppo": (PPO, Seq2SeqPolicy),
    "maskable_ppo": (MaskablePPO, MaskableSeq2SeqPolicy)}


def count_layers(env: Any) -> int:
    """Number of env steps per episode (prunable layers) of an env or VecEnv."""
    if hasattr(env, "get_attr"):
        return len(env.get_attr("layers")[0])
    return len(env.unwrapped.layers)


def make_reinforce(env: Any, k_episodes: int = 8,
                   algo: Literal["a2c", "ppo", "maskable_ppo"] = "maskable_ppo",
                   **kwargs: Any) -> BaseAlgorithm:
    """An SB3 model doing REINFORCE with a baseline over whole episodes (TODAES eq. 6).

    Settings (``kwargs`` override any of them):

    * ``n_steps = k_episodes * layers``: one update per K sampled plans per env (paper: K
      samples per iteration; K is not given, 8 is our choice).
    * ``gamma = 1``, ``gae_lambda = 1``: the advantage of every step is the whole-episode return
      R(M) minus the baseline (Monte-Carlo return, paper: R(M) is the episode's reward).
    * the value head is the baseline B (paper: "a baseline term B", form not given; a learned
      V(s_t) is our choice), ``normalize_advantage = True`` (our choice, variance reduction).
    * PPO / MaskablePPO: ``n_epochs = 1`` and ``batch_size = n_steps``: one gradient step on
      fresh samples, where the clipped ratio is 1, i.e. plain policy gradient. Raise
      ``n_epochs`` to reuse samples the PPO way.
    * ``ent_coef = 0.01`` (our choice, keeps exploring), ``learning_rate = 1e-3`` (our choice).

    Args:
        env: a (vectorized) env, normally ``SequenceObservation(NPASEnv(...))``. A plain NPASEnv
            is wrapped with :class:`SequenceObservation`.
        k_episodes: plans sampled per update and env (K).
        algo: ``"a2c"``, ``"ppo"`` or ``"maskable_ppo"`` (masked choices never sampled).
        **kwargs: any constructor argument of the SB3 algorithm (``seed``, ``tensorboard_log``,
            ``policy_kwargs``, ``verbose``...); ``policy`` replaces the seq2seq preset.

    Raises:
        InvalidConfig: unknown ``algo`` or ``k_episodes < 1``.
    """
    if algo not in _ALGOS:
        raise InvalidConfig(f"algo must be one of {sorted(_ALGOS)}, got {algo!r}")
    if k_episodes < 1:
        raise InvalidConfig(f"k_episodes must be >= 1, got {k_episodes}")
    if not hasattr(env, "get_attr") and len(getattr(env.observation_space, "shape", ()) or ()) != 2:
        env = SequenceObservation(env)
    cls, policy = _ALGOS[algo]
    n_steps = k_episodes * count_layers(env)
    settings: dict[str, Any] = {"n_steps": n_steps, "gamma": 1.0, "gae_lambda": 1.0,
                                "ent_coef": 0.01, "learning_rate": 1e-3}
    if algo == "a2c":
        settings["normalize_advantage"] = True
    else:
        n_envs = getattr(env, "num_envs", 1)
        settings.update(n_epochs=1, batch_size=n_steps * n_envs, normalize_advantage=True)
    settings.update(kwargs)
    return cls(settings.pop("policy", policy), env, **settings)
