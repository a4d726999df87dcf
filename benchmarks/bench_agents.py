"""Best reward found vs true evaluations: Q-learning+BO, Q-learning, seq2seq, SB3 MLPs, random search.

Setting (fixed, documented in ``docs/benchmarks/agents.md``): zoo ``resnet20`` with randomly
initialised weights (seed 0, 22 prunable layers, no training needed), ``proxy`` accuracy +
``analytic`` latency, NPAS reward with the default budget (half the dense latency), the default
NPAS search space. Every method gets the same budget of true evaluations (``problem.n_evals``)
per seed; random search also runs ``--random-factor`` times longer to measure how many
evaluations it needs to reach the goal level.

Goal checked: "Q-learning+BO reaches within 0.5% of the best reward any method found using at
most one third of the true evaluations random search needs".

Usage::

    .venv/bin/python benchmarks/bench_agents.py --budget 100 --seeds 5
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.qbo import QBOAgent
from agents.sb3_agent import SB3Agent
from baselines import random_search
from npas_env.problem import SearchProblem, Trial
from npas_env.registration import make_zoo_env

GOAL_TOLERANCE = 0.005  # "within 0.5%" of the best reward, relative


class RandomAgent:
    """``baselines.random_search`` as a SearchAgent."""

    name = "random"

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def run(self, problem: SearchProblem, budget: int) -> Trial | None:
        return random_search.run(problem, budget, seed=self.seed)


def methods() -> dict[str, Callable[[int], Any]]:
    return {
        "qlearning_bo": lambda s: QBOAgent(use_surrogate=True, seed=s),  # default: mutation_share 0.5
        "qlearning_bo_pure": lambda s: QBOAgent(use_surrogate=True, seed=s, kwargs={"mutation_share": 0.0}),
        "qbo_no_surrogate": lambda s: QBOAgent(use_surrogate=False, seed=s, kwargs={"mutation_share": 0.0}),
        "qlearning_sb3": lambda s: SB3Agent("qlearning", seed=s),
        "seq2seq_maskable_ppo": lambda s: SB3Agent("maskable_ppo", seq2seq=True, seed=s, k_episodes=8),
        "ppo_mlp": lambda s: SB3Agent("ppo", seed=s, k_episodes=8),
        "a2c_mlp": lambda s: SB3Agent("a2c", seed=s),
        "dqn_mlp": lambda s: SB3Agent("dqn", seed=s, k_episodes=8),
        "random": RandomAgent,
    }


def best_so_far(problem: SearchProblem, length: int) -> np.ndarray:
    """Best reward after 1..length true evaluations (carried forward past the last one)."""
    rewards = np.array([t.reward for t in problem.trials], dtype=float)
    curve = np.maximum.accumulate(rewards) if len(rewards) else np.array([-math.inf])
    return np.concatenate([curve, np.full(max(length - len(curve), 0), curve[-1])])[:length]


def mean_ci(values: np.ndarray) -> tuple[float, float]:
    """Mean and 95% t-interval half-width over seeds."""
    from scipy.stats import t

    n = len(values)
    if n < 2:
        return float(values.mean()), float("nan")
    return float(values.mean()), float(t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))


def evals_to(curve: np.ndarray, level: float) -> float:
    hit = np.flatnonzero(curve >= level)
    return float(hit[0] + 1) if len(hit) else math.inf


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    env = make_zoo_env(args.model, pretrained=False, seed=0)
    curves: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, list[float]] = {}
    for name, factory in methods().items():
        budget = args.budget * (args.random_factor if name == "random" else 1)
        for seed in range(args.seeds):
            problem = SearchProblem.from_env(env)
            start = time.perf_counter()
            factory(seed).run(problem, budget)
            seconds.setdefault(name, []).append(time.perf_counter() - start)
            curves.setdefault(name, []).append(best_so_far(problem, budget))
            print(f"{name:22s} seed {seed}: best {curves[name][-1][-1]:.4f} after {problem.n_evals} evals "
                  f"({seconds[name][-1]:.1f} s)", flush=True)
    return {"curves": {k: np.stack(v) for k, v in curves.items()}, "seconds": seconds,
            "layers": len(env.layers)}


def report(results: dict[str, Any], args: argparse.Namespace, out: Path) -> str:
    curves, budget = results["curves"], args.budget
    best_any = max(float(c.max()) for c in curves.values())
    level = best_any - GOAL_TOLERANCE * abs(best_any)
    marks = sorted({max(budget // 4, 1), budget // 2, budget})
    random_budget = budget * args.random_factor
    random_level = float(np.median(curves["random"][:, -1]))
    head = "| method | " + " | ".join(f"best @ {m} evals" for m in marks) + \
        " | evals to goal level (median; reached/seeds) | evals to random's median @ " + \
        f"{random_budget} (median; reached/seeds) | wall s / run |"
    rows = [head, "|" + "---|" * (len(marks) + 4)]
    needs: dict[str, float] = {}
    for name, c in curves.items():
        cells = [("{:.4f} ± {:.4f}".format(*mean_ci(c[:, m - 1]))) for m in marks]
        for lvl in (level, random_level):
            hits = np.array([evals_to(row, lvl) for row in c])
            needs.setdefault(name, float(np.median(hits)))
            cells.append(f"{float(np.median(hits)):g} ({int(np.isfinite(hits).sum())}/{len(hits)})")
        cells.append(f"{np.mean(results['seconds'][name]):.1f}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rnd = needs["random"]
    # random never reaching the level within its budget means it needs more than random_budget
    rnd_need = rnd if math.isfinite(rnd) else float(random_budget)
    rnd_text = f"{rnd:g}" if math.isfinite(rnd) else f"> {random_budget} (not reached)"
    verdict = [f"Goal level = best reward any method found ({best_any:.4f}) minus 0.5% = {level:.4f}; "
               f"random search needs (median) {rnd_text} evaluations to reach it. Random search's "
               f"median best after {random_budget} evaluations: {random_level:.4f}."]
    for name in ("qlearning_bo", "qlearning_bo_pure"):
        qbo = needs[name]
        met = math.isfinite(qbo) and qbo <= rnd_need / 3
        verdict.append(f"- `{name}`: median evaluations to the goal level {qbo:g} -> goal "
                       f"(<= random / 3) **{'met' if met else 'not met'}**.")
    verdict = "\n".join(verdict)
    _plot(curves, out.with_suffix(".png"), level)
    text = "\n".join(rows) + "\n\n" + verdict + "\n"
    out.write_text(_header(args, results) + text)
    return text


def _header(args: argparse.Namespace, results: dict[str, Any]) -> str:
    return (f"# Agents benchmark\n\nGenerated by `benchmarks/bench_agents.py --budget {args.budget} --seeds "
            f"{args.seeds} --random-factor {args.random_factor}`. Model `{args.model}` (random init, seed 0, "
            f"{results['layers']} prunable layers), `proxy` accuracy + `analytic` latency, NPAS reward "
            f"(budget = half the dense latency), default search space. Budget: {args.budget} true "
            f"evaluations per run (random search: x{args.random_factor}), {args.seeds} seeds; "
            "mean ± 95% t-interval half-width of the best reward found so far.\n\n"
            f"![best reward vs true evaluations](agents.png)\n\n")


def _plot(curves: dict[str, np.ndarray], path: Path, level: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in curves.items():
        x = np.arange(1, c.shape[1] + 1)
        mean = c.mean(axis=0)
        half = np.array([mean_ci(c[:, i])[1] for i in range(c.shape[1])])
        ax.plot(x, mean, label=name)
        ax.fill_between(x, mean - np.nan_to_num(half), mean + np.nan_to_num(half), alpha=0.15)
    ax.axhline(level, color="k", lw=0.8, ls="--", label="goal level")
    ax.set(xlabel="true evaluations", ylabel="best reward found", xscale="log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--random-factor", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/agents.md"))
    args = parser.parse_args()
    results = run_all(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out.with_suffix(".npz"), **results["curves"])
    print(report(results, args, args.out))
    print(json.dumps({k: float(np.mean(v)) for k, v in results["seconds"].items()}))


if __name__ == "__main__":
    main()
