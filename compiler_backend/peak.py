"""Measure this machine's FP32 FMA peak and memory bandwidth (quick, for fraction-of-peak).

A tiny generated C library holds the probes, compiled with the backend's toolchain:

* ``fma_team``: 12 independent vector FMA chains (enough to cover 2 pipes x 4-6 cycles of
  latency) in a long loop, on ``nt`` threads at once, each on its own CPU; reports GFLOP/s
  summed over the threads (and the slowest thread's). Every chain passes through an empty
  ``asm`` each iteration: the chains compute the same values, and without that gcc merged
  six of them into one (the loop did 7 FMAs and the probe reported 12: 140 "GFLOP/s" on a
  core whose 2 FMA pipes x 8 lanes x 3.15 GHz give 101).
* ``clock_ghz``: a chain of dependent register-register adds (one per cycle on every current
  core; Golden Cove folds adds of an immediate at rename: 10.1 "GHz" on a 2.6 GHz core), so
  the FMA figure can be read as FLOP per cycle and checked against the core's pipes.
* ``bandwidth``: ``b[i] = a[i] * s + b[i]`` over two arrays (2 loads + 1 store per element);
  bytes counted as 12 per element. A 256 MB working set gives DRAM, 256 KB gives L2.
* ``round_trip_ns``: one cache line passed back and forth between the caller and a thread on
  another CPU.

Every probe runs a few times and keeps the best, so a busy machine still gives a useful
upper bound (and the report states the load average next to it).

``core_pair`` reads how the host places the two vCPUs *now* (a shared physical core, or
cores far apart): every 2-thread timing of such a moment measures the host, not the code.
"""

from __future__ import annotations

import ctypes
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from compiler_backend.isa import Isa, prelude
from compiler_backend.kernels import PAUSE_MACRO
from compiler_backend.toolchain import compile_source

