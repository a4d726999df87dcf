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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler_backend.toolchain import find_compiler  # noqa: E402

#: C text shared with ``bench_thread_sharing``: a monotonic clock and a two-thread spin
#: barrier (each thread keeps its own ``sense`` count).
SPIN_BARRIER_C = r"""static volatile long bar __attribute__((aligned(64)));
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
"""

_SOURCE = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define NB 16
static float* buf[NB];
static int C, P, S, MODE, ROW, STEPS = 16, REPS = 2000;
static long BS;
""" + SPIN_BARRIER_C + r"""static void add(float* restrict y, const float* restrict x, const float* restrict x2, int n) {
  if (x2) for (int i = 0; i < n; ++i) y[i] = x[i] + x2[i];
  else for (int i = 0; i < n; ++i) y[i] = x[i] + 1.f;
}
/* Part t of a split whose shares lie in pages of their own (modes 4-7): half of each plane of
   P floats (rows of ROW floats). 4: two bands (each thread's half-planes contiguous, plane stride
   S = P / 2 + ROW, band stride BS), each part writing its boundary row into the other band's
   halo row; 5: the same bands, the boundary rows passed through a mailbox page per direction
   (copied into the band's halo row by its reader); 6: planes in 8 KB slots whose halves lie on
   either side of a page boundary; 7: 6, each part also reading the row across the boundary. */
static void part(int t, const float* X, float* Y) {
  const int half = P / 2;
  if (MODE == 4 || MODE == 5) {
    const float* xb = X + (long)t * BS; float* yb = Y + (long)t * BS;
    const float* in = X + 2 * BS + (long)(1 - t) * 1024; float* out = Y + 2 * BS + (long)t * 1024;
    for (int c = 0; c < C; ++c) {
      const float* x = xb + (long)c * S; float* y = yb + (long)c * S;
      if (MODE == 5) memcpy((float*)x + half, in + c * ROW, ROW * sizeof(float));
      add(y, x, 0, half);
      add(y + (t ? 0 : half - ROW), x + (t ? 0 : half - ROW), x + half, ROW);  /* the halo */
      float* dst = MODE == 5 ? out + c * ROW : Y + (long)(1 - t) * BS + (long)c * S + half;
      memcpy(dst, y + (t ? 0 : half - ROW), ROW * sizeof(float));
    }
  } else {
    for (int c = 0; c < C; ++c) {
      const float* x = X + (long)c * 2048 + 1024 - half + t * half;
      float* y = Y + (long)c * 2048 + 1024 - half + t * half;
      add(y, x, 0, half);
      if (MODE == 7) add(y + (t ? 0 : half - ROW), x + (t ? 0 : half - ROW), t ? x - ROW : x + half, ROW);
    }
  }
}
static void work(int tid, int s, int nt) {
  const float* X = buf[s % NB]; float* Y = buf[(s + 1) % NB];
  if (MODE >= 4) {  /* 1 thread does both parts */
    for (int t = nt > 1 ? tid : 0; t < (nt > 1 ? tid + 1 : 2); ++t) part(t, X, Y);
  } else if (MODE == 0 || MODE == 3) {  /* rows of each plane; 3: the parts change hands every step */
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
  ROW = argc > 5 ? atoi(argv[5]) : 0;
  BS = ((long)C * S + 1023) / 1024 * 1024;  /* a band, in whole pages of floats */
  const long n = MODE == 4 || MODE == 5 ? 2 * BS + 2048 : MODE >= 6 ? 2048L * C : (long)C * S;
  for (int i = 0; i < NB; ++i) {
    buf[i] = aligned_alloc(4096, ((size_t)n * 4 + 4095) / 4096 * 4096);
    memset(buf[i], 0, (size_t)n * 4);
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

#: (label, channels, floats used per plane, plane stride in floats, mode, row width in floats)
CASES = [
    ("halves (64 KB)", 1, 16384, 16384, 0, 0),
    ("halves swapped every step (64 KB)", 1, 16384, 16384, 3, 0),
    ("rows of each plane (16 x 34 x 34)", 16, 1156, 1156, 0, 0),
    ("whole planes (16 x 34 x 34)", 16, 1156, 1156, 1, 0),
    ("whole planes + a foreign plane (16 x 34 x 34)", 16, 1156, 1156, 2, 0),
    ("rows of each plane, 4 KB planes", 16, 1024, 1024, 0, 0),
    ("rows of each plane, 4 KB planes + 2 KB gap", 16, 1024, 1536, 0, 0),
    ("rows of each plane, 8 KB planes (page halves)", 16, 2048, 2048, 0, 0),
    ("whole planes, 8 KB planes", 16, 2048, 2048, 1, 0),
    ("bands, halo rows written into the other band (16 x 34 x 34)", 16, 1156, 612, 4, 34),
    ("bands, halo rows through mailbox pages (16 x 34 x 34)", 16, 1156, 612, 5, 34),
    ("halves of 8 KB plane slots split on a page (16 x 34 x 34)", 16, 1156, 2048, 6, 34),
    ("the same, each half reading the row across (16 x 34 x 34)", 16, 1156, 2048, 7, 34),
]


def run(out: Path | None, rounds: int = 5) -> str:
    """Compile the loop, run every case ``rounds`` times (cases interleaved: the host moves
    the vCPUs every second or two), return (and optionally write) the markdown table."""
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs 2 CPUs")
    times: dict[str, list[tuple[float, float]]] = {case[0]: [] for case in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "cross_core.c", Path(tmp) / "cross_core"
        src.write_text(_SOURCE)
        subprocess.run([find_compiler(), "-O3", "-march=native", "-pthread", "-o", str(exe),
                        str(src)], check=True)
        for _ in range(rounds):
            for label, *args in CASES:
                res = subprocess.run([str(exe), *map(str, args)], check=True,
                                     capture_output=True, text=True).stdout.split()
                times[label].append((float(res[0]), float(res[1])))
    rows = []
    for label, c, p, *_ in CASES:
        one = statistics.median(t[0] for t in times[label])
        twos = sorted(t[1] for t in times[label])
        two = statistics.median(twos)
        rows.append(f"| {label} | {4 * c * p // 1024} | {one:.2f} | {two:.2f} | "
                    f"{twos[0]:.2f}-{twos[-1]:.2f} | {one / two:.2f}x |")
        print(rows[-1], flush=True)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    text = "\n".join([
        "# Cross-core cost of a 2-thread split",
        "",
        f"- machine: {cpu}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- command: `python benchmarks/bench_cross_core.py --rounds {rounds} --out ...`",
        "- 16 steps over a ring of buffers, a spin barrier per step, best of 3 x 2000 rounds "
        f"per run; {rounds} runs per case, the cases interleaved; `us / step` at 1 and 2 "
        "threads is the median over the runs (range: 2 threads); speedup = 1 thread / 2 threads.",
        "",
        "| split | KB per buffer | 1 thread us / step | 2 threads us / step | 2 threads range | speedup |",
        "|---|---|---|---|---|---|",
        *rows, ""])
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument("--rounds", type=int, default=5, help="runs per case (interleaved)")
    args = ap.parse_args()
    run(args.out, args.rounds)


if __name__ == "__main__":
    main()
