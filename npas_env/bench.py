"""Benchmark harness: every search method under the same budget of true evaluations.

``run_benchmark(["random", "uniform", "bo"], seeds=5, budget=100, model="small_cnn")`` runs each
(method, seed) on a fresh :class:`SearchProblem` over one env (cached repeats are free, new plans
cost one evaluation) and writes to ``out_dir``:

* ``runs/<method>-seed<k>.json``: one finished run (written atomically as soon as it ends; a
  killed benchmark resumes from these and never redoes a finished run with the same settings);
* ``results.json``: all runs with all their trials, plus the summary;
* ``results.md``: mean best reward with 95 % t-confidence intervals at several evaluation counts;
* ``best_reward.png``: best reward so far versus true evaluations (mean and CI band).

Methods are resolved by name among the baselines (``baselines.registry``) and, when present,
the agents (``agents.registry``).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluators.pool import maybe_pooled
from npas_env.errors import EvaluatorNotFound, InvalidConfig
from npas_env.io import atomic_write_text
from npas_env.problem import SearchProblem, Trial

RUN_FORMAT = "npas-bench-run/1"
RESULTS_FORMAT = "npas-bench/1"


def method_names() -> list[str]:
    """Names of every runnable method: baselines and (if installed) agents."""
    from baselines.registry import baseline_names

    names = set(baseline_names())
    agents = _agents_registry()
    if agents is not None:
        names.update(_call_first(agents, ("agent_names", "names", "list_agents")) or [])
    return sorted(names)


def make_method(name: str, seed: int, **kwargs: Any) -> Any:
    """A search method (``name`` + ``run(problem, budget)``) by registered name.

    Raises:
        EvaluatorNotFound: unknown name, with a did-you-mean suggestion.
    """
    from baselines.registry import baseline_names, make_baseline

    if name in baseline_names():
        return make_baseline(name, seed=seed, **kwargs)
    agents = _agents_registry()
    if agents is not None and hasattr(agents, "make_agent") and name in method_names():
        return agents.make_agent(name, seed=seed, **kwargs)

    known = method_names()
    raise EvaluatorNotFound(name, kind="search method", known=known)


def trial_to_dict(trial: Trial) -> dict[str, Any]:
    """JSON form of one trial."""
    return {"n_evals": trial.n_evals, "reward": trial.reward, "accuracy": trial.accuracy,
            "latency_ms": trial.latency_ms, "error": trial.error, "seconds": trial.seconds,
            "plan": trial.plan.to_dict()}


def run_one(method_name: str, seed: int, budget: int, env: Any,
            method_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run one method with one seed on a fresh problem over ``env``; the run record.

    A method that raises is recorded with ``error`` set (its trials so far are kept).
    """
    problem = SearchProblem.from_env(env, budget)
    method = make_method(method_name, seed, **(method_kwargs or {}))
    start, error = time.perf_counter(), None
    try:
        method.run(problem, budget)
    except Exception as exc:  # a failing method is a result, not the end of the benchmark
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
    best = problem.best
    return {"format": RUN_FORMAT, "method": method_name, "seed": seed, "budget": budget,
            "n_evals": problem.n_evals, "best_reward": best.reward if best else None,
            "seconds": time.perf_counter() - start, "error": error,
            "trials": [trial_to_dict(t) for t in problem.trials]}


