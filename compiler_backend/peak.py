"""Measure this machine's FP32 FMA peak and memory bandwidth (quick, for fraction-of-peak).

A tiny generated C library holds three probes, compiled with the backend's toolchain:

* ``fma_peak``: 12 independent vector FMA chains (enough to cover 2 pipes x 4-6 cycles of
  latency) in a long loop, per thread; reports GFLOP/s summed over ``nt`` OpenMP threads.
  Every chain passes through an empty ``asm`` each iteration: the chains compute the same
  values, and without that gcc merged six of them into one (the loop did 7 FMAs and the probe
  reported 12: 140 "GFLOP/s" on a core whose 2 FMA pipes x 8 lanes x 3.15 GHz give 101).
* ``clock_ghz``: a chain of dependent integer adds (one per cycle on every current core), so
  the FMA figure can be read as FLOP per cycle and checked against the core's pipes.
* ``bandwidth``: ``b[i] = a[i] * s + b[i]`` over two arrays (2 loads + 1 store per element);
  bytes counted as 12 per element. A 256 MB working set gives DRAM, 256 KB gives L2.

Every probe runs a few times and keeps the best, so a busy machine still gives a useful
upper bound (and the report states the load average next to it).
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from compiler_backend.isa import Isa, prelude
from compiler_backend.toolchain import compile_source

_SOURCE = r"""
double fma_peak(int nt, long iters) {
  double t0 = omp_get_wtime();
  float sink = 0.f;
  #pragma omp parallel num_threads(nt) reduction(+:sink)
  {
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
    for (int i = 0; i < VL; ++i) sink += tmp[i];
  }
  double dt = omp_get_wtime() - t0;
  return sink == 12345.f ? -1.0 : 2.0 * 12 * VL * (double)iters * nt / dt / 1e9;
}

double clock_ghz(long iters) {
  long x = 0;
  double t0 = omp_get_wtime();
  for (long i = 0; i < iters; ++i) {
    x += 1; __asm__ volatile("" : "+r"(x)); x += 1; __asm__ volatile("" : "+r"(x));
    x += 1; __asm__ volatile("" : "+r"(x)); x += 1; __asm__ volatile("" : "+r"(x));
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
    art = compile_source(prelude(isa) + _SOURCE, [], cache=cache)
    lib = ctypes.CDLL(str(art.path))
    lib.fma_peak.restype = ctypes.c_double
    lib.fma_peak.argtypes = [ctypes.c_int, ctypes.c_long]
    lib.clock_ghz.restype = ctypes.c_double
    lib.clock_ghz.argtypes = [ctypes.c_long]
    lib.bandwidth.restype = ctypes.c_double
    lib.bandwidth.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long,
                              ctypes.c_int]
    return lib


def fma_probe(isa: Isa, threads: int, seconds: float = 0.001, *,
              cache: Path | None = None) -> tuple[Callable[[], object], float]:
    """A call of about ``seconds`` running the FMA peak loop, and the FLOPs it does.

    Timed together with a kernel (e.g. round-robin), it gives the peak *in the same rounds*:
    a machine that changes speed states changes both, so their ratio stays meaningful.
    """
    lib = _library(isa, cache)
    iters = 1 << 10
    while True:
        t0 = time.perf_counter()
        lib.fma_peak(threads, iters)
        if time.perf_counter() - t0 > seconds or iters > 1 << 30:
            break
        iters *= 2
    return (lambda: lib.fma_peak(threads, iters)), 2.0 * 12 * isa.lanes * iters * threads


def measure_peak(isa: Isa, threads: tuple[int, ...] = (1, 2), *, cache: Path | None = None,
                 seconds: float = 0.25, dram_mb: int = 256) -> MachinePeak:
    """Run the probes for each thread count; about ``6 * seconds`` per thread count."""
    import numpy as np

    lib = _library(isa, cache)
    gflops, dram, l2 = {}, {}, {}
    n_big = dram_mb * (1 << 20) // 8
    big_a, big_b = np.ones(n_big, np.float32), np.ones(n_big, np.float32)
    for nt in threads:
        iters = 1 << 20
        while True:  # calibrate to ~seconds / 3 per run
            t0 = time.perf_counter()
            lib.fma_peak(nt, iters)
            if time.perf_counter() - t0 > seconds / 3 or iters > 1 << 32:
                break
            iters *= 4
        gflops[nt] = max(lib.fma_peak(nt, iters) for _ in range(3))
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