_SOURCE = r"""
#include <pthread.h>
#include <sched.h>
#include <time.h>

static double now_s(void) {
  struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec;
}

static float fma_chains(long iters) {
  vf a0 = VSET1(1.f), a1 = VSET1(1.f), a2 = VSET1(1.f), a3 = VSET1(1.f), a4 = VSET1(1.f),
     a5 = VSET1(1.f), a6 = VSET1(1.f), a7 = VSET1(1.f), a8 = VSET1(1.f), a9 = VSET1(1.f),
     a10 = VSET1(1.f), a11 = VSET1(1.f);
  const vf m = VSET1(0.999999f), c = VSET1(1e-7f);
  for (long i = 0; i < iters; ++i) {
    __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5));
    __asm__ volatile("" : "+x"(a6), "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
    a0 = VFMA(a0, m, c); a1 = VFMA(a1, m, c); a2 = VFMA(a2, m, c); a3 = VFMA(a3, m, c);
    a4 = VFMA(a4, m, c); a5 = VFMA(a5, m, c); a6 = VFMA(a6, m, c); a7 = VFMA(a7, m, c);
    a8 = VFMA(a8, m, c); a9 = VFMA(a9, m, c); a10 = VFMA(a10, m, c); a11 = VFMA(a11, m, c);
  }
  vf s = VADD(VADD(VADD(a0, a1), VADD(a2, a3)), VADD(VADD(a4, a5), VADD(a6, a7)));
  s = VADD(s, VADD(VADD(a8, a9), VADD(a10, a11)));
  float tmp[VL]; VSTORE(tmp, s);
  float sink = 0.f;
  for (int i = 0; i < VL; ++i) sink += tmp[i];
  return sink;
}

/* The k-th CPU (from 0) the process could use when the library was loaded, other than the
   caller's (a timing loop may since hold the caller on one CPU); -1 if there is none. */
#ifdef __linux__
static cpu_set_t load_mask;
__attribute__((constructor)) static void read_load_mask(void) {
  if (sched_getaffinity(0, sizeof load_mask, &load_mask) != 0) CPU_ZERO(&load_mask);
}
static int other_cpu(int k) {
  const int here = sched_getcpu();
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &load_mask) && c != here && k-- == 0) return c;
  return -1;
}
static void pin_self(int cpu) {
  if (cpu < 0) return;
  cpu_set_t m; CPU_ZERO(&m); CPU_SET(cpu, &m);
  (void)pthread_setaffinity_np(pthread_self(), sizeof m, &m);
}
#else
static int other_cpu(int k) { (void)k; return -1; }
static void pin_self(int cpu) { (void)cpu; }
#endif

typedef struct { long iters; int cpu; int* go; int* ready; double secs; float sink; } team_arg;

static void* team_member(void* p) {
  team_arg* a = (team_arg*)p;
  pin_self(a->cpu);
  __atomic_fetch_add(a->ready, 1, __ATOMIC_RELEASE);
  while (!__atomic_load_n(a->go, __ATOMIC_ACQUIRE)) {}
  const double t0 = now_s();
  a->sink = fma_chains(a->iters);
  a->secs = now_s() - t0;
  return 0;
}

typedef struct { long n; int cpu; long* flag; } bounce_arg;

static void* bounce_back(void* p) {
  bounce_arg* a = (bounce_arg*)p;
  pin_self(a->cpu);
  for (long v = 1; v < 2 * a->n; v += 2) {
    while (__atomic_load_n(a->flag, __ATOMIC_ACQUIRE) != v) NPAS_PAUSE();
    __atomic_store_n(a->flag, v + 1, __ATOMIC_RELEASE);
  }
  return 0;
}

/* Nanoseconds per round trip of one cache line between the caller and a thread on another
   CPU (``n`` trips, after 64 untimed ones); -1 when there is no other CPU. */
double round_trip_ns(long n) {
  static long flag __attribute__((aligned(64)));
  const int cpu = other_cpu(0);
  if (cpu < 0 || n < 1) return -1.0;
  const long warm = 64;
  bounce_arg a = {n + warm, cpu, &flag};
  pthread_t id;
  __atomic_store_n(&flag, 0L, __ATOMIC_RELEASE);
  if (pthread_create(&id, 0, bounce_back, &a) != 0) return -1.0;
  double t0 = 0.0;
  for (long v = 0; v < 2 * a.n; v += 2) {
    if (v == 2 * warm) t0 = now_s();
    __atomic_store_n(&flag, v + 1, __ATOMIC_RELEASE);
    while (__atomic_load_n(&flag, __ATOMIC_ACQUIRE) != v + 2) NPAS_PAUSE();
  }
  const double dt = now_s() - t0;
  pthread_join(id, 0);
  return dt / n * 1e9;
}

/* ``nt`` threads (the caller and nt - 1 new ones, each on its own CPU other than the caller's
   where the process has enough) run the FMA loop at once; returns the summed GFLOP/s and the
   slowest thread's in ``slowest``. No thread outlives the call, so nothing idles or spins
   around the runtimes timed next to it (an OpenMP team would). */
double fma_team(int nt, long iters, double* slowest) {
  team_arg args[64]; pthread_t ids[64]; int go = 0, ready = 1;
  if (nt < 1 || nt > 64) return -1.0;
  for (int t = 0; t < nt; ++t) {
    args[t].iters = iters; args[t].go = &go; args[t].ready = &ready; args[t].secs = 0.0;
    args[t].cpu = t == 0 ? -1 : other_cpu(t - 1);
    if (t > 0 && pthread_create(&ids[t], 0, team_member, &args[t]) != 0) { nt = t; break; }
  }
  /* start together: a new thread takes milliseconds to start and move to its CPU here */
  while (__atomic_load_n(&ready, __ATOMIC_ACQUIRE) < nt) sched_yield();
  __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
  team_member(&args[0]);
  double total = 0.0, low = 1e300; float sink = 0.f;
  for (int t = 0; t < nt; ++t) {
    if (t > 0) pthread_join(ids[t], 0);
    const double g = 2.0 * 12 * VL * (double)iters / args[t].secs / 1e9;
    total += g; low = g < low ? g : low; sink += args[t].sink;
  }
  if (slowest) *slowest = low;
  return sink == 12345.f ? -1.0 : total;
}

double clock_ghz(long iters) {
  long x = 0, one = 1;
  __asm__ volatile("" : "+r"(one));  /* a register operand: cores that fold adds of an
                                         immediate at rename (Intel Golden Cove) run those
                                         chains several per cycle */
  double t0 = omp_get_wtime();
  for (long i = 0; i < iters; ++i) {
    x += one; __asm__ volatile("" : "+r"(x)); x += one; __asm__ volatile("" : "+r"(x));
    x += one; __asm__ volatile("" : "+r"(x)); x += one; __asm__ volatile("" : "+r"(x));
  }
  double dt = omp_get_wtime() - t0;
  return x == -1 ? -1.0 : 4.0 * (double)iters / dt / 1e9;
}

double bandwidth(int nt, float* a, float* b, long n, int reps) {
  double t0 = omp_get_wtime();
  #pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num();
    const long lo = n * tid / nt, hi = n * (tid + 1) / nt;
    for (int r = 0; r < reps; ++r) {
      #pragma omp simd
      for (long i = lo; i < hi; ++i) b[i] = a[i] * 0.5f + b[i];
      __asm__ volatile("" ::: "memory");
    }
  }
  double dt = omp_get_wtime() - t0;
  return 12.0 * (double)n * reps / dt / 1e9;
}
"""


