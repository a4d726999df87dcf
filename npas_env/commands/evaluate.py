"""``npas evaluate``: score one plan JSON with chosen evaluators."""

from __future__ import annotations

import argparse
import json

from npas_env.plan import PruningPlan


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate one plan JSON file")
    p.add_argument("plan", help="plan JSON written by a search")
    p.add_argument("--model", default="small_cnn", help="zoo model name")
    p.add_argument("--data", default="digits", help="dataset of the pretrained starting point")
    p.add_argument("--accuracy", default="proxy", help="accuracy evaluator name")
    p.add_argument("--latency", default="analytic", help="latency evaluator name")
    p.add_argument("--latency-budget-ms", type=float, default=None)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from npas_env.registration import make_zoo_env

    plan = PruningPlan.load(args.plan)
    env = make_zoo_env(args.model, args.data, accuracy=args.accuracy, latency=args.latency,
                       latency_budget_ms=args.latency_budget_ms)
    score = env.scorer.score([plan])[0]
    print(json.dumps({"reward": score.reward, "accuracy": score.accuracy.accuracy,
                      "latency_ms": score.latency.latency_ms, "budget_ms": score.budget_ms,
                      "reference_latency_ms": score.reference_ms, "error": score.error}, indent=2))
    return 0 if score.error is None else 1
