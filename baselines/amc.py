"""AMC-style baseline (He et al., ECCV 2018): a continuous-action agent picks filter-pruning rates.

A small Gymnasium env walks the layers like AMC: the observation is the layer descriptor plus the
running state (``ObservationEncoder``, 18 features), the action is one number in [0, 1] (how hard
to prune), mapped to the nearest compression rate of the search space (0 = dense, 1 = the largest
rate). Only filter pruning is used; where the mask forbids it (depthwise, layers coupled to a
fixed input) the layer stays dense, and a coupled group follows its first member's rate. The
episode reward is the problem's reward of the whole plan (0 at intermediate steps), so the agent is
trained with Stable-Baselines3 DDPG or TD3 until the budget of true evaluations is spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from baselines.base import Decided, EvalBudget, best_trial, fallback_action, is_allowed
from npas_env.observation import ObservationEncoder
from npas_env.plan import LayerAction, Scheme
from npas_env.problem import SearchProblem, Trial


@dataclass
class AMCSettings:
    """Settings of :func:`run`."""

    algorithm: str = "td3"
    """Stable-Baselines3 algorithm: "td3" or "ddpg"."""
    warmup_episodes: int = 5
    """Episodes of random actions before learning starts (AMC: 100; budgets here are small)."""
    noise_sigma: float = 0.3
    """Std of the Gaussian exploration noise on the [0, 1] action."""
    learning_rate: float = 1e-3
    """Actor and critic learning rate."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layers of actor and critic."""
    max_episodes: int | None = None
    """Stop after this many episodes even if budget is left (None: 50 x budget + 100)."""


class FilterRateEnv(gym.Env):
    """One step per layer; Box(0, 1, (1,)) action -> filter-pruning rate; plan reward at the end."""

    metadata = {"render_modes": []}

    def __init__(self, problem: SearchProblem, counter: EvalBudget) -> None:
        super().__init__()
        self.problem, self.counter = problem, counter
        self.rates = sorted(problem.space.rates)
        self.encoder = ObservationEncoder(problem.layers, problem.space)
        ref = problem.scorer.reference_ms
        self.budget_fraction = problem.scorer.budget_ms / ref if ref == ref and ref > 0 else 1.0
        low, high = self.encoder.bounds()
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Box(0.0, 1.0, (1,), dtype=np.float32)
        self.decided: Decided = []
        self.kept_macs = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.decided, self.kept_macs = [], 0.0
        return self._observe(), {}

    def step(self, action: np.ndarray):
        spec = self.problem.layers[len(self.decided)]
        value = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))
        rate = self.rates[int(round(value * (len(self.rates) - 1)))]
        chosen = LayerAction(Scheme.FILTER, rate) if rate > 1.0 else LayerAction()
        if not is_allowed(self.problem.space, spec, self.decided, chosen):
            chosen = fallback_action(self.problem.space, spec, self.decided)
        self.kept_macs += self.encoder.kept_macs(spec.index, chosen)
        self.decided.append((spec, chosen))
        if len(self.decided) < len(self.problem.layers):
            return self._observe(), 0.0, False, False, {}
        score = self.counter.evaluate_one(self.problem.make_plan([a for _, a in self.decided]))
        reward = 0.0 if score is None else float(score.reward)
        return self._observe(), reward, True, False, {"evaluated": score is not None}

    def _observe(self) -> np.ndarray:
        prev = self.decided[-1][1] if self.decided else None
        return self.encoder.encode(len(self.decided), self.kept_macs, prev, self.budget_fraction)


def run(problem: SearchProblem, budget: int, seed: int = 0, settings: AMCSettings | None = None) -> Trial | None:
    """Train a DDPG/TD3 agent on :class:`FilterRateEnv` until ``budget`` evaluations are spent.

    Args:
        problem: the search problem.
        budget: true evaluations this run may spend.
        seed: seeds the agent (and its exploration noise).
        settings: see :class:`AMCSettings`.

    Returns:
        The best trial of this run, or None if nothing was evaluated.
    """
    from stable_baselines3 import DDPG, TD3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.noise import NormalActionNoise

    from agents.base import folderless_logger

    cfg = settings or AMCSettings()
    algorithms = {"td3": TD3, "ddpg": DDPG}
    if cfg.algorithm not in algorithms:
        raise ValueError(f"AMC algorithm must be one of {sorted(algorithms)}, got {cfg.algorithm!r}")
    start = problem.n_evals
    max_episodes = cfg.max_episodes or 50 * budget + 100
    counter = EvalBudget(problem, budget, max_episodes)
    env = FilterRateEnv(problem, counter)
    n_layers = len(problem.layers)

    class StopWhenSpent(BaseCallback):
        def _on_step(self) -> bool:
            return counter.left > 0

    model = algorithms[cfg.algorithm](
        "MlpPolicy", env, learning_rate=cfg.learning_rate, buffer_size=10_000,
        learning_starts=cfg.warmup_episodes * n_layers, batch_size=64, train_freq=(1, "episode"),
        gradient_steps=-1, action_noise=NormalActionNoise(np.zeros(1), np.full(1, cfg.noise_sigma)),
        policy_kwargs={"net_arch": list(cfg.net_arch)}, seed=seed, device="cpu", verbose=0)
    folderless_logger(model)
    model.learn(total_timesteps=max_episodes * n_layers, callback=StopWhenSpent())
    return best_trial(problem, start)
