"""Accuracy-evaluator benchmark: speed, fidelity of the 2-epoch proxy, TODAES Remark 1.

Run: ``python -m benchmarks.bench_accuracy [--quick]``. Three parts:

1. **Speed**: seconds per one-shot evaluation (2 epochs) of ResNet-20 on digits
   (goal <= 10 s on 2 cores).
2. **Fidelity**: over random plans from the default search space, Kendall tau between the
   2-epoch one-shot accuracy and a 10-epoch fine-tune accuracy (goal >= 0.6).
3. **Remark 1** (TODAES): pattern vs block-punched pruning of the 3x3 convs (other layers
   dense) at 2x, 5x and 10x; the paper says block-punched suits easy datasets.

``--quick`` uses fewer plans and epochs; ``--fidelity-model small_cnn`` runs the (expensive)
fidelity part on a cheaper model; ``--skip`` drops parts. The settings used are printed in the
report. Writes markdown to stdout and ``docs/benchmarks/accuracy.md``. Wall times on a shared
CPU are upper bounds; the report also gives process CPU seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

import npas_env  # noqa: F401  (import order: package before evaluators)
from benchmarks.machine import machine_summary, write_report
from evaluators.accuracy.oneshot import OneShotAccuracy
from evaluators.context import ModelContext
from npas_env.data import load_dataset
from npas_env.layers import LayerSpec, extract_layers
from npas_env.plan import LayerAction, PruningPlan, Scheme
from npas_env.search_space import sample_masked_action
from npas_env.zoo.pretrained import pretrained


def log(msg: str) -> None:
    print(f"[bench_accuracy {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_context(model_name: str) -> ModelContext:
    model = pretrained(model_name, "digits", progress=False)
    x = load_dataset("digits").example_input(1)
    return ModelContext(model, x, tuple(extract_layers(model, x)), name=model_name)


def random_plans(ctx: ModelContext, n: int, seed: int) -> list[PruningPlan]:
    """``n`` distinct uniformly random masked plans from the default search space."""
    space, rng = ctx.search_space, np.random.default_rng(seed)
    plans: dict[str, PruningPlan] = {}
    while len(plans) < n:
        decided: list[tuple[LayerSpec, LayerAction]] = []
        for spec in ctx.layers:
            vec = sample_masked_action(space.nvec, space.action_mask(spec, decided), rng)
            decided.append((spec, space.decode(spec, vec, decided)))
        plan = PruningPlan(tuple(a for _, a in decided), ctx.layer_names, ctx.arch_fingerprint)
        plans.setdefault(plan.key(), plan)
    return list(plans.values())


def kendall_tau(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def bench_speed(ctx: ModelContext, n: int, epochs: int) -> tuple[str, float]:
    evaluator = OneShotAccuracy("digits", epochs=epochs)
    plans = random_plans(ctx, n, seed=1)
    evaluator.evaluate(ctx, plans[:1])  # warm-up: dataset load, pattern set
    cpu = time.process_time()
    times = [r.seconds for r in evaluator.evaluate(ctx, plans)]
    cpu_each = (time.process_time() - cpu) / n
    mean = statistics.mean(times)
    log(f"speed: {mean:.2f} s wall, {cpu_each:.2f} s CPU per evaluation")
    return (f"| {ctx.name} | {epochs} | {n} | {mean:.2f} | {min(times):.2f} | {max(times):.2f} | "
            f"{cpu_each:.2f} | {'yes' if mean <= 10 else 'no'} |"), mean


def bench_fidelity(ctx: ModelContext, n: int, short: int, long: int) -> tuple[list[str], float]:
    plans = random_plans(ctx, n, seed=2)
    fast = OneShotAccuracy("digits", epochs=short).evaluate(ctx, plans)
    log(f"fidelity: {short}-epoch scores done")
    slow = OneShotAccuracy("digits", epochs=long).evaluate(ctx, plans)
    log(f"fidelity: {long}-epoch scores done")
    pairs = [(f.accuracy, s.accuracy) for f, s in zip(fast, slow, strict=True) if f.ok and s.ok]
    tau = kendall_tau([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) > 2 else float("nan")
    rows = [f"| {i} | {f.details.get('achieved_rate', 0):.2f} | "
            f"{f.accuracy if f.ok else f.error} | {s.accuracy if s.ok else s.error} |"
            for i, (f, s) in enumerate(zip(fast, slow, strict=True))]
    return rows, tau


def remark1_plan(ctx: ModelContext, scheme: Scheme, rate: float) -> PruningPlan:
    actions = []
    for spec in ctx.layers:
        if spec.kernel_size == (3, 3) and not spec.is_depthwise:
            block = (4, 4) if scheme is Scheme.BLOCK_PUNCHED else None
            actions.append(LayerAction(scheme, rate, block))
        else:
            actions.append(LayerAction())
    return PruningPlan(tuple(actions), ctx.layer_names, ctx.arch_fingerprint)


def bench_remark1(ctx: ModelContext, epochs: int, rates: tuple[float, ...]) -> list[str]:
    evaluator = OneShotAccuracy("digits", epochs=epochs)
    rows = []
    for rate in rates:
        pat, blk = evaluator.evaluate(ctx, [remark1_plan(ctx, Scheme.PATTERN, rate),
                                            remark1_plan(ctx, Scheme.BLOCK_PUNCHED, rate)])
        rows.append(f"| {rate:g}x | {pat.accuracy} | {blk.accuracy} | "
                    f"{pat.details['achieved_rate']:.2f} / {blk.details['achieved_rate']:.2f} |")
        log(f"remark 1 at {rate}x: pattern {pat.accuracy}, block {blk.accuracy}")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer plans / epochs (see report)")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--fidelity-model", default=None,
                        help="model for the fidelity part (default: --model)")
    parser.add_argument("--plans", type=int, default=None, help="plans for the fidelity part")
    parser.add_argument("--long-epochs", type=int, default=None)
    parser.add_argument("--skip", nargs="*", default=(), choices=("speed", "fidelity", "remark1"))
    parser.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    n_plans = args.plans or (8 if args.quick else 40)
    long = args.long_epochs or (5 if args.quick else 10)
    log(f"loading pretrained {args.model} (trains on first use)")
    ctx = make_context(args.model)
    other = make_context(args.fidelity_model) if args.fidelity_model else ctx
    out = ["# Accuracy evaluator benchmark", "", f"Machine: {machine_summary()}", "",
           f"Speed and Remark-1 model {args.model}, fidelity model {other.name}, dataset digits "
           "(1,078 train / 359 val images, 32x32x3), torch threads 2. "
           f"Settings: {'--quick' if args.quick else 'full'}; the CPU is shared with other jobs, "
           "so timings are upper bounds.", ""]
    if "speed" not in args.skip:
        row, _ = bench_speed(ctx, 2 if args.quick else 4, 2)
        out += ["## Seconds per one-shot evaluation (goal <= 10 s)", "",
                "CPU s = process CPU time (both threads) per evaluation; on an idle 2-core machine "
                "the wall time is about CPU s / 2.", "",
                "| model | epochs | plans | mean s | min s | max s | CPU s | goal met |",
                "|---|---|---|---|---|---|---|---|",
                row, ""]
    if "fidelity" not in args.skip:
        rows, tau = bench_fidelity(other, n_plans, 2, long)
        out += [f"## Fidelity: Kendall tau (2 vs {long} epochs) over {n_plans} random plans", "",
                f"**tau = {tau:.3f}** (goal >= 0.6)", "",
                f"| plan | achieved rate | acc 2 ep | acc {long} ep |", "|---|---|---|---|", *rows, ""]
    if "remark1" not in args.skip:
        rows = bench_remark1(ctx, 2, (2.0, 5.0, 10.0))
        out += ["## TODAES Remark 1: pattern vs block-punched (4x4) on 3x3 convs, 2-epoch one-shot", "",
                "| rate | pattern acc | block-punched acc | achieved rates |", "|---|---|---|---|", *rows, ""]
    text = "\n".join(out)
    print(text)
    if not args.no_write:
        log(f"wrote {write_report('accuracy', text)}")


if __name__ == "__main__":
    main()
