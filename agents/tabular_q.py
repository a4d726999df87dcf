"""``TabularQLearning``: MetaQNN Q-learning as a Stable-Baselines3 algorithm over the NPAS env.

State ``s_i = (layer i, previous layer's action)``, action = one distinct canonical action allowed
by the layer's mask (:mod:`agents.tabular_state`). The Q-table is a torch buffer of
:class:`TabularQPolicy` of shape ``(layers, V + 1, V)`` (``V`` = most actions of any layer; row 0
of the middle axis is "no previous layer"), so ``save`` / ``load`` / ``get_parameters`` /
``set_parameters`` are SB3's own. ``learn`` walks real episodes of an :class:`NPASEnv` (wrapped
in :class:`~agents.tabular_state.TabularObservation` automatically), epsilon-greedy with masked
random choices; each finished episode's terminal reward updates Q backwards along the trajectory,
is stored, and ``replay_size`` stored trajectories are replayed (MetaQNN). SB3 callbacks,
``progress_bar=True`` and the logger (TensorBoard with ``tensorboard_log``) work as for any SB3
algorithm. ``sample_actions`` / ``tell`` use the same Q-table without an env, for searches that
propose whole plans (``agents.qbo.QBOSearch``).

Defaults are MetaQNN's (``bowenbaker/metaqnn``, ``npas_spec.md`` section 3, ``docs/agents.md``):
learning rate 0.01, discount 1.0, Q initialised to 0.5, 128 replayed trajectories, and the epsilon
schedule :data:`~agents.qlearning.METAQNN_SCHEDULE` over unique models, scaled to
``exploration_budget``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, Schedule
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import VecEnv

from agents.base import BUDGET_EXHAUSTED, folderless_logger
from agents.qlearning import METAQNN_SCHEDULE, epsilon_at
from agents.tabular_state import OBS_KEYS, ActionVocabulary, AllowedActions, TabularObservation
from npas_env.errors import InvalidConfig
from npas_env.plan import LayerAction, PruningPlan
from npas_env.search_space import sample_masked_action

SelfTabularQLearning = TypeVar("SelfTabularQLearning", bound="TabularQLearning")


class TabularQPolicy(BasePolicy):
    """Greedy policy of a Q-table over (layer, previous action) -> action, masked.

    Args:
        observation_space: the :class:`TabularObservation` space.
        action_space: the env's ``MultiDiscrete`` action space.
        lr_schedule: unused (the learning rate belongs to the algorithm); SB3 passes it.
        vocabulary: the model's :class:`ActionVocabulary` (ids of the table's axes).
        q_init: initial Q of every pair.
    """

    q_table: torch.Tensor

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space,
                 lr_schedule: Schedule | None = None, vocabulary: ActionVocabulary | None = None,
                 q_init: float = 0.5, **kwargs: Any) -> None:
        super().__init__(observation_space, action_space, **kwargs)
        if vocabulary is None:
            raise InvalidConfig("TabularQPolicy needs the env's ActionVocabulary (policy_kwargs['vocabulary'])")
        self.vocabulary, self.q_init = vocabulary, float(q_init)
        shape = (vocabulary.n_layers, vocabulary.size + 1, vocabulary.size)
        self.register_buffer("q_table", torch.full(shape, self.q_init, dtype=torch.float32))

    @property
    def q(self) -> np.ndarray:
        """The Q-table as a writable numpy view (float32, ``(layers, V + 1, V)``)."""
        return self.q_table.numpy()

    def greedy_ties(self, idx: int, prev: int, allowed: AllowedActions) -> np.ndarray:
        """Positions in ``allowed.ids`` whose Q is the maximum at state ``(idx, prev)``."""
        values = self.q[idx, prev, allowed.ids]
        return np.flatnonzero(values == values.max())

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> torch.Tensor:
        assert isinstance(observation, dict)
        layers = observation["layer"].reshape(-1).long().tolist()
        prevs = observation["prev"].reshape(-1).long().tolist()
        masks = observation["action_mask"].reshape(len(layers), -1).cpu().numpy().astype(bool)
        out = np.empty((len(layers), len(self.vocabulary.space.nvec)), dtype=np.int64)
        for row, (idx, prev, mask) in enumerate(zip(layers, prevs, masks)):
            allowed = self.vocabulary.allowed(idx, mask)
            ties = self.greedy_ties(idx, prev, allowed)
            pick = ties[0] if deterministic else ties[int(torch.randint(len(ties), ()))]
            out[row] = allowed.vectors[pick]
        return torch.as_tensor(out)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(lr_schedule=self._dummy_schedule, vocabulary=self.vocabulary, q_init=self.q_init)
        return data


class TrajectoryMemory:
    """Unique evaluated trajectories (vocabulary ids per layer) with their rewards (MetaQNN replay memory).

    Slots only, so SB3's ``save`` stores it as one pickled item.
    """

    __slots__ = ("_keys", "_rewards")

    def __init__(self) -> None:
        self._rewards: dict[tuple[int, ...], float] = {}
        self._keys: list[tuple[int, ...]] = []

    def add(self, ids: tuple[int, ...], reward: float) -> None:
        """Store a trajectory (a repeat keeps its place and takes the new reward)."""
        if ids not in self._rewards:
            self._keys.append(ids)
        self._rewards[ids] = reward

    def sample(self, n: int, rng: np.random.Generator) -> list[tuple[tuple[int, ...], float]]:
        """``n`` stored trajectories drawn uniformly with replacement."""
        if not self._keys:
            return []
        picked = [self._keys[int(i)] for i in rng.integers(len(self._keys), size=n)]
        return [(ids, self._rewards[ids]) for ids in picked]

    def best(self) -> tuple[tuple[int, ...], float] | None:
        return max(self._rewards.items(), key=lambda kv: kv[1], default=None)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, ids: object) -> bool:
        return ids in self._rewards

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrajectoryMemory) and (self._keys, self._rewards) == (other._keys, other._rewards)

    __hash__ = None  # type: ignore[assignment]


def _is_tabular(env: gym.Env) -> bool:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, TabularObservation):
            return True
        env = env.env
    return False


class TabularQLearning(BaseAlgorithm):
    """MetaQNN tabular Q-learning with experience replay, as an SB3 algorithm.

    Args:
        policy: ``"TabularQPolicy"`` (alias ``"MultiInputPolicy"``) or the class.
        env: an :class:`NPASEnv` (wrapped in :class:`TabularObservation` if it is not), an env
            id, a VecEnv of ``TabularObservation`` envs, or None with
            ``policy_kwargs={"vocabulary": ...}`` (plan-level use: :meth:`sample_actions`, :meth:`tell`).
        learning_rate: alpha, a float or an SB3 schedule of the progress remaining (MetaQNN 0.01).
        gamma: discount (MetaQNN 1.0).
        q_init: initial Q (MetaQNN 0.5).
        replay_size: stored trajectories replayed after each new episode (MetaQNN 128).
        exploration_schedule: (epsilon, unique models) pairs (MetaQNN).
        exploration_budget: unique models the schedule's counts are scaled to; None = the
            episodes of the ``learn`` call (``total_timesteps // layers``).
        stats_window_size, tensorboard_log, policy_kwargs, verbose, seed: as for any SB3 algorithm.
        device: ignored, the table lives on the CPU.
    """

    policy_aliases = {"TabularQPolicy": TabularQPolicy, "MultiInputPolicy": TabularQPolicy}
    policy: TabularQPolicy
    policy_class: type[TabularQPolicy]  # __init__ only accepts TabularQPolicy classes / aliases

    def __init__(self, policy: str | type[TabularQPolicy], env: GymEnv | str | None,
                 learning_rate: float | Schedule = 0.01, gamma: float = 1.0, q_init: float = 0.5,
                 replay_size: int = 128,
                 exploration_schedule: Sequence[tuple[float, int]] = METAQNN_SCHEDULE,
                 exploration_budget: int | None = None, stats_window_size: int = 100,
                 tensorboard_log: str | None = None, policy_kwargs: dict[str, Any] | None = None,
                 verbose: int = 0, seed: int | None = None, device: torch.device | str = "cpu",
                 _init_setup_model: bool = True) -> None:
        super().__init__(policy, env, learning_rate, policy_kwargs=dict(policy_kwargs or {}),
                         stats_window_size=stats_window_size, tensorboard_log=tensorboard_log,
                         verbose=verbose, device="cpu", support_multi_env=True, seed=seed,
                         supported_action_spaces=(spaces.MultiDiscrete,))
        if isinstance(learning_rate, (int, float)) and not 0.0 < learning_rate <= 1.0:
            raise InvalidConfig(f"need 0 < learning_rate <= 1, got {learning_rate}")
        if not 0.0 <= gamma <= 1.0 or replay_size < 0:
            raise InvalidConfig(f"need 0 <= gamma <= 1 and replay_size >= 0, got {gamma}, {replay_size}")
        if exploration_budget is not None and exploration_budget < 1:
            raise InvalidConfig(f"exploration_budget must be >= 1 or None, got {exploration_budget}")
        epsilon_at(0, 1, exploration_schedule)  # validates the schedule
        self.gamma, self.q_init, self.replay_size = float(gamma), float(q_init), int(replay_size)
        self.exploration_schedule = tuple((float(e), int(n)) for e, n in exploration_schedule)
        self.exploration_budget = exploration_budget
        self.exploration_rate = 1.0
        self.memory = TrajectoryMemory()
        self.rng = np.random.default_rng(seed)
        self._open: list[list[int]] = []
        if _init_setup_model:
            self._setup_model()

    @classmethod
    def from_problem(cls, problem: Any, **kwargs: Any) -> TabularQLearning:
        """An env-less instance over a ``SearchProblem``'s layers and space (for plan-level searches)."""
        vocabulary = ActionVocabulary(problem.layers, problem.space)
        return cls("TabularQPolicy", None, policy_kwargs={"vocabulary": vocabulary}, **kwargs)

    # ------------------------------------------------------------------ SB3 plumbing
    @staticmethod
    def _wrap_env(env: GymEnv, verbose: int = 0, monitor_wrapper: bool = True) -> VecEnv:
        if isinstance(env, gym.Env) and not _is_tabular(env):
            env = TabularObservation(env)
        vec = BaseAlgorithm._wrap_env(env, verbose, monitor_wrapper)
        obs_space = vec.observation_space
        if not isinstance(obs_space, spaces.Dict) or set(obs_space.spaces) != set(OBS_KEYS):
            raise InvalidConfig(f"TabularQLearning needs TabularObservation observations {OBS_KEYS}, got "
                                f"{obs_space}; wrap each NPASEnv of a VecEnv in agents.TabularObservation")
        return vec

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        vocabulary = self.policy_kwargs.get("vocabulary")
        if self.env is not None:
            from_env = self.env.get_attr("vocabulary")[0]
            if vocabulary is not None and vocabulary != from_env:
                raise InvalidConfig("the Q-table was built for another model or search space than this env's "
                                    f"({vocabulary} vs {from_env})")
            vocabulary = from_env
        if vocabulary is None:
            raise InvalidConfig("TabularQLearning needs an NPASEnv, or policy_kwargs={'vocabulary': "
                                "ActionVocabulary(layers, space)} without an env")
        self.policy_kwargs["vocabulary"] = vocabulary
        if getattr(self, "observation_space", None) is None:
            self.observation_space, self.action_space = vocabulary.observation_space(), vocabulary.action_space()
        self.set_random_seed(self.seed)
        self.policy = self.policy_class(self.observation_space, self.action_space, self.lr_schedule,
                                        q_init=self.q_init, **self.policy_kwargs)
        self.policy = self.policy.to("cpu")

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_open"]

    @property
    def vocabulary(self) -> ActionVocabulary:
        return self.policy.vocabulary

    # ----------------------------------------------------------------------- acting
    def decide(self, idx: int, prev: int, allowed: AllowedActions, epsilon: float) -> tuple[np.ndarray, int]:
        """One epsilon-greedy decision: (index vector, vocabulary id).

        Random choices are uniform over the allowed index vectors (as ``problem.random_plan``);
        greedy ties are broken uniformly.
        """
        if self.rng.random() < epsilon:
            vec = sample_masked_action(self.vocabulary.space.nvec, allowed.mask, self.rng)
            return vec, allowed.by_vector[tuple(vec.tolist())]
        ties = self.policy.greedy_ties(idx, prev, allowed)
        pick = ties[self.rng.integers(len(ties))]
        return allowed.vectors[pick], int(allowed.ids[pick])

    def sample_actions(self, epsilon: float) -> tuple[LayerAction, ...]:
        """One whole plan's canonical actions, epsilon-greedy layer by layer, without an env."""
        ids: list[int] = []
        for idx in range(self.vocabulary.n_layers):
            allowed = self.vocabulary.allowed_after(idx, ids)
            ids.append(self.decide(idx, ids[-1] + 1 if ids else 0, allowed, epsilon)[1])
        return self.vocabulary.decode(ids)

    def predict(self, observation: np.ndarray | dict[str, np.ndarray], state: tuple[np.ndarray, ...] | None = None,
                episode_start: np.ndarray | None = None,
                deterministic: bool = False) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Greedy action (``deterministic``) or epsilon-greedy with ``exploration_rate``; always masked."""
        actions, state = self.policy.predict(observation, state, episode_start, deterministic)
        if deterministic or self.exploration_rate <= 0.0:
            return actions, state
        assert isinstance(observation, dict)
        batch = np.array(actions).reshape(-1, len(self.vocabulary.space.nvec))
        masks = np.asarray(observation["action_mask"]).reshape(len(batch), -1).astype(bool)
        for row in range(len(batch)):
            if self.rng.random() < self.exploration_rate:
                batch[row] = sample_masked_action(self.vocabulary.space.nvec, masks[row], self.rng)
        return batch.reshape(np.shape(actions)), state

    # --------------------------------------------------------------------- learning
    def tell(self, plans: Sequence[PruningPlan | Sequence[LayerAction]], rewards: Sequence[float]) -> None:
        """Learn from evaluated plans: store each with its true reward, update on it, then replay.

        Raises:
            InvalidPlan: a plan of another model, or with an action not allowed where it stands.
            InvalidConfig: lengths differ or a reward is not finite.
        """
        if len(plans) != len(rewards):
            raise InvalidConfig(f"got {len(plans)} plans but {len(rewards)} rewards")
        if not all(math.isfinite(float(r)) for r in rewards):
            raise InvalidConfig(f"rewards must be finite, got {list(rewards)}")
        encoded = [self.vocabulary.encode(p) for p in plans]
        for ids, reward in zip(encoded, rewards):
            self._learn_episode(ids, float(reward))

    def update(self, plan: PruningPlan | Sequence[LayerAction], reward: float) -> None:
        """One MetaQNN update backwards along a trajectory (terminal-only reward), no storage or replay."""
        self._update(self.vocabulary.encode(plan), float(reward))

    def replay(self, n: int) -> None:
        """Replay ``n`` stored trajectories sampled uniformly (MetaQNN experience replay)."""
        for ids, reward in self.memory.sample(n, self.rng):
            self._update(ids, reward)

    def q_value(self, idx: int, prefix: Sequence[LayerAction], action: LayerAction) -> float:
        """Current Q of choosing ``action`` at layer ``idx`` after the decisions ``prefix``."""
        prev = self.vocabulary.id_of(idx - 1, prefix[idx - 1]) + 1 if idx > 0 else 0
        return float(self.policy.q[idx, prev, self.vocabulary.id_of(idx, action)])

    def _learn_episode(self, ids: tuple[int, ...], reward: float) -> None:
        self.memory.add(ids, reward)
        self._update(ids, reward)
        self.replay(self.replay_size)

    def _update(self, ids: Sequence[int], reward: float) -> None:
        q, alpha, last = self.policy.q, self.lr_schedule(self._current_progress_remaining), len(ids) - 1
        for t in range(last, -1, -1):
            prev, act = (ids[t - 1] + 1 if t else 0), ids[t]
            if t == last:
                target = reward
            else:
                target = self.gamma * float(q[t + 1, act + 1, self.vocabulary.allowed_after(t + 1, ids).ids].max())
            q[t, prev, act] += alpha * (target - q[t, prev, act])
        self._n_updates += 1

    def epsilon(self) -> float:
        """Epsilon for the next episode: the schedule at the number of unique models so far."""
        budget = self.exploration_budget or max(1, self._total_timesteps // self.vocabulary.n_layers)
        return epsilon_at(len(self.memory), budget, self.exploration_schedule)

    def learn(self: SelfTabularQLearning, total_timesteps: int, callback: MaybeCallback = None,
              log_interval: int = 4, tb_log_name: str = "TabularQLearning", reset_num_timesteps: bool = True,
              progress_bar: bool = False) -> SelfTabularQLearning:
        """Interact with the env for ``total_timesteps`` steps (layers), learning after each episode.

        ``log_interval`` is in episodes; callbacks see ``dones`` / ``infos`` / ``rewards`` in
        ``self.locals`` as with SB3's off-policy algorithms; returning False stops training.
        """
        fresh = reset_num_timesteps or self._last_obs is None
        folderless_logger(self)
        total_timesteps, callback = self._setup_learn(total_timesteps, callback, reset_num_timesteps,
                                                      tb_log_name, progress_bar)
        assert self.env is not None, "learn() needs an env (set_env)"
        if fresh or len(self._open) != self.n_envs:
            self._open = [[] for _ in range(self.n_envs)]
        callback.on_training_start(locals(), globals())
        callback.on_rollout_start()
        continue_training = True
        while continue_training and self.num_timesteps < total_timesteps:
            self.exploration_rate = self.epsilon()
            actions = self._act(self._last_obs)
            new_obs, rewards, dones, infos = self.env.step(actions)
            self.num_timesteps += self.env.num_envs
            self._record(rewards, dones, infos)
            callback.update_locals(locals())
            continue_training = callback.on_step()
            self._update_info_buffer(infos, dones)
            self._last_obs = new_obs  # type: ignore[assignment]
            self._update_current_progress_remaining(self.num_timesteps, self._total_timesteps)
            for _ in range(int(np.sum(dones))):
                self._episode_num += 1
                if log_interval and self._episode_num % log_interval == 0:
                    self.dump_logs()
        callback.on_rollout_end()
        self.dump_logs()
        callback.on_training_end()
        return self

    def _act(self, obs: Any) -> np.ndarray:
        out = np.empty((self.n_envs, len(self.vocabulary.space.nvec)), dtype=np.int64)
        for i in range(self.n_envs):
            idx, prev = int(obs["layer"][i]), int(obs["prev"][i])
            allowed = self.vocabulary.allowed(idx, obs["action_mask"][i])
            out[i] = self.decide(idx, prev, allowed, self.exploration_rate)[0]
        return out

    def _record(self, rewards: np.ndarray, dones: np.ndarray, infos: list[dict[str, Any]]) -> None:
        for i, info in enumerate(infos):
            self._open[i].append(int(info["action_id"]))
            if not dones[i]:
                continue
            ids, self._open[i] = tuple(self._open[i]), []
            if BUDGET_EXHAUSTED not in str(info.get("error") or ""):  # not evaluated: nothing to learn
                self._learn_episode(ids, float(rewards[i]))
            self.logger.record("rollout/exploration_rate", self.exploration_rate)
            self.logger.record("train/unique_models", len(self.memory))
            self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
            self.logger.record("train/learning_rate", self.lr_schedule(self._current_progress_remaining))

    def dump_logs(self) -> None:
        """Write the recorded values (``rollout/*``, ``train/*``, ``time/*``, callbacks' ``search/*``)."""
        assert self.ep_info_buffer is not None
        elapsed = max((time.time_ns() - self.start_time) / 1e9, sys.float_info.epsilon)
        self.logger.record("time/episodes", self._episode_num, exclude="tensorboard")
        if len(self.ep_info_buffer) > 0:
            self.logger.record("rollout/ep_rew_mean", safe_mean([ep["r"] for ep in self.ep_info_buffer]))
            self.logger.record("rollout/ep_len_mean", safe_mean([ep["l"] for ep in self.ep_info_buffer]))
        self.logger.record("time/fps", int((self.num_timesteps - self._num_timesteps_at_start) / elapsed))
        self.logger.record("time/total_timesteps", self.num_timesteps, exclude="tensorboard")
        self.logger.dump(step=self.num_timesteps)
