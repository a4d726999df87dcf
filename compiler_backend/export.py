"""Export a compiled model as a standalone C package for another machine (a phone, a board).

The package holds the generated source for the chosen ISA (``neon`` for AArch64 phones, the
papers' target), its weight and index arrays, a driver, a header and a Makefile::

    npas_model.c / npas_model.h   generated kernels; entry point ``run_batch``
    npas_main.c                   driver: runs input.bin, checks expected.bin, times N runs
    weights.bin / ints.bin        float32 / int32 arrays, little-endian
    input.bin / expected.bin      the example input and the masked PyTorch model's output
    Makefile                      ``make`` here; ``make CC=aarch64-linux-gnu-gcc LDFLAGS=-static``
                                  to cross-compile

On the device, ``./npas_model . 200`` prints the maximum relative error against
``expected.bin`` and the median latency of 200 runs as one JSON line, the figure a latency
table or a remote evaluator for that device needs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compiler_backend.codegen import generate
from compiler_backend.compile import lower_model, resolve_isa
from compiler_backend.ir import FallbackOp
from compiler_backend.isa import CROSS_FLAGS
from compiler_backend.tuning.base import KernelConfig
from npas_env.errors import BackendError, InvalidConfig

_HEADER = """/* npas-env exported model ({isa}, {threads} thread(s)); see npas_main.c for use. */
#ifndef NPAS_MODEL_H
#define NPAS_MODEL_H
#define NPAS_N_WEIGHTS {n_weights}L
#define NPAS_N_INTS {n_ints}L
#define NPAS_ARENA_FLOATS {arena}L  /* zeroed before the first run, then reused */
#define NPAS_N_IN {n_in}L           /* floats per sample, shape {in_shape} */
#define NPAS_N_OUT {n_out}L          /* floats per sample, shape {out_shape} */
#define NPAS_THREADS {threads}
/* y[n, NPAS_N_OUT] = model(x[n, NPAS_N_IN]); W / I: weights.bin / ints.bin; nt threads. */
void run_batch(const float* W, const int* I, float* A, int nt, int n, const float* x, float* y);
#endif
"""

_MAIN = r"""/* Run an exported npas-env model: ./npas_model [DIR] [REPEATS] [THREADS]
   Reads DIR/weights.bin, ints.bin, input.bin; writes DIR/output.bin; compares it with
   DIR/expected.bin when present; times REPEATS runs; prints one JSON line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "npas_model.h"

static void* read_all(const char* dir, const char* name, long bytes, int required) {
  char path[4096]; snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE* f = fopen(path, "rb");
  if (!f) { if (required) { fprintf(stderr, "cannot open %s\n", path); exit(2); } return NULL; }
  void* p = aligned_alloc(64, (size_t)((bytes + 63) / 64 * 64));
  if (!p || fread(p, 1, (size_t)bytes, f) != (size_t)bytes) {
    fprintf(stderr, "%s: expected %ld bytes (was the package exported for this model?)\n", path, bytes);
    exit(2);
  }
  fclose(f);
  return p;
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmp(const void* a, const void* b) { double x = *(const double*)a, y = *(const double*)b; return (x > y) - (x < y); }

int main(int argc, char** argv) {
  const char* dir = argc > 1 ? argv[1] : ".";
  const int repeats = argc > 2 ? atoi(argv[2]) : 0, nt = argc > 3 ? atoi(argv[3]) : NPAS_THREADS;
  const float* W = read_all(dir, "weights.bin", NPAS_N_WEIGHTS * 4, 1);
  const int* I = read_all(dir, "ints.bin", NPAS_N_INTS * 4, 1);
  const float* x = read_all(dir, "input.bin", NPAS_N_IN * 4, 1);
  const float* want = read_all(dir, "expected.bin", NPAS_N_OUT * 4, 0);
  float* A = aligned_alloc(64, (size_t)((NPAS_ARENA_FLOATS * 4 + 63) / 64 * 64));
  float* y = malloc(NPAS_N_OUT * sizeof(float));
  if (!A || !y) { fprintf(stderr, "out of memory\n"); return 2; }
  memset(A, 0, (size_t)NPAS_ARENA_FLOATS * 4);
  run_batch(W, I, A, nt, 1, x, y);
  char path[4096]; snprintf(path, sizeof path, "%s/output.bin", dir);
  FILE* f = fopen(path, "wb");
  if (!f || fwrite(y, 4, NPAS_N_OUT, f) != (size_t)NPAS_N_OUT) { fprintf(stderr, "cannot write %s\n", path); return 2; }
  fclose(f);
  double err = -1.0;
  if (want) {
    double scale = 1e-12, diff = 0.0;
    for (long i = 0; i < NPAS_N_OUT; ++i) {
      const double d = y[i] - want[i], m = want[i] < 0 ? -want[i] : want[i];
      if (m > scale) scale = m;
      if ((d < 0 ? -d : d) > diff) diff = d < 0 ? -d : d;
    }
    err = diff / scale;
  }
  double median = 0.0, p10 = 0.0, p90 = 0.0;
  if (repeats > 0) {
    double* t = malloc((size_t)repeats * sizeof(double));
    for (int i = 0; i < 3; ++i) run_batch(W, I, A, nt, 1, x, y);
    for (int i = 0; i < repeats; ++i) { const double t0 = now(); run_batch(W, I, A, nt, 1, x, y); t[i] = (now() - t0) * 1e3; }
    qsort(t, (size_t)repeats, sizeof(double), cmp);
    median = t[repeats / 2]; p10 = t[repeats / 10]; p90 = t[(repeats * 9) / 10];
  }
  printf("{\"max_rel_error\": %.3g, \"median_ms\": %.6f, \"p10_ms\": %.6f, \"p90_ms\": %.6f, "
         "\"runs\": %d, \"threads\": %d}\n", err, median, p10, p90, repeats, nt);
  return want && err > 1e-4 ? 1 : 0;
}
"""

_MAKEFILE = """# Build the exported model. Cross-compile for an AArch64 phone or board with
#   make CC=aarch64-linux-gnu-gcc LDFLAGS=-static
CC ?= cc
CFLAGS ?= -O3 {march} -fopenmp -std=gnu11
LDFLAGS ?=

npas_model: npas_main.c npas_model.c npas_model.h
\t$(CC) $(CFLAGS) -o $@ npas_main.c npas_model.c $(LDFLAGS) -lm -lpthread

run: npas_model
\t./npas_model . 200
"""


@dataclass(frozen=True)
class ExportedModel:
    """Files of an exported package (see the module docstring)."""

    directory: Path
    isa: str
    threads: int
    files: tuple[str, ...]


def masked_reference(model: nn.Module, masks: Mapping[str, torch.Tensor] | None,
                     x: torch.Tensor) -> torch.Tensor:
    """The eval-mode output of a copy of ``model`` whose pruned weights are zeroed."""
    from npas_env.pruning import enforce_masks

    model = copy.deepcopy(model).eval()
    enforce_masks(model, masks or {})
    with torch.no_grad():
        return model(x)


def export_c(model: nn.Module, example_input: torch.Tensor, directory: Path | str,
             masks: Mapping[str, torch.Tensor] | None = None, *, isa: str | None = "neon",
             threads: int = 1, configs: Mapping[str, KernelConfig] | None = None) -> ExportedModel:
    """Write ``model`` (pruned by ``masks``) as a standalone C package for ``isa``
    (``avx512`` / ``avx2`` / ``neon`` / ``generic``; None: this machine's).

    Kernel choices are the untuned defaults unless ``configs`` gives them (tuning needs the
    target machine: tune there through a remote evaluator, or pass its chosen configs).

    Raises:
        BackendError: the model has operations that run through PyTorch (the package has no
            PyTorch); the message names them.
        InvalidConfig: unknown ISA or threads < 1.
    """
    if threads < 1:
        raise InvalidConfig(f"threads must be >= 1, got {threads}")
    target = resolve_isa(isa)
    x = example_input[:1].detach().float()
    graph = lower_model(model, x, masks)
    fallbacks = [op.name for op in graph.ops if isinstance(op, FallbackOp)]
    if fallbacks:
        raise BackendError(
            f"cannot export: {len(fallbacks)} op(s) run through PyTorch, which the C package does "
            f"not have: {', '.join(fallbacks[:8])}. Replace them with supported modules "
            "(conv, linear, pooling, add, concat, common activations).")
    program = generate(graph, target, threads, dict(configs or {}))
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    n_in = int(np.prod(graph.buffers[graph.input].shape))
    n_out = int(np.prod(graph.output_shape))
    weights = np.ascontiguousarray(program.weights, "<f4")
    ints = np.ascontiguousarray(program.ints, "<i4")
    expected = masked_reference(model, masks, x).reshape(-1).numpy().astype("<f4")
    (out / "npas_model.c").write_text('#include "npas_model.h"\n' + program.source)
    (out / "npas_model.h").write_text(_HEADER.format(
        isa=target.name, threads=threads, n_weights=weights.size, n_ints=ints.size,
        arena=program.arena_floats, n_in=n_in, n_out=n_out,
        in_shape=list(graph.buffers[graph.input].shape), out_shape=list(graph.output_shape)))
    (out / "npas_main.c").write_text(_MAIN)
    (out / "Makefile").write_text(_MAKEFILE.format(march=" ".join(CROSS_FLAGS[target.name])))
    weights.tofile(out / "weights.bin")
    ints.tofile(out / "ints.bin")
    x.reshape(-1).numpy().astype("<f4").tofile(out / "input.bin")
    expected.tofile(out / "expected.bin")
    files = ("npas_model.c", "npas_model.h", "npas_main.c", "Makefile", "weights.bin", "ints.bin",
             "input.bin", "expected.bin")
    return ExportedModel(out, target.name, threads, files)