@dataclass(frozen=True)
class MachinePeak:
    """Measured limits (best of a few runs).

    Attributes:
        isa: ISA of the probe (vector width used).
        gflops: FP32 FMA peak GFLOP/s per thread count (keys 1 and 2, or just 1).
        dram_gbs: streaming bandwidth, 256 MB working set, per thread count.
        l2_gbs: bandwidth with a 256 KB working set per thread, per thread count.
        load_avg: 1-minute load average when measured (a busy CPU lowers every figure).
        clock_ghz: core clock from a dependent integer add chain (1 thread).
    """

    isa: str
    gflops: dict[int, float]
    dram_gbs: dict[int, float]
    l2_gbs: dict[int, float]
    load_avg: float
    clock_ghz: float = float("nan")

    def flop_per_cycle(self, threads: int = 1) -> float:
        """FMA peak per core and cycle (2 pipes x lanes x 2 on AVX2 / AVX-512 cores)."""
        return self.gflops[threads] / threads / self.clock_ghz

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _library(isa: Isa, cache: Path | None) -> ctypes.CDLL:
    art = compile_source("#define _GNU_SOURCE\n" + prelude(isa) + PAUSE_MACRO + _SOURCE, [],
                         cache=cache)
    lib = ctypes.CDLL(str(art.path))
    lib.fma_team.restype = ctypes.c_double
    lib.fma_team.argtypes = [ctypes.c_int, ctypes.c_long, ctypes.POINTER(ctypes.c_double)]
    lib.round_trip_ns.restype = ctypes.c_double
    lib.round_trip_ns.argtypes = [ctypes.c_long]
    lib.clock_ghz.restype = ctypes.c_double
    lib.clock_ghz.argtypes = [ctypes.c_long]
    lib.bandwidth.restype = ctypes.c_double
    lib.bandwidth.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,
                              ctypes.c_int]
    return lib


def _iters_for(lib: ctypes.CDLL, seconds: float, start: int) -> int:
    """FMA loop iterations for at least ``seconds`` of work per thread (calibrated on the caller
    alone: a team's thread starts would otherwise count as work and stop the search early)."""
    iters = start
    while True:
        t0 = time.perf_counter()
        lib.fma_team(1, iters, None)
        if time.perf_counter() - t0 > seconds or iters > 1 << 32:
            return iters
        iters *= 2


def fma_probe(isa: Isa, threads: int, seconds: float = 0.002, *,
              cache: Path | None = None) -> Callable[[], float]:
    """A call of about ``seconds`` running the FMA peak loop on ``threads`` threads at once,
    returning their summed GFLOP/s (each thread timed on its own, so starting the threads,
    milliseconds here, does not count).

    Called round-robin with kernels, it gives the peak *in the same rounds*: a machine that
    changes speed states changes both, so their ratio stays meaningful. Its threads end with
    the call, so it leaves nothing running beside the next runtime timed.
    """
    lib = _library(isa, cache)
    iters = _iters_for(lib, seconds, 1 << 10)
    return lambda: float(lib.fma_team(threads, iters, None))


