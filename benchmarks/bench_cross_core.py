"""How much a 2-thread split of a layer costs when its data moves between the cores.

A C loop runs 16 steps over a ring of buffers, each step reading one buffer and writing the
next (``y = x + 1``, or ``y = x + x'`` with a second plane), with a spin barrier between steps,
on 1 thread and on 2. The cases are the ways a conv's work can be split between two threads:

- ``halves``: each thread keeps the same contiguous half of every buffer;
- ``halves swapped``: the halves change hands every step (everything crosses);
- ``rows of each plane``: each thread owns the top or bottom part of every channel plane (the
  runtime's split by output pixels);
- ``whole planes``: each thread owns whole channel planes (a split by output channels);
- ``whole planes + a foreign plane``: the same, each plane also reading one the other thread
  wrote (a conv reads every input channel);
- the per-plane split with a gap after each plane, and with 8 KB planes whose halves are pages.

Usage: ``python benchmarks/bench_cross_core.py [--out docs/benchmarks/cross_core.md]``. Needs a
C compiler and 2 CPUs; takes a few seconds. Findings: ``docs/ARCHITECTURE.md`` (work split).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler_backend.toolchain import find_compiler  # noqa: E402

_SOURCE = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define NB 16
static float* buf[NB];
static int C, P, S, MODE, STEPS = 16, REPS = 2000;
static volatile long bar __attribute__((aligned(64)));
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9; }
static void barrier(long* sense) {
  const long s = ++(*sense);
  __atomic_fetch_add(&bar, 1, __ATOMIC_ACQ_REL);
  while (__atomic_load_n(&bar, __ATOMIC_ACQUIRE) < 2 * s) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }
}
static void add(float* restrict y, const float* restrict x, const float* restrict x2, int n) {
  if (x2) for (int i = 0; i < n; ++i) y[i] = x[i] + x2[i];
  else for (int i = 0; i < n; ++i) y[i] = x[i] + 1.f;
}
static void work(int tid, int s, int nt) {
  const float* X = buf[s % NB]; float* Y = buf[(s + 1) % NB];
  if (MODE == 0 || MODE == 3) {  /* rows of each plane; 3: the parts change hands every step */
    const int t = MODE == 3 && (s & 1) ? nt - 1 - tid : tid;
    const int lo = P * t / nt, hi = P * (t + 1) / nt;
    for (int c = 0; c < C; ++c) add(Y + (long)c * S + lo, X + (long)c * S + lo, 0, hi - lo);
  } else {  /* whole planes; 2: each also reads the plane half the channels away */
    for (int c = C * tid / nt; c < C * (tid + 1) / nt; ++c)
      add(Y + (long)c * S, X + (long)c * S, MODE == 2 ? X + (long)((c + C / 2) % C) * S : 0, P);
  }
}
static void* team(void* a) {
  const int tid = (int)(long)a; long sense = 0;
  for (int r = 0; r < REPS; ++r)
    for (int s = 0; s < STEPS; ++s) { work(tid, s, 2); barrier(&sense); }
  return 0;
}
int main(int argc, char** argv) {
  C = atoi(argv[1]); P = atoi(argv[2]); S = atoi(argv[3]); MODE = atoi(argv[4]);
  for (int i = 0; i < NB; ++i) {
    buf[i] = aligned_alloc(4096, ((size_t)C * S * 4 + 4095) / 4096 * 4096);
    memset(buf[i], 0, (size_t)C * S * 4);
  }
  double best1 = 1e9, best2 = 1e9;
  for (int k = 0; k < 3; ++k) {
    double t0 = now();
    for (int r = 0; r < REPS; ++r) for (int s = 0; s < STEPS; ++s) work(0, s, 1);
    double t = (now() - t0) / REPS / STEPS; if (t < best1) best1 = t;
    pthread_t th; bar = 0; t0 = now();
    pthread_create(&th, 0, team, (void*)1L); team((void*)0L); pthread_join(th, 0);
    t = (now() - t0) / REPS / STEPS; if (t < best2) best2 = t;
  }
  printf("%.3f %.3f\n", best1 * 1e6, best2 * 1e6);
  return 0;
}
"""

#: (label, channels, floats used per plane, plane stride in floats, mode)
CASES = [
    ("halves (64 KB)", 1, 16384, 16384, 0),
    ("halves swapped every step (64 KB)", 1, 16384, 16384, 3),
    ("rows of each plane (16 x 34 x 34)", 16, 1156, 1156, 0),
    ("whole planes (16 x 34 x 34)", 16, 1156, 1156, 1),
    ("whole planes + a foreign plane (16 x 34 x 34)", 16, 1156, 1156, 2),
    ("rows of each plane, 4 KB planes", 16, 1024, 1024, 0),
    ("rows of each plane, 4 KB planes + 2 KB gap", 16, 1024, 1536, 0),
    ("rows of each plane, 8 KB planes (page halves)", 16, 2048, 2048, 0),
    ("whole planes, 8 KB planes", 16, 2048, 2048, 1),
]


def run(out: Path | None) -> str:
    """Compile the loop, run every case, return (and optionally write) the markdown table."""
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "cross_core.c", Path(tmp) / "cross_core"
        src.write_text(_SOURCE)
        subprocess.run([find_compiler(), "-O3", "-march=native", "-pthread", "-o", str(exe),
                        str(src)], check=True)
        rows = []
        for label, c, p, s, mode in CASES:
            res = subprocess.run([str(exe), str(c), str(p), str(s), str(mode)], check=True,
                                 capture_output=True, text=True).stdout.split()
            one, two = float(res[0]), float(res[1])
            rows.append(f"| {label} | {4 * c * p // 1024} | {one:.2f} | {two:.2f} | "
                        f"{one / two:.2f}x |")
            print(rows[-1], flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    text = "\n".join([
        "# Cross-core cost of a 2-thread split",
        "",
        f"- machine: {cpu}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "- command: `python benchmarks/bench_cross_core.py --out docs/benchmarks/cross_core.md`",
        "- 16 steps over a ring of buffers, a spin barrier per step, best of 3 x 2000 rounds; "
        "`us / step` at 1 and 2 threads; speedup = 1 thread / 2 threads.",
        "",
        "| split | KB per buffer | 1 thread us / step | 2 threads us / step | speedup |",
        "|---|---|---|---|---|",
        *rows, ""])
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    run(ap.parse_args().out)


if __name__ == "__main__":
    main()
