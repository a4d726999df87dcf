"""Benchmark the compiler backend: per-layer (mapping paper Fig. 9 shapes) and end to end.

Usage: python benchmarks/bench_compiler.py [--quick] [--threads 1 2] [--out docs/benchmarks/compiler.md]

References measured in the same run: onnxruntime dense (needs the `bench` extra), PyTorch eager.
Ratios are reported against ORT dense, never only against eager.
"""

from __future__ import annotations

import argparse
import datetime
import io
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler_backend import compile_model, resolve_isa  # noqa: E402

PEAK_GFLOPS_PER_CORE = 263.6  # AVX-512 FMA peak measured on the reference Zen 5 box (PERF_NOTES)
SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]


def block_mask(shape: tuple[int, ...], rate: float, p: int, q: int, gen: torch.Generator) -> torch.Tensor:
    """Block-punched (kxk) / block-based (1x1) mask: p rows x q in-channels share kept taps."""
    co, ci, kh, kw = shape
    taps = ci * kh * kw if kh * kw == 1 else kh * kw
    mask = torch.zeros(shape, dtype=torch.bool)
    for r in range(0, co, p):
        if kh * kw == 1:  # block-based: keep 1/rate of the input columns per row block
            keep = torch.randperm(ci, generator=gen)[:max(1, round(ci / rate))]
            mask[r:r + p, keep] = True
            continue
        for c in range(0, ci, q):
            n = int(taps / rate + torch.rand(1, generator=gen).item())
            keep = torch.randperm(taps, generator=gen)[:n]
            m = torch.zeros(taps, dtype=torch.bool)
            m[keep] = True
            mask[r:r + p, c:c + q] = m.view(kh, kw)
    return mask


def scheme_mask(shape: tuple[int, ...], scheme: str, rate: float, gen: torch.Generator) -> torch.Tensor:
    co, ci, kh, kw = shape
    if scheme == "unstructured":
        return torch.rand(shape, generator=gen) < 1.0 / rate
    if scheme == "filter":
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[torch.randperm(co, generator=gen)[:round(co / rate)]] = True
        return mask
    if scheme == "pattern":  # 4-of-9 patterns (8 per layer) + connectivity, 4 filters share
        pats = [torch.randperm(9, generator=gen)[:4] for _ in range(8)]
        mask = torch.zeros(co, ci, 9, dtype=torch.bool)
        keep_frac = 9 / 4 / rate
        for r in range(0, co, 4):
            for c in range(ci):
                if torch.rand(1, generator=gen).item() < keep_frac:
                    mask[r:r + 4, c, pats[int(torch.randint(8, (1,), generator=gen))]] = True
        return mask.view(shape)
    raise ValueError(scheme)


def ort_session(model: nn.Module, x: torch.Tensor, threads: int):
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime missing: pip install 'npas-env[bench]'", file=sys.stderr)
        return None
    buf = io.BytesIO()
    torch.onnx.export(model, x, buf, dynamo=False, opset_version=17)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feed)