def run_benchmark(agents: Sequence[str], seeds: int | Sequence[int], budget: int, *,
                  env_factory: Callable[[], Any] | None = None, model: str = "small_cnn",
                  dataset: str = "digits", accuracy: str = "proxy", latency: str = "analytic",
                  env_kwargs: dict[str, Any] | None = None,
                  agent_kwargs: dict[str, dict[str, Any]] | None = None,
                  out_dir: str | Path = "bench", resume: bool = True,
                  checkpoints: Sequence[int] | None = None,
                  progress: Callable[[str], None] | None = None, workers: int = 1,
                  ray_address: str | None = None, eval_timeout_s: float = 900.0) -> dict[str, Any]:
    """Run every method for every seed under ``budget`` true evaluations; write the reports.

    Args:
        agents: method names (baselines and agents), e.g. ``["random", "uniform"]``.
        seeds: number of seeds (0..n-1) or the seeds themselves.
        budget: true evaluations per run.
        env_factory: zero-argument callable returning the env to search (an :class:`NPASEnv`);
            None builds ``make_zoo_env(model, dataset, accuracy=..., latency=...)``.
        model, dataset, accuracy, latency: the default env (ignored with ``env_factory``).
        env_kwargs: extra env arguments for the default env (reward, latency_budget_ms, ...).
        agent_kwargs: method name -> settings overrides.
        out_dir: output directory (created).
        resume: reuse finished runs found in ``out_dir/runs`` with the same settings.
        checkpoints: evaluation counts of the table columns (default: 1/4, 1/2, 3/4, all).
        progress: called with a one-line message after each run (e.g. ``print``).
        workers, ray_address, eval_timeout_s: run accuracy evaluations in an evaluation pool
            of ``workers`` local processes or Ray actors (``evaluators.pool``; same results,
            so not part of the resume key); 1 and no address: in this process.

    Returns:
        The ``results.json`` content.

    Raises:
        InvalidConfig: bad budget or seeds; EvaluatorNotFound: unknown method name.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise InvalidConfig(f"budget must be a positive number of true evaluations, got {budget!r}")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list or not agents:
        raise InvalidConfig("need at least one method and one seed")
    for name in agents:
        make_method(name, 0, **(agent_kwargs or {}).get(name, {}))  # fail fast on bad names
    out = Path(out_dir)
    env_desc = ({"env_factory": getattr(env_factory, "__qualname__", repr(env_factory))} if env_factory
                else {"model": model, "dataset": dataset, "accuracy": accuracy, "latency": latency,
                      "env_kwargs": _jsonable(env_kwargs or {})})
    env: Any = None
    runs: list[dict[str, Any]] = []
    pool = {"workers": workers, "ray_address": ray_address, "timeout_s": eval_timeout_s}
    try:
        for name in agents:
            settings = _jsonable((agent_kwargs or {}).get(name, {}))
            for seed in seed_list:
                path = out / "runs" / f"{name}-seed{seed}.json"
                run = _load_run(path, budget, env_desc, settings) if resume else None
                if run is None:
                    if env is None:
                        env = env_factory() if env_factory else _default_env(
                            model, dataset, accuracy, latency, env_kwargs or {})
                        scorer = env.unwrapped.scorer
                        scorer.accuracy = maybe_pooled(scorer.accuracy, "accuracy", **pool)
                    run = run_one(name, seed, budget, env, (agent_kwargs or {}).get(name))
                    run.update(env=env_desc, settings=settings)
                    atomic_write_text(path, json.dumps(run, indent=1))
                runs.append(run)
                if progress:
                    progress(f"{name} seed {seed}: best {run['best_reward']} after "
                             f"{run['n_evals']} evals" + (" (error)" if run["error"] else ""))
    finally:
        if env is not None and callable(getattr(env.unwrapped.scorer.accuracy, "close", None)):
            env.unwrapped.scorer.accuracy.close()
    return write_reports(out, runs, list(agents), budget, env_desc, checkpoints)


def write_reports(out: Path, runs: list[dict[str, Any]], methods: list[str], budget: int,
                  env_desc: dict[str, Any], checkpoints: Sequence[int] | None = None) -> dict[str, Any]:
    """Write results.json, results.md and best_reward.png from run records; the results dict."""
    points = sorted({int(c) for c in (checkpoints or _default_checkpoints(budget)) if 1 <= c <= budget})
    summary = summarize(runs, methods, budget, points)
    results = {"format": RESULTS_FORMAT, "budget": budget, "env": env_desc, "methods": methods,
               "checkpoints": points, "summary": summary, "runs": runs}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    write_markdown(out / "results.md", summary, methods, points, budget, env_desc)
    write_plot(out / "best_reward.png", {m: curves(runs, m, budget) for m in methods}, budget)
    return results


def _default_checkpoints(budget: int) -> list[int]:
    return sorted({max(1, budget // 4), max(1, budget // 2), max(1, 3 * budget // 4), budget})


def _default_env(model: str, dataset: str, accuracy: str, latency: str, env_kwargs: dict[str, Any]) -> Any:
    import npas_env.tabular  # noqa: F401  (registers the "tabular" evaluators)
    from npas_env.registration import make_zoo_env

    return make_zoo_env(model, dataset, accuracy=accuracy, latency=latency, **env_kwargs)


def _load_run(path: Path, budget: int, env_desc: dict[str, Any], settings: Any) -> dict[str, Any] | None:
    """A finished run from disk if it matches these settings (and did not fail), else None."""
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = (run.get("format") == RUN_FORMAT and run.get("budget") == budget
            and run.get("env") == env_desc and run.get("settings") == settings)
    return run if same and not run.get("error") else None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: getattr(v, "__qualname__", repr(v))))


def _agents_registry() -> Any:
    try:
        import importlib

        return importlib.import_module("agents.registry")
    except ModuleNotFoundError:
        return None


def _call_first(module: Any, names: Sequence[str]) -> Any:
    for name in names:
        if callable(getattr(module, name, None)):
            return getattr(module, name)()
    return None


# ---------------------------------------------------------------------------------------- CLI
def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` sub-command to an ``argparse`` subparsers object; handler in ``func``."""
    p = subparsers.add_parser("bench", help="benchmark search methods under one evaluation budget")
    p.add_argument("--agents", required=True, help="comma-separated method names (baselines, agents)")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds per method")
    p.add_argument("--budget", type=int, required=True, help="true evaluations per run")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--accuracy", default="proxy")
    p.add_argument("--latency", default="analytic")
    p.add_argument("--latency-budget-ms", type=float, default=None)
    p.add_argument("--out", default="bench", help="output directory")
    p.add_argument("--no-resume", action="store_true", help="redo runs found in --out")
    p.add_argument("--workers", type=int, default=1,
                   help="run accuracy evaluations in this many worker processes (default 1: in "
                        "this process)")
    p.add_argument("--ray-address", default=None,
                   help="run the workers as Ray actors on this cluster (see npas search --help)")
    p.add_argument("--eval-timeout", type=float, default=900.0,
                   help="seconds per accuracy evaluation in a worker (default %(default)s)")
    p.set_defaults(func=bench_command)
    return p


