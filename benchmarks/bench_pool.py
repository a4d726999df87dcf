"""Evaluation-pool throughput: true one-shot accuracy evaluations per minute.

Run: ``python -m benchmarks.bench_pool [--quick]``. The same batch of distinct random plans of
ResNet-20 on digits (2-epoch one-shot accuracy, the ``npas search`` evaluator) is evaluated by:

* the local pool with 1 worker (torch threads = cores, what ``--workers 1`` gives a pool) and
  with 1 worker at 1 thread (pure process scaling reference);
* the local pool with 2 workers (1 thread each);
* the Ray pool on a 2-node Ray cluster simulated on this machine
  (``ray.cluster_utils.Cluster``, two nodes of 1 CPU, one 1-CPU actor on each).

Workers are started and each has evaluated one warm-up plan (dataset load, pattern set) before
the clock starts, so the figure is steady-state throughput. The scaling ratio is evals/min over
the 1-worker row's; the goal is >= 1.8x with 2 workers on 2 cores. Every row also says whether
its accuracies equal the 2-worker local row's (same results whichever backend).
``--quick``: small CNN, 1 epoch, 6 plans. Writes ``docs/benchmarks/pool.md``; on a shared CPU the
load average (printed before and after) makes the figures lower bounds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import npas_env  # noqa: F401  (import order: package before evaluators)
from benchmarks.bench_accuracy import make_context, random_plans
from benchmarks.machine import machine_summary, write_report
from evaluators.accuracy.oneshot import OneShotAccuracy
from evaluators.context import ModelContext
from evaluators.pool import EvaluationPool
from npas_env.plan import PruningPlan


def log(msg: str) -> None:
    print(f"[bench_pool {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_average() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def measure(pool: Any, ctx: ModelContext, warmup: list[PruningPlan],
            plans: list[PruningPlan]) -> tuple[float, list[float | None]]:
    """Seconds for ``plans`` once every worker has evaluated a warm-up plan; the accuracies."""
    pool.run(ctx, warmup)
    start = time.perf_counter()
    results = pool.run(ctx, plans)
    seconds = time.perf_counter() - start
    failed = [r.error for r in results if not r.ok]
    if failed:
        log(f"  {len(failed)} failed evaluations, e.g. {failed[0]}")
    return seconds, [r.accuracy for r in results]


def local_run(workers: int, threads: int | None) -> Callable[..., tuple[float, list[float | None]]]:
    def run(evaluator: Any, ctx: ModelContext, warmup: list[PruningPlan],
            plans: list[PruningPlan]) -> tuple[float, list[float | None]]:
        with EvaluationPool(evaluator, "accuracy", workers=workers, timeout_s=3600,
                            threads=threads) as pool:
            return measure(pool, ctx, warmup[:workers], plans)

    return run


def ray_cluster_run(evaluator: Any, ctx: ModelContext, warmup: list[PruningPlan],
                    plans: list[PruningPlan]) -> tuple[float, list[float | None]]:
    """Two simulated Ray nodes of 1 CPU each, one actor per node."""
    import ray
    from ray.cluster_utils import Cluster

    from evaluators.ray_pool import RayEvaluationPool

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        log(f"  Ray cluster up: {len(ray.nodes())} nodes, {ray.cluster_resources().get('CPU')} CPUs")
        with RayEvaluationPool(evaluator, "accuracy", workers=2, timeout_s=3600) as pool:
            return measure(pool, ctx, warmup[:2], plans)
    finally:
        ray.shutdown()
        cluster.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small CNN, 1 epoch, 6 plans")
    parser.add_argument("--model", default=None, help="zoo model (default resnet20; quick: small_cnn)")
    parser.add_argument("--plans", type=int, default=None, help="plans per row (default 12)")
    parser.add_argument("--epochs", type=int, default=None, help="one-shot epochs (default 2)")
    parser.add_argument("--skip-ray", action="store_true", help="only the local pool rows")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks")
    args = parser.parse_args(argv)
    model = args.model or ("small_cnn" if args.quick else "resnet20")
    n_plans = args.plans or (6 if args.quick else 12)
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 2)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    log(f"loading pretrained {model} (trains on first use)")
    ctx = make_context(model)
    everything = random_plans(ctx, n_plans + 2, seed=3)
    warmup, plans = everything[:2], everything[2:]
    evaluator = OneShotAccuracy("digits", epochs=epochs, seed=0)
    rows: list[tuple[str, int, int, Callable[..., Any]]] = [
        ("local pool", 1, cores, local_run(1, None)), ("local pool", 1, 1, local_run(1, 1)),
        ("local pool", 2, max(1, cores // 2), local_run(2, None))]
    if not args.skip_ray:
        rows.append(("Ray, 2 simulated nodes x 1 CPU", 2, 1, ray_cluster_run))
    load_before, measured = load_average(), []
    for label, workers, threads, run in rows:
        log(f"{label}: {workers} worker(s) x {threads} thread(s), {len(plans)} plans")
        seconds, accuracies = run(evaluator, ctx, warmup, plans)
        measured.append((label, workers, threads, seconds, accuracies))
        log(f"  {seconds:.1f} s, {60 * len(plans) / seconds:.2f} evals/min (load {load_average()})")
    text = render(args, model, epochs, plans, measured, load_before, load_average())
    print(text)
    if not args.no_write:
        log(f"wrote {write_report('pool', text)}")


def render(args: argparse.Namespace, model: str, epochs: int, plans: list[PruningPlan],
           measured: list[tuple[str, int, int, float, list[float | None]]], load_before: str,
           load_after: str) -> str:
    base = 60 * len(plans) / measured[0][3]
    reference = next(m[4] for m in measured if m[0] == "local pool" and m[1] == 2)
    command = "python -m benchmarks.bench_pool" + (" --quick" if args.quick else "")
    out = ["# Evaluation pool throughput", "", f"Machine: {machine_summary()}", "",
           f"Command: `{command}`. Load average (1/5/15 min) before: {load_before}, after: "
           f"{load_after}; other jobs shared the CPU unless it is near 0, so the figures are "
           "lower bounds.", "",
           f"{len(plans)} distinct random plans of {model} on digits, one-shot accuracy with "
           f"{epochs} epoch(s) (batch 32), the same plans in every row; each worker evaluated "
           "one warm-up plan first. Ratio = evals/min over the first row's (goal >= 1.8x with "
           "2 workers on 2 cores).", "",
           "| backend | workers | threads / worker | seconds | evals/min | ratio | same accuracies |",
           "|---|---|---|---|---|---|---|"]
    for label, workers, threads, seconds, accuracies in measured:
        rate = 60 * len(plans) / seconds
        out.append(f"| {label} | {workers} | {threads} | {seconds:.1f} | {rate:.2f} | "
                   f"{rate / base:.2f}x | {'yes' if accuracies == reference else 'no'} |")
    out += ["", "Same accuracies: equal to the 2-worker local row's, plan by plan (results do "
            "not depend on the backend; a different thread count may change the last bits of "
            "the fine-tune and so an accuracy).", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