class CorePair(NamedTuple):
    """How the host is placing the two vCPUs right now (``core_pair``).

    Attributes:
        share: the slower of two threads running the FMA loop at once, over one thread alone:
            ~1.0 when each vCPU has a physical core, ~0.5 when they share one.
        round_trip_ns: one cache line bounced between the two CPUs: 65-160 ns when the AMD
            Zen 3 host placed them on nearby cores, 350-900 ns when far apart; 60-70 and
            230-300 ns on the Zen 4 host (session 30), hence the 200 ns default below.
    """

    share: float
    round_trip_ns: float

    def whole_and_near(self, min_share: float = 0.8, max_ns: float = 200.0) -> bool:
        """Two cores of their own, close enough that threads exchanging data stay fast."""
        return self.share >= min_share and self.round_trip_ns <= max_ns


def core_pair(isa: Isa, seconds: float = 0.002, *,
              cache: Path | None = None) -> Callable[[], CorePair]:
    """A probe of about ``2 * seconds`` (plus a 2000-trip ping-pong) of the vCPU placement.

    On a virtual machine the two vCPUs move between physical cores. Seen here: in 29 of 400
    windows of 50 ms they shared one core (two FMA threads at 51 + 51 GFLOP/s against 100
    alone), and in 25-75 % of samples (by the hour) a cache line took 350-900 ns to go and
    come back instead of 65-160 ns. Our 2-thread ResNet-20 at 4x ran 527-572 us in that far
    state against 295-323 us near (1 thread: 430 us in both). Neither state is visible from
    inside the guest except by measuring it; a benchmark can record it next to each 2-thread
    timing. NaN readings on a machine with a single CPU.
    """
    lib = _library(isa, cache)
    iters = _iters_for(lib, seconds, 1 << 10)
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    if len(cpus) < 2:
        return lambda: CorePair(math.nan, math.nan)
    slowest = ctypes.c_double()

    def probe() -> CorePair:
        alone = lib.fma_team(1, iters, None)
        lib.fma_team(2, iters, ctypes.byref(slowest))
        share = slowest.value / alone if alone > 0 else math.nan
        rt = lib.round_trip_ns(2000)
        return CorePair(share, rt if rt > 0 else math.nan)
    return probe


def measure_peak(isa: Isa, threads: tuple[int, ...] = (1, 2), *, cache: Path | None = None,
                 seconds: float = 0.25, dram_mb: int = 256) -> MachinePeak:
    """Run the probes for each thread count; about ``6 * seconds`` per thread count."""
    import numpy as np

    lib = _library(isa, cache)
    gflops, dram, l2 = {}, {}, {}
    n_big = dram_mb * (1 << 20) // 8
    big_a, big_b = np.ones(n_big, np.float32), np.ones(n_big, np.float32)
    for nt in threads:
        iters = _iters_for(lib, seconds / 3, 1 << 20)
        gflops[nt] = max(lib.fma_team(nt, iters, None) for _ in range(3))
        dram[nt] = max(lib.bandwidth(nt, big_a.ctypes.data, big_b.ctypes.data, n_big, 1)
                       for _ in range(3))
        n_l2 = 256 * 1024 // 8 * nt
        a, b = np.ones(n_l2, np.float32), np.ones(n_l2, np.float32)
        reps = max(1, int(2e8 // n_l2))
        l2[nt] = max(lib.bandwidth(nt, a.ctypes.data, b.ctypes.data, n_l2, reps) for _ in range(3))
    iters = max(1 << 16, int(seconds * 1e9 / 4 / 3))  # ~seconds / 3 at 4 GHz
    clock = max(lib.clock_ghz(iters) for _ in range(3))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return MachinePeak(isa.name, gflops, dram, l2, load, clock)
