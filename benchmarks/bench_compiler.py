"""Benchmark the compiler backend: machine peak, per-layer (mapping paper Fig. 9) and end to end.

Usage: python benchmarks/bench_compiler.py [--quick] [--threads 1 2] [--out docs/benchmarks/compiler.md]
       python benchmarks/bench_compiler.py --sections sweep --schemes filter   (a subset, printed only)

Every comparison runs interleaved in one process (ours / ORT / torch alternate in 100 ms batches,
each after a 60 ms pause and a 20 ms warm-up; median over rounds), because the machine drifts
between speed states.
The dense reference is onnxruntime (ORT_ENABLE_ALL, same thread count); every ratio names its
reference. "frac peak" divides kept GFLOP/s by the FMA peak measured at the start of this run;
"frac peak now" by an FMA probe timed in the same rounds as the layer.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, machine_summary  # noqa: E402
from compiler_backend import compile_model, resolve_isa  # noqa: E402
from compiler_backend.affinity import hold_cpu  # noqa: E402
from compiler_backend.peak import CorePair, MachinePeak, core_pair, fma_probe, measure_peak  # noqa: E402
from npas_env.pruning import prune_mask  # noqa: E402

SHAPES = [(64, 56), (128, 28), (256, 14), (512, 7)]
BLOCKS = [(1, 1), (4, 4), (8, 4), (4, 16), (8, 16), (16, 32)]
SECTIONS = ["layers", "sweep", "e2e", "tune"]
#: One timed batch: ms per call, and the worse ``core_pair`` reading around it (or None).
Batch = tuple[float, "CorePair | None"]
Fn = Callable[[], object]


def layer_mask(weight: torch.Tensor, scheme: str, rate: float,
               block: tuple[int, int] = (8, 16)) -> torch.Tensor | None:
    """Mask by ``npas_env.pruning.prune_mask`` (None = dense); block schemes by kernel size."""
    if rate <= 1:
        return None
    if scheme == "block":
        scheme = "block_punched" if weight.shape[2] * weight.shape[3] > 1 else "block_based"
    return prune_mask(weight, scheme, rate, block)


def ort_fn(model: nn.Module, x: torch.Tensor, threads: int) -> Fn | None:
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


def interleaved(fns: dict[str, Fn], budget_s: float = 1.0) -> dict[str, float]:
    """Median ms per call of each fn over the rounds of ``batches``."""
    return medians(batches(fns, budget_s))


def medians(rounds: dict[str, list[Batch]], placed_well: bool = False) -> dict[str, float]:
    """Median ms per key over its batches, or over those timed while the host gave the vCPUs
    whole cores close to each other (``placed_well``; NaN where there were none)."""
    return {k: float(np.median([ms for ms, cp in v if not placed_well or
                                (cp is not None and cp.whole_and_near())] or [math.nan]))
            for k, v in rounds.items()}


def _worse(a: CorePair | None, b: CorePair) -> CorePair:
    return b if a is None else CorePair(min(a.share, b.share), max(a.round_trip_ns, b.round_trip_ns))


def batches(fns: dict[str, Fn], budget_s: float = 1.0, batch_s: float = 0.1,
            warm_s: float = 0.02, settle_s: float = 0.06, min_rounds: int = 8,
            placement: Callable[[], CorePair] | None = None) -> dict[str, list[Batch]]:
    """Per fn, one (ms per call, vCPU placement) per round, measured round-robin in batches.

    Before each batch the process sleeps ``settle_s`` (ONNX Runtime's idle workers spin for
    tens of milliseconds after a call: about 45 ms of CPU per idle second), then runs the fn
    untimed for ``warm_s`` (at least one call), then times calls for ``batch_s``; the order
    rotates every round and the result is the median over rounds. Without the pause and with
    2 ms batches, our 2-thread conv timed right after ORT ran at 0.97x its 1-thread time (1.77x
    alone): a runtime's figure must not depend on which runtime happened to run before it.
    The timing thread is held on one CPU throughout (``hold_cpu``): free, it was moved between
    the two cores whenever an idle runtime's thread woke, and every runtime timed slower.
    ``placement`` (``peak.core_pair``), when given, runs right before and after every batch
    and the worse of its two readings is kept with the batch (None without it).
    """
    est = {}
    for k, f in fns.items():
        f()
        t0 = time.perf_counter()
        f()
        est[k] = max(time.perf_counter() - t0, 1e-6)
    inner = {k: max(1, int(batch_s / e)) for k, e in est.items()}
    warm = {k: max(1, int(warm_s / e)) for k, e in est.items()}
    per_round = sum((inner[k] + warm[k]) * est[k] + settle_s for k in fns)
    rounds = max(min_rounds, min(400, int(budget_s / per_round)))
    ts: dict[str, list[Batch]] = {k: [] for k in fns}
    keys = list(fns)
    with hold_cpu():  # every runtime's threads exist by now (the estimate above ran each fn)
        for r in range(rounds):
            for k in keys[r % len(keys):] + keys[:r % len(keys)]:
                f, n = fns[k], inner[k]
                time.sleep(settle_s)
                for _ in range(warm[k]):
                    f()
                before = placement() if placement else None
                t0 = time.perf_counter()
                for _ in range(n):
                    f()
                ms = (time.perf_counter() - t0) / n * 1e3
                ts[k].append((ms, _worse(before, placement()) if placement else None))
    return ts


def ours(model: nn.Module, x: torch.Tensor, masks: dict[str, torch.Tensor], threads: int,
         cache: Path | None, mode: str = "") -> tuple[Fn, float, object]:
    """Our compiled model's run function, compile seconds and the model; ``mode``: "",
    "adaptive" (``adaptive_threads``) or "banded" (``banded``)."""
    t0 = time.perf_counter()
    cm = compile_model(model, x, masks, threads=threads, cache_dir=cache,
                       adaptive_threads=mode == "adaptive", banded=mode == "banded")
    ct = time.perf_counter() - t0
    cm.view(cm.graph.input).copy_(x[:1])
    return cm._run_sample, ct, cm


def layer_rows(peak: MachinePeak, threads: list[int], cache: Path | None,
               quick: bool) -> list[str]:
    out = ["## Per layer: block-punched 3x3 / block-based 1x1, block 8x16, batch 1\n",
           "ORT dense = onnxruntime on the unpruned layer (the reference). `x ORT` = ORT dense "
           "time / ours; `x own dense` = our dense / ours; GFLOP/s counts kept weights only. "
           "`frac peak` divides by the FMA peak measured at the start of the run; `peak now` is "
           "the FMA probe timed round-robin with the layers (same rounds, same speed state) "
           "and `frac peak now` divides by it (its threads start and end with each call, so "
           "nothing of it idles beside the runtimes timed after it).\n",
           "| layer | thr | ORT dense us | rate | ours us | x ORT dense | x own dense | "
           "GFLOP/s kept | frac peak | peak now | frac peak now | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in (3, 1):
        for c, hw in SHAPES:
            for th in threads:
                torch.set_num_threads(th)
                torch.manual_seed(0)
                conv = nn.Conv2d(c, c, k, padding=k // 2, bias=False).eval()
                model = nn.Sequential(conv).eval()
                x = torch.randn(1, c, hw, hw)
                fns: dict[str, Fn] = {}
                ref = ort_fn(model, x, th)
                if ref:
                    fns["ort"] = ref
                probe, rates = fma_probe(resolve_isa(), th, cache=cache), []
                fns["peak"] = lambda probe=probe, rates=rates: rates.append(probe())
                meta = {}
                for rate in (1, 2, 4, 8):
                    mask = layer_mask(conv.weight, "block", rate)
                    fn, ct, _ = ours(model, x, {"0": mask} if mask is not None else {}, th, cache)
                    fns[f"r{rate}"] = fn
                    kept = int(mask.sum()) if mask is not None else conv.weight.numel()
                    meta[rate] = (2 * kept * hw * hw, ct)
                r = interleaved(fns, 1.0 if quick else 2.5)
                ort_ms = r.get("ort", math.nan)
                peak_now = float(np.median(rates))
                for rate, (flops, ct) in meta.items():
                    ms = r[f"r{rate}"]
                    gf = flops / ms / 1e6
                    out.append(f"| conv{k}x{k} {c}@{hw} | {th} | {ort_ms * 1e3:.0f} | {rate}x | "
                               f"{ms * 1e3:.0f} | {ort_ms / ms:.2f}x | {r['r1'] / ms:.2f}x | "
                               f"{gf:.0f} | {gf / peak.gflops[th]:.2f} | {peak_now:.0f} | "
                               f"{gf / peak_now:.2f} | {ct:.1f} |")
                print("\n".join(out[-4:]), flush=True)
    return out


def sweep_rows(threads: int, cache: Path | None, quick: bool,
               schemes: list[str] | None = None) -> list[str]:
    out = ["\n## Block-size sweep at 4x, and other schemes (1 thread unless noted)\n",
           "Same interleaved run per layer: ORT dense, our dense, then every variant.\n",
           "| layer | scheme | block | rate | ours us | x ORT dense | x own dense | GFLOP/s kept |",
           "|---|---|---|---|---|---|---|---|"]
    torch.set_num_threads(threads)
    cases = [(3, 128, 28), (1, 128, 28)] + ([] if quick else [(3, 64, 56), (3, 512, 7)])
    for k, c, hw in cases:
        torch.manual_seed(0)
        conv = nn.Conv2d(c, c, k, padding=k // 2, bias=False).eval()
        model = nn.Sequential(conv).eval()
        x = torch.randn(1, c, hw, hw)
        fns: dict[str, Fn] = {"ort": ort_fn(model, x, threads) or (lambda: None)}
        fns["dense"] = ours(model, x, {}, threads, cache)[0]
        variants = [("block", b, 4.0) for b in BLOCKS]
        if k == 3:
            variants += [("pattern", (0, 0), 8.0)]
        variants += [("unstructured", (0, 0), 10.0), ("filter", (0, 0), 2.0)]
        variants = [v for v in variants if schemes is None or v[0] in schemes]
        flops = {}
        for scheme, blk, rate in variants:
            mask = layer_mask(conv.weight, scheme, rate, blk)
            key = f"{scheme}|{blk[0]}x{blk[1]}|{rate:g}"
            fns[key] = ours(model, x, {"0": mask}, threads, cache)[0]
            flops[key] = 2 * int(mask.sum()) * hw * hw
        r = interleaved(fns, 1.0 if quick else 2.5)
        for key, fl in flops.items():
            scheme, blk, rate = key.split("|")
            if scheme == "block":
                scheme = "block_punched" if k == 3 else "block_based"
            ms = r[key]
            out.append(f"| conv{k}x{k} {c}@{hw} | {scheme} | {blk if 'block' in scheme else '-'} | "
                       f"{rate}x | {ms * 1e3:.0f} | {r['ort'] / ms:.2f}x | {r['dense'] / ms:.2f}x | "
                       f"{fl / ms / 1e6:.0f} |")
        out.append(f"| conv{k}x{k} {c}@{hw} | (ORT dense {r['ort'] * 1e3:.0f} us, our dense "
                   f"{r['dense'] * 1e3:.0f} us) | | | | | | |")
        print("\n".join(out[-len(flops) - 1:]), flush=True)
    return out


def model_masks(model: nn.Module, rate: float, scheme: str = "block") -> dict[str, torch.Tensor]:
    """Masks on every prunable conv (not the stem, not depthwise, not Linear): block 8x16, or
    ``pattern`` (pattern + connectivity on 3x3 convs, block 8x16 elsewhere) or
    ``unstructured``."""
    masks = {}
    if rate <= 1:
        return masks
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for n, m in convs:
        if m.groups == 1 and m.in_channels >= 16:
            own = scheme if scheme != "pattern" or tuple(m.kernel_size) == (3, 3) else "block"
            masks[n] = layer_mask(m.weight, own, rate)
    return masks


def torch_compiled(model: nn.Module, x: torch.Tensor, limit_s: float) -> tuple[Fn | None, str]:
    import torch._inductor.config as icfg

    icfg.freezing = True
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            fn = torch.compile(model)
            fn(x)
    except Exception as exc:  # noqa: BLE001 - report and go on
        return None, f"failed: {type(exc).__name__}"
    ct = time.perf_counter() - t0
    if ct > limit_s:
        return None, f"compiled in {ct:.0f} s (> {limit_s:.0f} s limit), not timed"

    def run() -> object:
        with torch.no_grad():
            return fn(x)
    return run, f"{ct:.0f}"


def _merge_copies(times: dict[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """Fold ``key#0``, ``key#1``... into ``key``: geometric mean, and the slowest / fastest."""
    groups: dict[str, list[float]] = {}
    for key, ms in times.items():
        groups.setdefault(key.split("#")[0], []).append(ms)
    merged = {k: float(np.exp(np.mean(np.log(v)))) for k, v in groups.items()}
    spread = {k: f"+{max(v) / min(v) - 1:.0%}" for k, v in groups.items() if len(v) > 1}
    return merged, spread