def time_ms(fn, warmup: int = 5, repeats: int = 30, min_s: float = 0.1) -> float:
    for _ in range(warmup):
        fn()
    ts: list[float] = []
    t_start = time.perf_counter()
    while len(ts) < repeats or time.perf_counter() - t_start < min_s:
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def bench_layer(c: int, hw: int, k: int, scheme: str, rate: float, block: tuple[int, int],
                threads: int, cache: Path | None) -> tuple[float, float, float]:
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(c, c, k, padding=k // 2, bias=False).eval()
    x = torch.randn(1, c, hw, hw)
    shape = tuple(conv.weight.shape)
    if scheme == "block":
        mask = block_mask(shape, rate, *block, gen) if rate > 1 else torch.ones(shape, dtype=torch.bool)
    else:
        mask = scheme_mask(shape, scheme, rate, gen)
    t0 = time.perf_counter()
    model = nn.Sequential(conv).eval()  # a bare Conv2d traces to F.conv2d, not a module call
    cm = compile_model(model, x, {"0": mask}, threads=threads, cache_dir=cache)
    ctime = time.perf_counter() - t0
    ms = cm.benchmark(warmup=5, repeats=30, min_seconds=0.1).median_ms
    kept_flops = 2 * int(mask.sum()) * hw * hw
    return ms, kept_flops / ms / 1e6, ctime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer layer configs")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default="docs/benchmarks/compiler.md")
    ap.add_argument("--cache", default=None)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    cache = Path(args.cache) if args.cache else None
    torch.manual_seed(0)
    lines = ["# Compiler backend benchmark\n",
             f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}",
             f"- machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
             f"ISA used: {resolve_isa().name}",
             f"- command: `python {' '.join(sys.argv)}`",
             "- CPU shared with other jobs during the run: timings are noisy.",
             f"- fraction of peak uses {PEAK_GFLOPS_PER_CORE} GFLOP/s per core (AVX-512 box); on an AVX2-only "
             "CPU the FMA peak is half of that at the same clock.\n"]
    # ---------------- per layer
    lines.append("## Per layer, block-punched (3x3) / block-based (1x1), block 8x16, batch 1\n")
    lines.append("| layer | thr | ORT dense us | rate | ours us | vs ORT dense | vs own dense | GFLOP/s kept | frac peak | compile s |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    rates = [1, 4] if args.quick else [1, 2, 4, 8]
    for k in (3, 1):
        for c, hw in SHAPES:
            for th in args.threads:
                torch.set_num_threads(th)
                conv = nn.Conv2d(c, c, k, padding=k // 2, bias=False).eval()
                x = torch.randn(1, c, hw, hw)
                ort_fn = ort_session(conv, x, th)
                ort_us = time_ms(ort_fn) * 1e3 if ort_fn else float("nan")
                own_dense = None
                for rate in rates:
                    ms, gf, ct = bench_layer(c, hw, k, "block", rate, (8, 16), th, cache)
                    own_dense = own_dense or ms
                    lines.append(f"| conv{k}x{k} {c}@{hw} | {th} | {ort_us:.0f} | {rate}x | {ms * 1e3:.0f} | "
                                 f"{ort_us / (ms * 1e3):.2f}x | {own_dense / ms:.2f}x | {gf:.0f} | "
                                 f"{gf / (PEAK_GFLOPS_PER_CORE * th):.2f} | {ct:.1f} |")
                print("\n".join(lines[-len(rates):]), flush=True)
    # ---------------- other schemes on one shape
    lines.append("\n## Other schemes, conv3x3 128@28, 1 thread\n")
    lines.append("| scheme | rate | ours us | vs own dense | GFLOP/s kept |")
    lines.append("|---|---|---|---|---|")
    torch.set_num_threads(1)
    dense_ms = bench_layer(128, 28, 3, "block", 1, (8, 16), 1, cache)[0]
    configs = [("pattern", 8.0, (0, 0)), ("unstructured", 10.0, (0, 0)), ("filter", 2.0, (0, 0))]
    configs += [("block", 4.0, b) for b in ([(8, 16), (1, 1), (4, 16), (16, 32)] if not args.quick else [(1, 1), (16, 32)])]
    for scheme, rate, blk in configs:
        ms, gf, _ = bench_layer(128, 28, 3, scheme, rate, blk, 1, cache)
        name = scheme + (f" {blk[0]}x{blk[1]}" if scheme == "block" else "")
        lines.append(f"| {name} | {rate:g}x | {ms * 1e3:.0f} | {dense_ms / ms:.2f}x | {gf:.0f} |")
        print(lines[-1], flush=True)
    # ---------------- end to end
    lines.append("\n## End to end, CIFAR ResNet-20 (zoo), batch 1\n")
    lines.append("| threads | variant | ms | vs ORT dense | vs torch eager | compile s |")
    lines.append("|---|---|---|---|---|---|")
    from npas_env.zoo import build_model

    model = build_model("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][1:]
    for th in args.threads:
        torch.set_num_threads(th)
        ort_fn = ort_session(model, x, th)
        ort_ms = time_ms(ort_fn) if ort_fn else float("nan")
        with torch.no_grad():
            eager_ms = time_ms(lambda: model(x))
        lines.append(f"| {th} | ORT dense | {ort_ms:.3f} | 1.00x | {eager_ms / ort_ms:.2f}x | - |")
        lines.append(f"| {th} | torch eager | {eager_ms:.3f} | {ort_ms / eager_ms:.2f}x | 1.00x | - |")
        for variant, rate in (("dense", 1), ("block 8x16 2x", 2), ("block 8x16 4x", 4), ("block 8x16 8x", 8)):
            gen = torch.Generator().manual_seed(0)
            masks = {} if rate == 1 else {n: block_mask(tuple(model.get_submodule(n).weight.shape), rate, 8, 16, gen) for n in convs}
            t0 = time.perf_counter()
            cm = compile_model(model, x, masks, threads=th, cache_dir=cache)
            ct = time.perf_counter() - t0
            ms = cm.benchmark(warmup=10, repeats=50, min_seconds=0.2).median_ms
            lines.append(f"| {th} | ours {variant} | {ms:.3f} | {ort_ms / ms:.2f}x | {eager_ms / ms:.2f}x | {ct:.1f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
