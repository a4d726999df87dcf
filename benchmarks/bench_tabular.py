"""Env steps per second of the tabular env (goal: >= 20,000 on one core).

Actions are pre-generated (random, mask-respecting) so only the env is timed; a warm-up runs
first, then whole episodes are stepped until ``--steps`` steps. Writes ``docs/benchmarks/tabular.md``.

    python benchmarks/bench_tabular.py --steps 200000
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from npas_env.io import atomic_write_text
from npas_env.search_space import sample_masked_action
from npas_env.tabular import TabularNPASEnv


def pregenerate(env: TabularNPASEnv, episodes: int, seed: int = 0) -> list[list[np.ndarray]]:
    """Mask-respecting random actions, one list per episode."""
    rng = np.random.default_rng(seed)
    nvec = env.action_space.nvec
    return [[sample_masked_action(nvec, env._masks[i], rng) for i in range(len(env.layers))]
            for _ in range(episodes)]


def steps_per_second(env, episodes: list[list[np.ndarray]], steps: int) -> tuple[float, int]:
    """Step whole episodes (cycling through ``episodes``) until ``steps``; (steps/s, steps)."""
    done, start, k = 0, time.perf_counter(), 0
    while done < steps:
        env.reset()
        for action in episodes[k % len(episodes)]:
            env.step(action)
        done += len(episodes[k % len(episodes)])
        k += 1
    return done / (time.perf_counter() - start), done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--table", default="small_cnn_digits")
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks/tabular.md"))
    args = p.parse_args(argv)
    import gymnasium as gym

    from npas_env.tabular import register_tabular_envs

    env = TabularNPASEnv(args.table)
    episodes = pregenerate(env, 1000)
    steps_per_second(env, episodes, 5_000)  # warm-up
    raw = [steps_per_second(env, episodes, args.steps)[0] for _ in range(args.repeats)]
    register_tabular_envs()
    wrapped_env = gym.make("npas/TabularSmallCNN-v0") if args.table == "small_cnn_digits" else None
    wrapped = steps_per_second(wrapped_env, episodes, args.steps)[0] if wrapped_env else float("nan")
    meta = env.table.metadata
    lines = [
        "# Tabular env throughput", "",
        f"`python benchmarks/bench_tabular.py --steps {args.steps}` on {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, one process (machine shared with other jobs).", "",
        f"Table `{args.table}`: model {meta.get('model')}, {len(env.layers)} layers, "
        f"{meta.get('entries')} entries; accuracy `{meta.get('accuracy', {}).get('name')}`, latency "
        f"`{meta.get('latency', {}).get('name')}`. {meta.get('note', '')}", "",
        "Random mask-respecting actions pre-generated (1000 episodes), 5,000 warm-up steps, then "
        f"{args.steps:,} steps of whole episodes, repeated {args.repeats} times.", "",
        "| env | steps/s (median) | steps/s (min..max) |", "|---|---|---|",
        f"| `TabularNPASEnv` (raw) | {np.median(raw):,.0f} | {min(raw):,.0f}..{max(raw):,.0f} |",
        f"| `gym.make(\"npas/TabularSmallCNN-v0\")` (checker + order wrappers) | {wrapped:,.0f} | - |", "",
        f"Goal >= 20,000 steps/s: {'met' if np.median(raw) >= 20_000 else 'NOT met'}.", ""]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