def _placed_well(rounds: dict[str, list[Batch]]) -> float:
    """Share of all batches timed while the host gave the vCPUs whole cores close together."""
    pairs = [cp for v in rounds.values() for _, cp in v if cp is not None]
    return sum(cp.whole_and_near() for cp in pairs) / max(len(pairs), 1)


def e2e_rows(threads: list[int], cache: Path | None, quick: bool) -> list[str]:
    from npas_env.zoo import build_model

    out = ["\n## End to end (zoo models, random weights, batch 1, CIFAR 32x32 input)\n",
           "Masks: `prune_mask` block-punched 8x16 (3x3) / block-based 8x16 (1x1) on every conv "
           "except the stem and depthwise convs, at the same rate per layer; `pattern 8x` = "
           "pattern + connectivity on those 3x3 convs (block-based 8x16 on the 1x1 shortcuts), "
           "`unstructured 10x` = magnitude on all of them (ResNet-20 and VGG-16: MobileNetV2's "
           "only full 3x3 conv is the stem). Reference = ORT dense.\n",
           "Each of our variants is compiled twice (separate libraries, weights and arenas) and "
           "timed as two runtimes in the same rotation: `ms` is their geometric mean and "
           "`copies` how far apart they were (on the AMD Zen 3 host two copies of one model "
           "differed by 10-50 %).\n",
           "At 2 threads every batch is bracketed by `peak.core_pair`, which reads how the host "
           "places the two vCPUs: FMA work on both at once against one alone (~0.5 when they "
           "share a physical core) and a cache-line round trip between them (on the AMD Zen 3 host "
           "65-120 ns on nearby cores, 400-800 ns far apart, where our 2-thread ResNet-20 4x ran "
           "0.44-0.56 instead of 0.24-0.30 ms; on the Zen 4 host 60-70 ns near, 230-300 ns far). "
           "`placed well` is the share of batches whose readings before and after were both "
           ">= 0.8 and <= 200 ns (250 ns before session 30); `ms placed well` / `x ORT placed "
           "well` use only those batches (ORT's included); `ms` uses all.\n",
           "`adaptive` rows: the same 2-thread library with `adaptive_threads=True`, which runs "
           "each call on 1 or 2 threads, whichever ran faster recently "
           "(`compiler_backend.threads.AdaptiveThreads`); the plain rows always use 2. "
           "`banded` rows: `banded=True`, each thread running the convolutional trunk on its own "
           "half of the rows (`compiler_backend.bands`; VGG-16's five pools leave a band no "
           "rows, so it has none).\n",
           "| model | thr | variant | ms | x ORT dense | x torch eager | compile s | copies | "
           "placed well | ms placed well | x ORT placed well |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    tc_note = []
    spare = Path(tempfile.mkdtemp(prefix="npas-bench-copy-"))  # second copies: their own .so
    placement = core_pair(resolve_isa(), cache=cache)
    for name in ("resnet20", "vgg16", "mobilenetv2"):
        torch.manual_seed(0)
        model = build_model(name).eval()
        x = torch.randn(1, 3, 32, 32)
        for th in threads:
            torch.set_num_threads(th)
            fns: dict[str, Fn] = {"ORT dense": ort_fn(model, x, th) or (lambda: None)}

            def eager(model: nn.Module = model, x: torch.Tensor = x) -> object:
                with torch.no_grad():
                    return model(x)
            fns["torch eager"] = eager
            cts = {}
            if not quick or name == "resnet20":
                tcf, note = torch_compiled(model, x, 60.0)
                if tcf:
                    fns["torch.compile freezing"] = tcf
                    cts["torch.compile freezing"] = note
                else:
                    tc_note.append(f"{name} {th}T: torch.compile {note}")
            elif th == threads[0]:
                tc_note.append(f"{name}: torch.compile not attempted with --quick (ResNet-20 "
                               "alone takes 20-50 s to compile on this loaded machine)")
            variants = [("block", rate, "") for rate in (1, 2, 4, 8)]
            if name != "mobilenetv2":  # its only full 3x3 conv is the (unpruned) stem
                variants += [("pattern", 8, ""), ("unstructured", 10, "")]
            if th > 1:
                variants += [("block", rate, "adaptive") for rate in (1, 4, 8)]
                if name != "vgg16":
                    variants += [("block", rate, "banded") for rate in (1, 4, 8)]
                    variants += [("pattern", 8, "banded")] if name == "resnet20" else []
            for scheme, rate, mode in variants:
                key = ("ours dense" if rate == 1 else f"ours block 8x16 {rate}x"
                       if scheme == "block" else f"ours {scheme} {rate}x")
                key += f", {mode}" if mode else ""
                for copy, where in enumerate((cache, spare)):
                    fn, ct, _ = ours(model, x, model_masks(model, rate, scheme), th, where, mode)
                    fns[f"{key}#{copy}"] = fn
                cts[key] = f"{ct:.1f}"
            # at 2 threads twice the rounds: the well-placed subset is often a third of them
            rounds = batches(fns, 2.0 if quick else 5.0, min_rounds=8 * th,
                             placement=placement if th > 1 else None)
            r, spread = _merge_copies(medians(rounds))
            whole, on_two = _merge_copies(medians(rounds, placed_well=True))[0], _placed_well(rounds)
            for key, ms in r.items():
                two = "- | - | -"
                if th > 1:
                    w, ratio = whole[key], whole["ORT dense"] / whole[key]
                    two = (f"{on_two:.0%} | " + ("-" if math.isnan(w) else f"{w:.3f}") + " | "
                           + ("-" if math.isnan(ratio) else f"{ratio:.2f}x"))
                out.append(f"| {name} | {th} | {key} | {ms:.3f} | {r['ORT dense'] / ms:.2f}x | "
                           f"{r['torch eager'] / ms:.2f}x | {cts.get(key, '-')} | "
                           f"{spread.get(key, '-')} | {two} |")
            print("\n".join(out[-len(r):]), flush=True)
    if tc_note:
        out.append("\n" + "; ".join(tc_note) + ".")
    return out


def tune_rows(threads: list[int], quick: bool) -> list[str]:
    """Tuning time from scratch, recompile time with the log, and what tuning buys (4x)."""
    import tempfile

    from compiler_backend import TuningConfig
    from compiler_backend.tuning.base import KernelConfig
    from npas_env.zoo import build_model

    cfg = TuningConfig()
    out = ["\n## Auto-tuning (GA per layer over family / tile / threads)\n",
           f"`TuningConfig()` defaults: {cfg.generations} generations x {cfg.population} "
           f"candidates per layer, {cfg.repeats} timed runs each; block 8x16 at 4x. \"tuning s\" "
           "starts from an empty cache (gcc included); \"again s\" compiles the same model with "
           "the tuning log in place. Latencies measured interleaved with ORT dense, two copies "
           "of each library (geometric mean); `retuned` counts the layers whose tuned config "
           "differs from the untuned one (with none, `tuned / untuned` is the noise between "
           "identical programs).\n",
           "| model | thr | tuning s | again s | retuned | untuned ms | tuned ms | "
           "tuned / untuned | tuned x ORT dense |",
           "|---|---|---|---|---|---|---|---|---|"]
    spare = Path(tempfile.mkdtemp(prefix="npas-bench-copy-"))  # second copies: their own .so
    for name in ("resnet20",) if quick else ("resnet20", "mobilenetv2"):
        torch.manual_seed(0)
        model = build_model(name).eval()
        x = torch.randn(1, 3, 32, 32)
        masks = model_masks(model, 4)
        for th in threads:
            torch.set_num_threads(th)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                tuned = compile_model(model, x, masks, threads=th, tune=cfg, cache_dir=Path(tmp))
                t_tune = time.perf_counter() - t0
                t0 = time.perf_counter()
                compile_model(model, x, masks, threads=th, tune=cfg, cache_dir=Path(tmp))
                t_again = time.perf_counter() - t0
                untuned = compile_model(model, x, masks, threads=th, cache_dir=Path(tmp))
            tuned_as = {layer.name: layer.config for layer in tuned.report.layers}
            retuned = sum(layer.config != tuned_as[layer.name] for layer in untuned.report.layers)
            chosen = {layer: KernelConfig(**c) for layer, c in tuned_as.items()}
            copies = {"tuned#1": compile_model(model, x, masks, threads=th, configs=chosen,
                                               cache_dir=spare),
                      "untuned#1": compile_model(model, x, masks, threads=th, cache_dir=spare)}
            fns: dict[str, Fn] = {"ort": ort_fn(model, x, th) or (lambda: None)}
            for key, cm in {"tuned#0": tuned, "untuned#0": untuned, **copies}.items():
                cm.view(cm.graph.input).copy_(x[:1])
                fns[key] = cm._run_sample
            r = _merge_copies(interleaved(fns, 2.0 if quick else 5.0))[0]
            out.append(f"| {name} | {th} | {t_tune:.0f} | {t_again:.1f} | {retuned} of "
                       f"{len(chosen)} | {r['untuned']:.3f} | {r['tuned']:.3f} | "
                       f"{r['tuned'] / r['untuned']:.2f} | {r['ort'] / r['tuned']:.2f}x |")
            print(out[-1], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter timings, fewer sweep layers")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", default=None,
                    help="markdown file (default docs/benchmarks/compiler.md for a full run; "
                         "a --sections / --schemes subset is only printed unless --out is given)")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=SECTIONS,
                    help="run only these parts (the machine-limit probe always runs)")
    ap.add_argument("--schemes", nargs="+", default=None,
                    help="sweep variants to run: block pattern unstructured filter (default all)")
    args = ap.parse_args()
    full = args.sections == SECTIONS and args.schemes is None
    out_path = args.out or ("docs/benchmarks/compiler.md" if full else None)
    warnings.filterwarnings("ignore")
    cache = Path(args.cache) if args.cache else None
    start = time.perf_counter()
    isa = resolve_isa()
    load0 = os.getloadavg()[0]
    peak = measure_peak(isa, tuple(args.threads), cache=cache)
    lines = ["# Compiler backend benchmark\n",
             f"- machine: {machine_summary()}",
             f"- CPU: {cpu_model()}; ISA used by the generator: **{isa.name}** "
             f"({isa.lanes} fp32 lanes, P*V <= {isa.max_acc} accumulators)",
             f"- command: `python {' '.join(sys.argv)}`",
             "",
             "## Machine limits measured at the start of this run (best of 3)\n",
             f"Core clock {peak.clock_ghz:.2f} GHz (dependent integer adds). FLOP/cycle/core = "
             f"FMA peak / threads / clock: {4 * isa.lanes} is the most a core with 2 FMA pipes "
             f"of {isa.lanes} lanes can do.\n",
             "| threads | FMA peak GFLOP/s | FLOP/cycle/core | DRAM GB/s (256 MB) | "
             "L2 GB/s (256 KB/thread) |",
             "|---|---|---|---|---|"]
    for th in args.threads:
        lines.append(f"| {th} | {peak.gflops[th]:.1f} | {peak.flop_per_cycle(th):.1f} | "
                     f"{peak.dram_gbs[th]:.1f} | {peak.l2_gbs[th]:.1f} |")
    print("\n".join(lines), flush=True)
    lines.append("")
    if "layers" in args.sections:
        lines += layer_rows(peak, args.threads, cache, args.quick)
    if "sweep" in args.sections:
        lines += sweep_rows(1, cache, args.quick, args.schemes)
    if "e2e" in args.sections:
        lines += e2e_rows(args.threads, cache, args.quick)
    if "tune" in args.sections:
        lines += tune_rows(args.threads, args.quick)
    load1 = os.getloadavg()[0]
    lines.insert(4, f"- load average (1 min) at start / end: {load0:.1f} / {load1:.1f} on "
                    f"{os.cpu_count()} vCPUs; run took {time.perf_counter() - start:.0f} s")
    text = "\n".join(lines) + "\n"
    print(text)
    if out_path:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(text)


if __name__ == "__main__":
    main()
