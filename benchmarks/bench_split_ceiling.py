"""The most two threads can gain on a CIFAR model by splitting its feature maps between them.

Our runtime splits a layer's output rows between the threads, with a wait between layers. Its
best case is each thread computing half the rows with no wait and no data moved between the
cores: that is one thread running the model on a band of half the input rows plus one halo
row (``band``). This benchmark times, interleaved in one process, ONNX Runtime dense at 1 and
2 threads, our compiled pruned model at 1 and 2 threads, and that band at 1 thread, and gives
each against ORT dense at 2 threads (the reference of the 2-thread goals). Where ``band``
reads below a goal, no split of the rows between two threads reaches it on this machine.

Usage: ``python benchmarks/bench_split_ceiling.py [--out docs/benchmarks/split_ceiling.md]``
(about 5 minutes; ``--models``, ``--variants block:8 pattern:8``, ``--rounds``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_compiler import interleaved, model_masks, ort_fn, ours  # noqa: E402
from benchmarks.machine import machine_summary  # noqa: E402
from npas_env.zoo import build_model  # noqa: E402

#: The 2-thread goals of the compiler issue, against ORT dense at 2 threads.
GOALS = {"block:4": 3.0, "block:8": 6.0, "pattern:8": 4.0}
RUNS = ("ORT 1 thread", "ours 1 thread", "ours 2 threads", "band, 1 thread")


def measure(model_name: str, variant: str, rounds: int) -> dict[str, float]:
    """Median us per call of ORT dense (1 and 2 threads), ours (1 and 2) and the band."""
    scheme, rate = variant.split(":")
    torch.manual_seed(0)
    model = build_model(model_name).eval()
    masks = model_masks(model, float(rate), scheme)
    x, band = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 17, 32)
    fns = {"ORT 2 threads": ort_fn(model, x, 2), "ORT 1 thread": ort_fn(model, x, 1)}
    if fns["ORT 2 threads"] is None:
        raise SystemExit("onnxruntime missing: pip install 'npas-env[bench]'")
    cache = Path(tempfile.mkdtemp())
    fns["ours 1 thread"] = ours(model, x, masks, 1, cache)[0]
    fns["ours 2 threads"] = ours(model, x, masks, 2, cache)[0]
    fns["band, 1 thread"] = ours(model, band, masks, 1, cache)[0]
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, ms in interleaved(fns, 1.0).items():
            times[k].append(ms)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def table(rows: list[tuple[str, str, dict[str, float]]]) -> list[str]:
    """Markdown: ORT 2-thread time, then each run's time and ratio against it."""
    out = ["| model | variant | goal | ORT dense, 2 threads | "
           + " | ".join(RUNS) + " |", "|---" * (4 + len(RUNS)) + "|"]
    for model, variant, us in rows:
        ref = us["ORT 2 threads"]
        cells = [f"{us[k]:.1f} us ({ref / us[k]:.2f}x)" for k in RUNS]
        out.append(f"| {model} | {variant} | {GOALS.get(variant, float('nan')):.0f}x | "
                   f"{ref:.1f} us | " + " | ".join(cells) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    ap.add_argument("--variants", nargs="+", default=["block:4", "block:8", "pattern:8"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for model in args.models:
        for variant in args.variants:
            if variant.startswith("pattern") and model == "mobilenetv2":
                continue  # its 3x3 convs are depthwise: no pattern variant (as in bench_compiler)
            us = measure(model, variant, args.rounds)
            rows.append((model, variant, us))
            print("\n".join(table(rows)[-1:]), flush=True)
    text = "\n".join([
        "# Two-thread ceiling of a row split (`benchmarks/bench_split_ceiling.py`)", "",
        machine_summary() + ".", "",
        "Times are medians of interleaved rounds (ratios: ORT dense at 2 threads over each "
        "run). `band, 1 thread` is one thread running the pruned model on 17 of the 32 input "
        "rows: the time of each thread's share when two threads split the rows with no wait "
        "and no data moved between the cores.", "", *table(rows), ""])
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
