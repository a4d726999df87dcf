"""Latency models vs compiled measurements: ``lut`` and ``predictor`` against ``compiled``.

For every zoo model and N random plans (uniform over each layer's allowed actions): share of
predictions within +-10 %, MAPE, Kendall tau, cost of one prediction (cold = empty memo, warm =
memo of earlier plans), raw and calibrated (``a * sum + b`` fitted on the first plans, evaluated on
the rest). Also the LUT build rate. Writes ``docs/benchmarks/latency.md`` (``--no-write``: print only).

``--grid model`` builds (or resumes) one model-specific table per model, timed in context
(:mod:`evaluators.latency.model_builder`), and fits the predictor on it, calibrated on the
table's own compiled builds.

    python -m benchmarks.bench_latency                      # everything (long: builds the LUT)
    python -m benchmarks.bench_latency --models resnet20 --plans 10 --grid bench
    python -m benchmarks.bench_latency --models small_cnn resnet20 --grid model --no-write
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import npas_env  # noqa: F401  (import before evaluators: import cycle)
from benchmarks.machine import machine_summary, write_report
from evaluators.context import ModelContext
from evaluators.latency.compiled import CompiledLatency
from evaluators.latency.lut import LookupTableLatency
from evaluators.latency.lut_builder import DEFAULT_GRID, QUICK_GRID, GridSpec, build_lut
from evaluators.latency.model_builder import build_model_lut, describe
from evaluators.latency.predictor import LatencyPredictor, error_report
from evaluators.latency.profiling import pin_threads
from npas_env.io import cache_dir
from npas_env.layers import extract_layers
from npas_env.plan import PruningPlan
from npas_env.search_space import SearchSpace, sample_masked_action
from npas_env.zoo import MODELS, build_model

#: Shapes of the CIFAR zoo models (feature maps 8..32, channels 16..64) with few rates: ~10 min.
BENCH_GRID = GridSpec(layer_types=("conv1x1", "conv3x3", "dw3x3", "fc"), channels=(16, 32, 64), fmaps=(8, 16, 32),
                      rates=(2.0, 5.0), block_sizes=((8, 16),), max_channel_fmap=1024)
GRIDS = {"default": DEFAULT_GRID, "quick": QUICK_GRID, "bench": BENCH_GRID}


def random_plans(ctx: ModelContext, n: int, seed: int) -> list[PruningPlan]:
    """``n`` plans, each layer's action uniform over its allowed actions (first plan dense)."""
    space, rng = ctx.search_space, np.random.default_rng(seed)
    plans = [PruningPlan.dense(ctx.layer_names, ctx.arch_fingerprint)]
    while len(plans) < n:
        decided = []
        for spec in ctx.layers:
            mask = space.action_mask(spec, decided)
            decided.append((spec, space.decode(spec, sample_masked_action(space.nvec, mask, rng), decided)))
        plans.append(PruningPlan(tuple(a for _, a in decided), ctx.layer_names, ctx.arch_fingerprint))
    return plans


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def score(name: str, predicted: np.ndarray, measured: np.ndarray, n_cal: int) -> dict[str, float]:
    """Raw and calibrated accuracy of predictions against measurements."""
    raw = error_report(predicted, measured)
    a, b = np.linalg.lstsq(np.stack([predicted[:n_cal], np.ones(n_cal)], 1), measured[:n_cal], rcond=None)[0]
    cal = error_report(a * predicted[n_cal:] + b, measured[n_cal:])
    return {"model": name, "within": raw["within_10pct"], "mape": raw["mape_pct"],
            "tau": kendall_tau(predicted, measured), "cal_within": cal["within_10pct"], "cal_mape": cal["mape_pct"]}


