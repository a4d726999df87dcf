"""What two threads lose to sharing memory, on the real generated code of a pruned model.

The 2-thread library of a model runs each parallel step as slices (``seg_0_slice``). A small
C driver runs them on two threads pinned to CPUs 0 and 1, thread 0 taking the first half of
each step's slices and thread 1 the rest (what the runtime's two-ended grab gives when both
threads arrive in time), with a spin barrier after each step. It times, per run of the model:

- ``shared``: both threads on one arena, as the runtime does;
- ``private copies``: thread 1 on a copy of the arena, so no line moves between the cores
  (its inputs are stale; the work and the barriers are the same). The gap to ``shared`` is
  what cross-core traffic costs, and the most any layout or split could win back;
- ``thread 0 alone``: thread 0's slices while thread 1 only keeps the barriers;
- ``one thread, both``: thread 0 runs every slice (the 2-thread split on one core);
- ``runtime``: the library's own entry at 2 threads and at 1 (the worker pool), and the
  banded library (``compile_model(..., banded=True)``: each thread on its own half of the rows
  in an arena of its own, one row per map pushed to the other; ``-`` where the model does not
  fit bands).

Rounds are interleaved, each bracketed by ``peak.core_pair`` (how the host places the two
vCPUs now: a line's round trip between them swings from about 60 to 900 ns by the hour). The
table gives medians over the rounds placed near (both readings whole cores, round trips within
``CorePair.whole_and_near``'s 200 ns; all rounds where none was), min-max in brackets.

Usage: ``python benchmarks/bench_thread_sharing.py [--out docs/benchmarks/thread_sharing.md]``
(about two minutes; ``--models``, ``--variants block:8 pattern:8``, ``--rounds``). With
``--steps``, a table per model and variant of each step of the 2-thread library in the four
driver modes (``measure_steps``): where the sharing loss sits (session 34 found MobileNetV2's
8x8 project convs losing 5-10 us each at block 4x this way, ``compiler_backend.split_k``).
Needs a C compiler and 2 CPUs.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_compiler import model_masks  # noqa: E402
from benchmarks.bench_cross_core import SPIN_BARRIER_C  # noqa: E402
from benchmarks.machine import machine_summary  # noqa: E402
from compiler_backend import compile_model  # noqa: E402
from compiler_backend.compile import resolve_isa  # noqa: E402
from compiler_backend.peak import CorePair, core_pair  # noqa: E402
from compiler_backend.runtime import CompiledModel, aligned_floats  # noqa: E402
from compiler_backend.toolchain import find_compiler  # noqa: E402
from npas_env.errors import InvalidConfig  # noqa: E402
from npas_env.zoo import build_model  # noqa: E402

_DRIVER = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <time.h>
typedef void (*slice_fn)(int, int, const float*, const int*, float*);
typedef int (*slices_fn)(int);
static slice_fn SL; static slices_fn NS; static int N, MODE, REPS;
static const float* W; static const int* I; static float* A[2];
static double result; static double* T;  /* T: per-step seconds summed by thread 0, or 0 */
""" + SPIN_BARRIER_C + r"""/* slices [lo, hi) of step s: thread 0 the first ceil(G / 2), thread 1 the rest */
static void share(int s, int t, float* a) {
  const int G = NS(s), h = (G + 1) / 2;
  for (int g = t ? h : 0; g < (t ? G : h); ++g) SL(s, g, W, I, a);
}
static void* thread(void* arg) {
  const int t = (int)(long)arg; long sense = 0;
  cpu_set_t cs; CPU_ZERO(&cs); CPU_SET(t, &cs);
  (void)pthread_setaffinity_np(pthread_self(), sizeof cs, &cs);
  barrier(&sense);
  const double t0 = now();
  for (int r = 0; r < REPS; ++r)
    for (int s = 0; s < N; ++s) {
      const double t1 = T && t == 0 ? now() : 0.0;
      if (MODE == 0) share(s, t, A[0]);                      /* shared */
      else if (MODE == 1) share(s, t, A[t]);                 /* private copies */
      else if (t == 0) { share(s, 0, A[0]); if (MODE == 3) share(s, 1, A[0]); }
      barrier(&sense);
      if (T && t == 0) T[s] += now() - t1;
    }
  if (t == 0) result = (now() - t0) / REPS;
  return 0;
}
double run(int mode, int reps, slice_fn sl, slices_fn ns, int n, const float* w, const int* i,
           float* a, float* a2, double* steps) {
  SL = sl; NS = ns; N = n; MODE = mode; REPS = reps; W = w; I = i; A[0] = a; A[1] = a2; bar = 0;
  T = steps;
  pthread_t th[2];
  for (long t = 0; t < 2; ++t) pthread_create(&th[t], 0, thread, (void*)t);
  for (int t = 0; t < 2; ++t) pthread_join(th[t], 0);
  return result;
}
"""

MODES = ("shared", "private copies", "thread 0 alone", "one thread, both")
COLUMNS = MODES + ("runtime, 2 threads", "runtime, 1 thread", "runtime, banded")


