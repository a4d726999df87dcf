"""``npas demo``: one full episode of the default env with a random masked policy."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from npas_env.errors import EvaluatorNotFound
from npas_env.search_space import sample_masked_action

if TYPE_CHECKING:
    from npas_env.env import NPASEnv
    from npas_env.tabular import TabularNPASEnv


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="one episode of npas/NPAS-v0 with a random masked policy")
    p.add_argument("--env", default="npas/NPAS-v0", help="registered env id")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import npas_env  # noqa: F401  (registers the ids)

    if args.env not in gym.registry:  # gym.make would raise a raw gymnasium error
        known = [k for k in gym.registry if k.startswith("npas/")]
        raise EvaluatorNotFound(args.env, kind="env id", known=known)
    # every npas id builds one of these two; both act in MultiDiscrete(search_space.nvec)
    env = cast("NPASEnv | TabularNPASEnv", gym.make(args.env, render_mode="ansi").unwrapped)
    nvec = cast(spaces.MultiDiscrete, env.action_space).nvec
    rng = np.random.default_rng(args.seed)
    env.reset(seed=args.seed)
    done, reward = False, 0.0
    while not done:
        action = sample_masked_action(nvec, env.action_masks(), rng)
        _, reward, done, _, info = env.step(action)
    print(env.render())
    print(f"reward = {reward:.4f}  (accuracy {info['accuracy']}, latency {info['latency_ms']} ms, "
          f"budget {info['budget_ms']:.4f} ms)")
    return 0