def cost_ms(evaluator, ctx: ModelContext, plans: list[PruningPlan]) -> tuple[float, float]:
    """(cold, warm) milliseconds per plan: memo cleared before every plan, then one batch."""
    t0 = time.perf_counter()
    for plan in plans:
        evaluator._memo.clear()
        evaluator.measure(ctx, [plan])
    cold = (time.perf_counter() - t0) * 1e3 / len(plans)
    evaluator._memo.clear()
    evaluator.measure(ctx, plans[: len(plans) // 2])
    t0 = time.perf_counter()
    evaluator.measure(ctx, plans[len(plans) // 2:])
    return cold, (time.perf_counter() - t0) * 1e3 / max(1, len(plans) - len(plans) // 2)


def grid_evaluators(args: argparse.Namespace) -> tuple[LookupTableLatency, LatencyPredictor, list[str]]:
    """The LUT and predictor of a generic grid table (one for all models)."""
    table = build_lut(args.device, args.lut, GRIDS[args.grid], threads=args.threads, backend="compiled")
    build = table.machine.get("build", {})
    predictor = LatencyPredictor().fit(table)
    return LookupTableLatency(table), predictor, [
        f"- LUT: {len(table)} settings, grid `{args.grid}`, built at "
        f"{build.get('settings_per_min', 'n/a')} settings/min (paper: 512 in ~30 min = 17/min); "
        f"noise {table.noise()}",
        f"- predictor hold-out on the table: {predictor.report.get('holdout')}"]


def model_evaluators(args: argparse.Namespace, ctx: ModelContext) -> tuple[LookupTableLatency, LatencyPredictor, list[str]]:
    """The LUT of a model-specific in-context table (built or resumed) and a predictor fitted on it."""
    path = (args.lut or cache_dir()) / f"lut-{args.device}-model-{ctx.name}.json"
    table = build_model_lut(ctx, path, device=args.device, rates=args.rates, max_builds=args.max_builds,
                            threads=args.threads, rounds=args.rounds)
    predictor = LatencyPredictor().fit_model_table(table, ctx)
    info = describe(table)
    plans, walls = table.build_plans()
    in_sample = error_report([table.predict(plan)[0] for plan in plans], walls)
    return LookupTableLatency(table), predictor, [
        f"- {ctx.name}: model table `{path.name}`, {info['entries']} settings from {info['builds']} compiled "
        f"models (rates {args.rates or 'all'}), built at {info['settings_per_min']} settings/min "
        f"(paper: 17/min), base {info['base_ms']:.4f} ms of dense {info['dense_ms']:.4f} ms; noise {info['noise']}",
        f"- {ctx.name}: base + entries vs its own compiled models (in-sample: the entries come from "
        f"these builds) {in_sample}",
        f"- {ctx.name}: predictor hold-out on the table {predictor.report.get('holdout')}, calibration "
        f"on the builds {predictor.report.get('calibration')}"]


def make_context(name: str) -> ModelContext:
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ModelContext(model, x, tuple(extract_layers(model, x)), SearchSpace(), name)


def run(args: argparse.Namespace) -> str:
    pin_threads(args.threads)
    t0 = time.perf_counter()
    lines: list[str] = []
    if args.grid != "model":
        lut, predictor, lines = grid_evaluators(args)
    rows = []
    for name in args.models:
        ctx = make_context(name)
        # anchored to the dense model; with a model table, on the table's dense scale
        compiled = CompiledLatency(threads=args.threads)
        if args.grid == "model":
            lut, predictor, more = model_evaluators(args, ctx)
            lines += more
            compiled = CompiledLatency(threads=args.threads,
                                       reference_ms=getattr(lut.table, "dense_ms", None))
            print(f"{name}: table ready, {time.perf_counter() - t0:.0f} s", flush=True)
        plans = random_plans(ctx, args.plans, args.seed)
        measured = np.array([r.latency_ms if r.ok else np.nan for r in compiled.measure(ctx, plans)])
        for label, ev in (("lut", lut), ("predictor", predictor)):
            res = ev.measure(ctx, plans)
            pred = np.array([r.latency_ms if r.ok else np.nan for r in res], float)
            ok = ~np.isnan(measured) & ~np.isnan(pred)
            if ok.sum() < 4:
                print(f"{name}/{label}: too few results: {[r.error for r in res if not r.ok][:1]}")
                continue
            pred, m = pred[ok], measured[ok]
            cold, warm = cost_ms(ev, ctx, plans)
            row = score(name, pred, m, max(3, len(m) // 4))
            row.update(evaluator=label, n=int(ok.sum()), cold=cold, warm=warm,
                       extrap=sum(r.extrapolated for r in res) / len(res))
            rows.append(row)
        rows.append(noise_floor(name, compiled, ctx, plans, measured))
        print(f"{name}: measured {(~np.isnan(measured)).sum()}/{len(plans)} plans, {time.perf_counter() - t0:.0f} s", flush=True)
    return _markdown(args, lines, rows, time.perf_counter() - t0)


def noise_floor(name: str, compiled: CompiledLatency, ctx: ModelContext, plans: list[PruningPlan],
                measured: np.ndarray) -> dict:
    """The same plans measured again, scored against the first run: what any predictor can reach."""
    again = np.array([r.latency_ms if r.ok else np.nan for r in compiled.measure(ctx, plans)])
    ok = ~np.isnan(measured) & ~np.isnan(again)
    row = score(name, again[ok], measured[ok], max(3, int(ok.sum()) // 4))
    row.update(evaluator="compiled, measured again", n=int(ok.sum()), cold=float("nan"),
               warm=float("nan"), extrap=0.0)
    return row


def _markdown(args: argparse.Namespace, lines: list[str], rows: list[dict], seconds: float) -> str:
    head = ("| model | evaluator | plans | within ±10 % | MAPE % | Kendall τ | calibrated within ±10 % "
            "| calibrated MAPE % | extrapolated | ms/plan cold | ms/plan warm |\n" + "|---" * 11 + "|\n")
    body = "".join(f"| {r['model']} | {r['evaluator']} | {r['n']} | {r['within']:.0%} | {r['mape']:.1f} | "
                   f"{r['tau']:.2f} | {r['cal_within']:.0%} | {r['cal_mape']:.1f} | {r['extrap']:.0%} | "
                   f"{r['cold']:.3f} | {r['warm']:.4f} |\n" for r in rows)
    return (f"# Latency models vs compiled measurements\n\n{machine_summary()}\n\n"
            f"`python -m benchmarks.bench_latency {_command(args)}` ({seconds:.0f} s). Goals: >= 95 % "
            "within ±10 %, Kendall τ >= 0.9, < 1 ms per prediction. Calibrated = `a * sum + b` fitted on "
            "the first quarter of the plans, scored on the rest.\n\n" + "\n".join(lines) + "\n\n" + head + body)


def _command(args: argparse.Namespace) -> str:
    cmd = f"--models {' '.join(args.models)} --plans {args.plans} --grid {args.grid} --threads {args.threads}"
    if args.grid == "model" and args.rates:
        cmd += f" --rates {' '.join(f'{r:g}' for r in args.rates)}"
    if args.grid == "model" and args.max_builds:
        cmd += f" --max-builds {args.max_builds}"
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=sorted(MODELS))
    p.add_argument("--plans", type=int, default=30)
    p.add_argument("--grid", choices=[*sorted(GRIDS), "model"], default="bench",
                   help="a generic grid table, or `model`: one in-context table per model")
    p.add_argument("--lut", type=Path, default=None,
                   help="table file (default: <npas cache>/lut-<device>-<grid>.json; resumed); with "
                   "--grid model the directory of the per-model tables (default: the npas cache)")
    p.add_argument("--rates", type=float, nargs="+", help="--grid model: pruned rates to measure "
                   "(default: all of the search space; others interpolated)")
    p.add_argument("--max-builds", type=int, help="--grid model: compiled models per table in this run")
    p.add_argument("--rounds", type=int, default=7, help="--grid model: profiling rounds per compiled model")
    p.add_argument("--device", default="local")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    if args.lut is None and args.grid != "model":
        args.lut = cache_dir() / f"lut-{args.device}-{args.grid}.json"
    md = run(args)
    print(md)
    if not args.no_write:
        print(f"wrote {write_report('latency', md)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