def driver() -> ctypes.CDLL:
    """Compile and load the C driver."""
    d = Path(tempfile.mkdtemp())
    (d / "driver.c").write_text(_DRIVER)
    subprocess.run([find_compiler(), "-O2", "-shared", "-fPIC", "-o", str(d / "driver.so"),
                    str(d / "driver.c"), "-lpthread"], check=True)
    lib = ctypes.CDLL(str(d / "driver.so"))
    lib.run.restype = ctypes.c_double
    lib.run.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                        ctypes.c_int] + [ctypes.c_void_p] * 5
    return lib


def per_call_us(fn, seconds: float = 0.3) -> float:
    """Mean us per call of ``fn`` over about ``seconds``."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n * 1e6


def _slices(two: CompiledModel) -> tuple[int, int, int, list[int], object]:
    """The driver's view of a 2-thread library: its slice and slice-count entries, step count,
    and the pointers of its weights, ints, arena and a private copy of the arena (returned
    too: it must outlive the runs)."""
    dll = two._lib
    copy = aligned_floats(two._arena.size)
    copy[:] = two._arena
    return (ctypes.cast(dll.seg_0_slice, ctypes.c_void_p).value or 0,
            ctypes.cast(dll.seg_0_slices, ctypes.c_void_p).value or 0, dll.seg_0_nsteps(),
            [two._weights.ctypes.data, two._ints.ctypes.data, two._arena.ctypes.data,
             copy.ctypes.data], copy)


def _library(model_name: str, variant: str, cache: Path, threads: int,
             banded: bool = False) -> CompiledModel:
    """The model pruned as ``variant`` (``scheme:rate``), compiled, its input set."""
    scheme, rate = variant.split(":")
    torch.manual_seed(0)
    model = build_model(model_name).eval()
    x = torch.randn(1, 3, 32, 32)
    cm = compile_model(model, x, model_masks(model, float(rate), scheme), threads=threads,
                       cache_dir=cache, banded=banded)
    cm.view(cm.graph.input).copy_(x[:1])
    return cm


def measure_steps(lib: ctypes.CDLL, model_name: str, variant: str,
                  rounds: int) -> tuple[CompiledModel, dict[str, np.ndarray]]:
    """us per step of the 2-thread library in each driver mode (thread 0's clock from the
    step's start to the barrier after it), medians over ``rounds`` (no placement filter:
    run it while the vCPUs are placed near, ``peak.core_pair``)."""
    two = _library(model_name, variant, Path(tempfile.mkdtemp()), threads=2)
    if len(two.program.segments) != 1:
        raise SystemExit(f"{model_name}: PyTorch fallbacks split the program; not supported")
    two._run_sample()
    sl, ns, n, ptrs, _copy = _slices(two)
    reps = max(50, int(0.3e6 / max(1.0, per_call_us(two._run_sample, 0.1))))
    per: dict[str, list[np.ndarray]] = {m: [] for m in MODES}
    for _ in range(rounds):
        for m, name in enumerate(MODES):
            t = np.zeros(n)
            lib.run(m, reps, sl, ns, n, *ptrs, t.ctypes.data)
            per[name].append(t / reps * 1e6)
    return two, {m: np.median(np.array(v), axis=0) for m, v in per.items()}


def steps_table(two: CompiledModel, times: dict[str, np.ndarray]) -> list[str]:
    """Markdown: one row per step (its op, kernel family, us in each mode, the share lost)."""
    dll, prog = two._lib, two.program
    family = {layer.name: layer.family for layer in two.report.layers}
    out = ["| step | op | family | " + " | ".join(MODES) + " | lost to sharing (us) |",
           "|---" * (4 + len(MODES)) + "|"]
    for s in range(dll.seg_0_nsteps()):
        k = dll.seg_0_step_op(s)
        name = prog.op_names[k]
        cells = " | ".join(f"{times[m][s]:.1f}" for m in MODES)
        out.append(f"| {s} | {name} | {family.get(name, prog.op_kinds[k])} | {cells} | "
                   f"{times['shared'][s] - times['private copies'][s]:.1f} |")
    total = " | ".join(f"**{times[m].sum():.1f}**" for m in MODES)
    lost = times["shared"].sum() - times["private copies"].sum()
    out.append(f"| all | | | {total} | **{lost:.1f}** |")
    return out


def measure(lib: ctypes.CDLL, placement: Callable[[], CorePair], model_name: str, variant: str,
            rounds: int) -> tuple[dict[str, list[float]], list[float], int]:
    """us per run of each column over the rounds placed near (all if none was), the worse
    round trip (ns) around each round, and how many rounds were placed near."""
    cache = Path(tempfile.mkdtemp())
    two = _library(model_name, variant, cache, threads=2)
    one = _library(model_name, variant, cache, threads=1)
    try:
        banded = _library(model_name, variant, cache, threads=2, banded=True)
    except InvalidConfig:
        banded = None
    if len(two.program.segments) != 1:
        raise SystemExit(f"{model_name}: PyTorch fallbacks split the program; not supported")
    for cm in (two, one) + ((banded,) if banded else ()):
        cm._run_sample()
    sl, ns, n, ptrs, _copy = _slices(two)
    reps = max(50, int(0.3e6 / max(1.0, per_call_us(two._run_sample, 0.1))))
    out: dict[str, list[float]] = {c: [] for c in COLUMNS}
    well: list[bool] = []
    trips: list[float] = []
    for _ in range(rounds):
        before = placement()
        for m, name in enumerate(MODES):
            out[name].append(lib.run(m, reps, sl, ns, n, *ptrs, None) * 1e6)
        out["runtime, 2 threads"].append(per_call_us(two._run_sample))
        out["runtime, 1 thread"].append(per_call_us(one._run_sample))
        out["runtime, banded"].append(per_call_us(banded._run_sample) if banded else math.nan)
        after = placement()
        well.append(before.whole_and_near() and after.whole_and_near())
        trips.append(max(before.round_trip_ns, after.round_trip_ns))
    if any(well):
        out = {c: [v for v, w in zip(vs, well, strict=True) if w] for c, vs in out.items()}
    return out, trips, sum(well)


def table(rows: list[tuple[str, str, tuple[dict[str, list[float]], list[float], int]]]) -> list[str]:
    """Markdown: medians [min-max] per column, the share lost to sharing, the placement."""
    out = ["| model | variant | " + " | ".join(COLUMNS)
           + " | lost to sharing | rounds placed near | round trip ns |",
           "|---" * (5 + len(COLUMNS)) + "|"]
    for model, variant, (t, trips, nwell) in rows:
        med = {c: statistics.median(v) for c, v in t.items()}
        cells = ["-" if math.isnan(med[c]) else f"{med[c]:.1f} [{min(t[c]):.1f}-{max(t[c]):.1f}]"
                 for c in COLUMNS]
        lost = 1 - med["private copies"] / med["shared"]
        out.append(f"| {model} | {variant} | " + " | ".join(cells) + f" | {lost:.0%} | "
                   f"{nwell} of {len(trips)} | {statistics.median(trips):.0f} |")
    return out


def run(models: list[str], variants: list[str], rounds: int, out: Path | None) -> str:
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("needs 2 CPUs")
    lib, placement = driver(), core_pair(resolve_isa())
    t0 = time.time()
    rows = [(m, v, measure(lib, placement, m, v, rounds)) for m in models for v in variants]
    text = "\n".join([
        "# What two threads lose to sharing memory",
        "",
        f"- {machine_summary()}",
        f"- command: `python benchmarks/bench_thread_sharing.py --rounds {rounds} "
        f"--models {' '.join(models)} --variants {' '.join(variants)}` ({time.time() - t0:.0f} s)",
        "- us per run of the model, batch 1; medians over the rounds [min-max]. The first four "
        "columns run the 2-thread library's steps slice by slice from a C driver (threads pinned "
        "to CPUs 0 and 1, a spin barrier per step); `lost to sharing` = 1 - private copies / "
        "shared. See the module docstring of the benchmark for each column.",
        "",
        *table(rows),
        "",
    ])
    if out:
        out.write_text(text)
    return text


def run_steps(models: list[str], variants: list[str], rounds: int, out: Path | None) -> str:
    """The per-step tables (``measure_steps``), one per model and variant."""
    lib, placement = driver(), core_pair(resolve_isa())
    t0 = time.time()
    parts = []
    for m in models:
        for v in variants:
            before = placement()
            two, times = measure_steps(lib, m, v, rounds)
            after = placement()
            trip = max(before.round_trip_ns, after.round_trip_ns)
            parts += [f"## {m} {v}", "", f"Round trip between the vCPUs before / after: "
                      f"{before.round_trip_ns:.0f} / {after.round_trip_ns:.0f} ns"
                      + (" (placed far: read with care)" if trip > 200 else "") + ".", "",
                      *steps_table(two, times), ""]
    text = "\n".join([
        "# What two threads lose to sharing memory, step by step",
        "",
        f"- {machine_summary()}",
        f"- command: `python benchmarks/bench_thread_sharing.py --steps --rounds {rounds} "
        f"--models {' '.join(models)} --variants {' '.join(variants)}` ({time.time() - t0:.0f} s)",
        "- us per step of the 2-thread library, thread 0's clock from the step's start to the "
        "barrier after it, medians over the rounds; columns as in the whole-model table "
        "(module docstring). An op of several steps (a pad before its kernel, a crop or a "
        "split-K sum after it) has a row per step.",
        "",
        *parts,
    ])
    if out:
        out.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["resnet20", "mobilenetv2"])
    ap.add_argument("--variants", nargs="+", default=["block:8", "pattern:8"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--steps", action="store_true",
                    help="per step of the 2-thread library instead of per run of the model")
    a = ap.parse_args()
    print((run_steps if a.steps else run)(a.models, a.variants, a.rounds, a.out))


if __name__ == "__main__":
    main()
