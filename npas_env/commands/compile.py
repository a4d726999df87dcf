"""``npas compile``: compile a zoo model (optionally pruned by a plan) and report its latency,
or (``--export DIR``) write it as a standalone C package for another device."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile a model with a plan and report its latency")
    p.add_argument("--model", default="small_cnn", help="zoo model name")
    p.add_argument("--data", default="digits", help="dataset of the pretrained starting point")
    p.add_argument("--plan", type=Path, default=None, help="plan JSON (default: dense)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--adaptive-threads", action="store_true",
                   help="run each call on 1 thread or --threads, whichever ran faster recently "
                        "(for cloud hosts that move their vCPUs)")
    p.add_argument("--banded", action="store_true",
                   help="with --threads 2: each thread runs the convolutional trunk on its own "
                        "half of the rows (models ending in a global average pool)")
    p.add_argument("--repeats", type=int, default=100)
    p.add_argument("--tune", action="store_true", help="auto-tune kernels (log reused afterwards)")
    p.add_argument("--random-weights", action="store_true",
                   help="skip pretraining (latency does not depend on weight values)")
    p.add_argument("--export", type=Path, default=None, metavar="DIR",
                   help="write a standalone C package (source, weights, driver, Makefile) to DIR "
                        "instead of timing here")
    p.add_argument("--isa", default=None, choices=["avx512", "avx2", "neon", "generic"],
                   help="target ISA (default: this machine's; --export for a phone: neon)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from compiler_backend import compile_model
    from npas_env.data import load_dataset
    from npas_env.layers import extract_layers
    from npas_env.plan import PruningPlan
    from npas_env.pruning import apply_plan
    from npas_env.zoo import build_model, pretrained

    splits = load_dataset(args.data)
    model = (build_model(args.model, num_classes=splits.num_classes) if args.random_weights
             else pretrained(args.model, args.data)).eval()
    example = torch.zeros(1, *splits.input_shape)
    masks = None
    if args.plan is not None:
        pruned = apply_plan(model, PruningPlan.load(args.plan), extract_layers(model, example))
        model, masks = pruned.model.eval(), pruned.masks
    if args.export is not None:  # a real test sample: the package checks its output on the device
        from npas_env.data.splits import first_sample

        return _export(args, model, first_sample(splits.test)[0].reshape(example.shape), masks)
    compiled = compile_model(model, example, masks, threads=args.threads, tune=args.tune,
                             isa=args.isa, adaptive_threads=args.adaptive_threads,
                             banded=args.banded)
    timing = compiled.benchmark(warmup=10, repeats=args.repeats)
    report = compiled.report
    print(json.dumps({"model": args.model, "plan": str(args.plan) if args.plan else "dense",
                      "median_ms": timing.median_ms, "iqr_ms": timing.iqr_ms, "threads": timing.threads,
                      "calls_per_thread_count": compiled.thread_policy.counts,
                      "compile_seconds": compiled.artifact.compile_seconds,
                      "cache_hit": compiled.artifact.cache_hit, "artifact": str(compiled.artifact.path)},
                     indent=2))
    print("\n| layer | kernel family | structure | kept | channels | time ms | share |\n"
          "|---|---|---|---|---|---|---|")
    for layer in report.layers:
        cut = layer.cut_channels
        print(f"| {layer.name} | {layer.family} | {layer.structure} | {layer.kept_fraction:.2f} | "
              f"{f'{cut[0]} of {cut[1]}' if cut else 'all'} | {layer.time_ms:.4f} | "
              f"{layer.share:.1%} |")
    for op in report.fallbacks:
        print(f"fallback to PyTorch: {op.name} ({op.share:.1%} of the time)")
    return 0


def _export(args: argparse.Namespace, model: nn.Module, example: torch.Tensor,
            masks: Mapping[str, torch.Tensor] | None) -> int:
    from compiler_backend import export_c

    if args.tune:
        print("note: --tune is ignored with --export (tuning measures on the target device)")
    if args.banded:
        print("note: --banded is ignored with --export (the package splits each layer)")
    out = export_c(model, example, args.export, masks, isa=args.isa, threads=args.threads)
    print(json.dumps({"model": args.model, "plan": str(args.plan) if args.plan else "dense",
                      "isa": out.isa, "threads": out.threads, "directory": str(out.directory),
                      "files": list(out.files)}, indent=2))
    cross = " CC=aarch64-linux-gnu-gcc LDFLAGS=-static" if out.isa == "neon" else ""
    print(f"build: make -C {out.directory}{cross}; run on the device: ./npas_model . 200")
    return 0
