"""Regenerate a tabular table (``npas_env/tables/<name>.json``) from real evaluations.

Every (layer, action) of a zoo model is measured as a single-layer plan against the dense model
with the given accuracy and latency evaluators (see :mod:`npas_env.tables` for the additive
model). Example (the intended, faithful configuration)::

    python scripts/build_tabular.py --model small_cnn --dataset digits \
        --accuracy oneshot --latency compiled --out npas_env/tables/small_cnn_digits.json

Cheaper stand-ins (``--accuracy zeroshot --latency analytic``) are recorded in the table's
metadata, with a note, so nobody mistakes them for the real thing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REAL = {"accuracy": {"oneshot"}, "latency": {"compiled", "remote"}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="small_cnn", help="zoo model name")
    p.add_argument("--dataset", default="digits", help="dataset of the pretrained starting point")
    p.add_argument("--accuracy", default="oneshot", help="accuracy evaluator name")
    p.add_argument("--accuracy-kwargs", default="{}", help="JSON kwargs of the accuracy evaluator")
    p.add_argument("--latency", default="compiled", help="latency evaluator name")
    p.add_argument("--latency-kwargs", default="{}", help="JSON kwargs of the latency evaluator")
    p.add_argument("--seed", type=int, default=0, help="seed of the pretrained starting point")
    p.add_argument("--batch-size", type=int, default=16, help="plans per evaluator call")
    p.add_argument("--note", default="", help="free text stored in the table metadata")
    p.add_argument("--out", type=Path, required=True, help="output JSON path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    from npas_env.registration import make_zoo_env
    from npas_env.tables import build_table

    args = parse_args(argv)
    torch.set_num_threads(1)
    env = make_zoo_env(args.model, args.dataset, seed=args.seed, accuracy=args.accuracy,
                       accuracy_kwargs=json.loads(args.accuracy_kwargs), latency=args.latency,
                       latency_kwargs=json.loads(args.latency_kwargs))
    stand_in = [k for k in ("accuracy", "latency") if getattr(args, k) not in REAL[k]]
    note = args.note or (f"STAND-IN evaluators for {', '.join(stand_in)} "
                         f"({', '.join(getattr(args, k) for k in stand_in)}): not the real one-shot / "
                         "compiled measurements; regenerate with --accuracy oneshot --latency compiled"
                         if stand_in else "real one-shot accuracy and compiled latency")
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        rate = done / max(time.perf_counter() - start, 1e-9)
        print(f"\r{done}/{total} entries ({rate:.2f}/s)", end="", file=sys.stderr, flush=True)

    table = build_table(env.context, env.scorer.accuracy, env.scorer.latency, batch_size=args.batch_size,
                        progress=progress, metadata={
                            "zoo_model": args.model, "dataset": args.dataset, "seed": args.seed,
                            "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "build_seconds": None, "stand_in": stand_in, "note": note,
                            "score_model": "accuracy = base - sum drop; latency = dense + sum delta"})
    table.metadata["build_seconds"] = round(time.perf_counter() - start, 1)
    table.save(args.out)
    args.out.chmod(0o644)  # package data: readable by everyone
    print(f"\nwrote {args.out}: {table.metadata['entries']} entries, base accuracy "
          f"{table.base_accuracy:.4f}, dense latency {table.dense_latency_ms:.4f} ms", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