def bench_command(args: argparse.Namespace) -> int:
    """Handler of ``npas bench``; prints the markdown table, returns the exit code."""
    env_kwargs = {} if args.latency_budget_ms is None else {"latency_budget_ms": args.latency_budget_ms}
    run_benchmark([a.strip() for a in args.agents.split(",") if a.strip()], args.seeds, args.budget,
                  model=args.model, dataset=args.dataset, accuracy=args.accuracy,
                  latency=args.latency, env_kwargs=env_kwargs, out_dir=args.out,
                  resume=not args.no_resume, progress=print, workers=args.workers,
                  ray_address=args.ray_address, eval_timeout_s=args.eval_timeout)
    print((Path(args.out) / "results.md").read_text())
    return 0


# ------------------------------------------------------------------------------------ reports
def best_so_far(trials: Sequence[dict[str, Any]], budget: int) -> np.ndarray:
    """Best reward after 1..budget evaluations (NaN before the first; flat after the last)."""
    curve = np.full(budget, np.nan)
    best = -np.inf
    for t in sorted(trials, key=lambda t: t["n_evals"]):
        if 1 <= t["n_evals"] <= budget:
            best = max(best, float(t["reward"]))
            curve[t["n_evals"] - 1:] = best
    return curve


def curves(runs: Sequence[dict[str, Any]], method: str, budget: int) -> np.ndarray:
    """Best-so-far curves of ``method``'s runs, shape (runs, budget)."""
    rows = [best_so_far(r["trials"], budget) for r in runs if r["method"] == method]
    return np.array(rows) if rows else np.full((0, budget), np.nan)


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean, t-distribution CI half-width (NaN for n < 2) and n of the finite ``values``."""
    from scipy import stats

    finite = values[np.isfinite(values)]
    n = len(finite)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = float(finite.mean())
    if n < 2:
        return mean, float("nan"), 1
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * finite.std(ddof=1) / np.sqrt(n))
    return mean, half, n


def summarize(runs: Sequence[dict[str, Any]], methods: Sequence[str], budget: int,
              checkpoints: Sequence[int]) -> dict[str, Any]:
    """Per method: mean best reward and 95 % CI at each checkpoint, evals used, wall time."""
    summary: dict[str, Any] = {}
    for m in methods:
        mine = [r for r in runs if r["method"] == m]
        table = curves(runs, m, budget)
        points = {}
        for c in checkpoints:
            mean, ci, n = mean_ci(table[:, c - 1])
            points[str(c)] = {"mean": mean, "ci95": ci, "n": n}
        summary[m] = {"runs": len(mine), "errors": sum(bool(r["error"]) for r in mine),
                      "mean_evals": float(np.mean([r["n_evals"] for r in mine])) if mine else 0.0,
                      "mean_seconds": float(np.mean([r["seconds"] for r in mine])) if mine else 0.0,
                      "best_reward": points}
    return summary


def _cell(point: dict[str, Any]) -> str:
    if not np.isfinite(point["mean"]):
        return "-"
    ci = f" ± {point['ci95']:.4f}" if np.isfinite(point["ci95"]) else ""
    return f"{point['mean']:.4f}{ci}"


def write_markdown(path: Path, summary: dict[str, Any], methods: Sequence[str],
                   checkpoints: Sequence[int], budget: int, env_desc: dict[str, Any]) -> None:
    """The summary as a markdown table (mean best reward ± 95 % CI half-width)."""
    head = "| method | runs | " + " | ".join(f"best @ {c}" for c in checkpoints) + " | evals used | s/run |"
    rows = [f"# Benchmark: best reward vs true evaluations (budget {budget})", "",
            f"Env: `{json.dumps(env_desc)}`. Cells: mean best reward so far ± 95 % CI half-width "
            "(t-distribution over seeds); '-' = no evaluation yet.", "", head,
            "|" + "---|" * (len(checkpoints) + 4)]
    for m in methods:
        s = summary[m]
        cells = " | ".join(_cell(s["best_reward"][str(c)]) for c in checkpoints)
        err = f" ({s['errors']} failed)" if s["errors"] else ""
        rows.append(f"| {m} | {s['runs']}{err} | {cells} | {s['mean_evals']:.1f} | {s['mean_seconds']:.1f} |")
    atomic_write_text(path, "\n".join(rows) + "\n")


def write_plot(path: Path, tables: dict[str, np.ndarray], budget: int) -> None:
    """PNG of mean best reward vs evaluations with a 95 % CI band per method (Agg backend)."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(1, budget + 1)
    for name, table in tables.items():
        stats = [mean_ci(table[:, i]) if len(table) else (np.nan, np.nan, 0) for i in range(budget)]
        mean = np.array([s[0] for s in stats])
        half = np.nan_to_num(np.array([s[1] for s in stats]))
        (line,) = ax.plot(x, mean, label=name)
        ax.fill_between(x, mean - half, mean + half, alpha=0.2, color=line.get_color())
    ax.set_xlabel("true evaluations")
    ax.set_ylabel("best reward so far")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    from npas_env.io import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue())
