"""SB3 algorithms as :class:`~agents.base.SearchAgent` s, charged per finished episode.

:class:`SB3Agent` rebuilds an env over the problem's model (:func:`~agents.base.make_problem_env`),
so every finished episode is one true evaluation of ``problem`` (repeats are free), and stops
training when the budget is spent. DQN needs a ``Discrete`` action: :class:`FlatDiscreteAction`
flattens the ``MultiDiscrete`` product (masked choices are repaired by the env).
``algo="qlearning"`` is :class:`~agents.tabular_q.TabularQLearning` (MetaQNN tabular Q-learning,
masked), its epsilon schedule scaled to the budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, DQN, PPO

from agents.base import BudgetCallback, check_budget, folderless_logger, make_problem_env
from agents.seq2seq import count_layers, make_reinforce
from agents.sequence_wrapper import SequenceObservation
from agents.tabular_q import TabularQLearning
from npas_env.errors import InvalidConfig
from npas_env.problem import SearchProblem, Trial

ALGOS: dict[str, Any] = {"ppo": PPO, "a2c": A2C, "dqn": DQN, "maskable_ppo": MaskablePPO,
                         "qlearning": TabularQLearning}


class FlatDiscreteAction(gym.ActionWrapper):
    """``Discrete(prod(nvec))`` view of a ``MultiDiscrete`` env (row-major index order)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._nvec = np.asarray(cast(spaces.MultiDiscrete, env.action_space).nvec, dtype=np.int64)
        self.action_space = spaces.Discrete(int(np.prod(self._nvec)))

    def action(self, action: Any) -> np.ndarray:
        return np.array(np.unravel_index(int(action), tuple(self._nvec)), dtype=np.int64)


@dataclass
class SB3Agent:
    """An SB3 algorithm searching through the env, budgeted in true evaluations.

    Attributes:
        algo: ``"ppo"``, ``"a2c"``, ``"dqn"``, ``"maskable_ppo"`` or ``"qlearning"``.
        seq2seq: True = the TODAES seq2seq controller (:func:`~agents.seq2seq.make_reinforce`
            on a :class:`SequenceObservation` env); False = SB3's ``MlpPolicy`` on the flat env
            (``qlearning``: its tabular policy).
        seed: seed of the algorithm.
        k_episodes: episodes per update for ``seq2seq`` (and ``n_steps = k * layers`` for MLP
            PPO / MaskablePPO, whose default 2048 steps would never update on a small budget).
        algo_kwargs: extra constructor arguments (``tensorboard_log``, ``learning_rate``...).
    """

    algo: str = "ppo"
    seq2seq: bool = False
    seed: int = 0
    k_episodes: int = 8
    algo_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        if self.algo == "qlearning":
            return "qlearning_tabular"
        return f"seq2seq_{self.algo}" if self.seq2seq else f"{self.algo}_mlp"

    def run(self, problem: SearchProblem, budget: int) -> Trial | None:
        """Train until ``budget`` new true evaluations are spent; the best trial of this run."""
        if self.algo not in ALGOS:
            raise InvalidConfig(f"algo must be one of {sorted(ALGOS)}, got {self.algo!r}")
        limit = check_budget(problem, budget)
        start = problem.n_evals
        env = make_problem_env(problem, limit)
        model = self.build(env, budget)
        layers = len(env.layers)
        folderless_logger(model)
        # Repeated plans are free, so cap the episodes like the baselines cap proposals.
        model.learn(total_timesteps=(50 * budget + 100) * layers, callback=BudgetCallback(problem, limit))
        return max(problem.trials[start:], key=lambda t: t.reward, default=None)

    def build(self, env: gym.Env, budget: int | None = None) -> Any:
        """The SB3 model for ``env`` (wrapped as the algorithm needs); ``budget`` scales Q-learning's epsilon."""
        kwargs: dict[str, Any] = {"seed": self.seed, "verbose": 0, **self.algo_kwargs}
        if self.seq2seq and self.algo in ("dqn", "qlearning"):
            raise InvalidConfig("the seq2seq controller is a policy-gradient method: use a2c, ppo or maskable_ppo")
        if self.algo == "qlearning":
            return TabularQLearning("TabularQPolicy", env, **{"exploration_budget": budget, **kwargs})
        if self.seq2seq:
            return make_reinforce(SequenceObservation(env), self.k_episodes, self.algo, **kwargs)  # type: ignore[arg-type]
        n_steps = self.k_episodes * count_layers(env)
        if self.algo in ("ppo", "maskable_ppo"):
            kwargs = {"n_steps": n_steps, "batch_size": n_steps, **kwargs}
        if self.algo == "dqn":
            env = FlatDiscreteAction(env)
            kwargs = {"learning_starts": n_steps, "target_update_interval": n_steps, **kwargs}
        return ALGOS[self.algo]("MlpPolicy", env, **kwargs)
