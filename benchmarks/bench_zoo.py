"""Train every zoo model on digits with its default recipe and report accuracy and cost.

Each model is trained from scratch into a fresh cache directory (never the user's cache) with
``npas_env.zoo.pretrained``; the table lists parameters, MACs (prunable layers, batch 1, 32x32),
test accuracy and training wall time. Times depend heavily on machine load.

    python -m benchmarks.bench_zoo                               # every model
    python -m benchmarks.bench_zoo --models small_cnn resnet20 --threads 1 --write
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.machine import machine_summary, write_report
from npas_env.layers import extract_layers
from npas_env.zoo import MODELS, build_model, default_recipe, pretrained, pretrained_info


def measure(name: str, cache: Path, seed: int, progress: bool) -> dict[str, object]:
    """Train ``name`` on digits into ``cache``; return one table row."""
    start = time.perf_counter()
    model = pretrained(name, "digits", seed=seed, cache_dir=cache, progress=progress)
    wall = time.perf_counter() - start
    info = pretrained_info(name, "digits", seed=seed, cache_dir=cache) or {}
    layers = extract_layers(model, torch.zeros(1, 3, 32, 32))
    recipe = default_recipe(name, "digits")
    return {"model": name, "params": sum(p.numel() for p in model.parameters()),
            "macs": sum(s.macs for s in layers), "test": info.get("test_accuracy", float("nan")),
            "val": info.get("val_accuracy", float("nan")),
            "train_s": info.get("train_seconds", float("nan")), "wall_s": wall,
            "recipe": f"{recipe.epochs} ep, lr {recipe.lr}, bs {recipe.batch_size}"}


def to_markdown(rows: list[dict[str, object]], threads: int) -> str:
    head = ["| model | params | MACs | test acc | val acc | train s | recipe |",
            "|---|---:|---:|---:|---:|---:|---|"]
    body = [f"| {r['model']} | {r['params']:,} | {r['macs'] / 1e6:.2f} M | {r['test']:.2%} | "
            f"{r['val']:.2%} | {r['train_s']:.1f} | {r['recipe']} |" for r in rows]
    notes = [f"Machine: {machine_summary()}; torch threads: {threads}.",
             "Digits: 1,078 train / 360 val / 359 test images (scikit-learn's 8x8 digits at "
             "32x32). Train seconds are wall time on a shared CPU and are noisy."]
    return "\n".join(["# Zoo models on digits", "", *head, *body, "", *notes, ""])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temp dir")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--write", action="store_true", help="also write docs/benchmarks/zoo.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    build_model("small_cnn")  # fail fast on import problems before the long runs
    with tempfile.TemporaryDirectory(prefix="npas-bench-zoo-") as tmp:
        cache = args.cache_dir or Path(tmp)
        rows = []
        for name in args.models:
            rows.append(measure(name, cache, args.seed, not args.no_progress))
            print(f"{name}: test {rows[-1]['test']:.2%} in {rows[-1]['train_s']:.1f} s", flush=True)
    report = to_markdown(rows, args.threads)
    print(report)
    if args.write:
        print(f"wrote {write_report('zoo', report)}")


if __name__ == "__main__":
    main()
