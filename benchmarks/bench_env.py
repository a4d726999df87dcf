"""Env steps per second with the cheap evaluators (goal: >= 20,000 on one core).

Run: ``python -m benchmarks.bench_env [--episodes N]``. Actions are pre-generated (the agent's
cost is not the env's), the process is pinned to one core, and the first pass (which fills the
evaluators' per-(layer, action) memo) is reported separately from the steady state.
"""

from __future__ import annotations

import argparse
import os
import time

import gymnasium as gym
import numpy as np
import torch

import npas_env  # noqa: F401  (registers the ids)
from benchmarks.machine import machine_summary, write_report
from npas_env.search_space import sample_masked_action


def _episodes(env: gym.Env, actions: list[np.ndarray], episodes: int) -> tuple[int, float]:
    steps, k = 0, 0
    start = time.perf_counter()
    for _ in range(episodes):
        env.reset()
        done = False
        while not done:
            _, _, done, _, _ = env.step(actions[k % len(actions)])
            k += 1
            steps += 1
    return steps, time.perf_counter() - start


def measure(env_id: str, episodes: int) -> dict[str, float]:
    env = gym.make(env_id).unwrapped
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    actions = []
    for _ in range(2000):  # masked random actions, regenerated per layer position
        actions.append(sample_masked_action(env.action_space.nvec, env.action_masks(), rng))
        _, _, done, _, _ = env.step(actions[-1])
        if done:
            env.reset()
    cold_steps, cold_s = _episodes(env, actions, episodes)
    warm_steps, warm_s = _episodes(env, actions, episodes)
    return {"layers": len(env.layers), "cold": cold_steps / cold_s, "steady": warm_steps / warm_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--episodes", type=int, default=2000)
    parser.add_argument("--envs", default="npas/NPAS-v0,npas/PruneResNet20-v0")
    args = parser.parse_args()
    machine = machine_summary()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    rows = ["| env | layers | first pass steps/s | steady steps/s | goal 20,000 |", "|---|---|---|---|---|"]
    for env_id in args.envs.split(","):
        r = measure(env_id, args.episodes)
        rows.append(f"| {env_id} | {r['layers']:.0f} | {r['cold']:,.0f} | {r['steady']:,.0f} | "
                    f"{'met' if r['steady'] >= 20000 else 'missed'} |")
    text = "\n".join([
        "# Env step throughput (cheap evaluators: proxy + analytic)", "",
        f"Machine: {machine}. One core (affinity pinned), {args.episodes} episodes per pass,",
        "pre-generated masked random actions. Command: `python -m benchmarks.bench_env`.", "", *rows, ""])
    print(text)
    write_report("env", text)


if __name__ == "__main__":
    main()
