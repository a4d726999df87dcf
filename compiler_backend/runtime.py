"""The loaded model: ctypes calls into the generated library, fallbacks, timing, report."""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.fx.node import map_aggregate

from compiler_backend.codegen import Program
from compiler_backend.ir import BufRef, EnvRef, FallbackOp, Graph
from compiler_backend.threads import AdaptiveThreads, FixedThreads, ThreadPolicy
from compiler_backend.toolchain import Artifact
from npas_env.errors import BackendError


def aligned_floats(n: int) -> np.ndarray:
    """``n`` zeroed float32 starting on a 64-byte line (the generated code's vector loads of
    the arena assume it); the view keeps its base array alive."""
    raw = np.zeros(n + 32, np.float32)
    start = (-raw.ctypes.data // 4) % 16
    return raw[start:start + n]


@dataclass(frozen=True)
class Timing:
    """Latency statistics of repeated batch runs, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    iqr_ms: float
    threads: int
    runs: int


@dataclass(frozen=True)
class LayerReport:
    """One conv / linear layer: the kernel chosen and its measured time."""

    name: str
    family: str
    structure: str
    block_sizes: tuple[int, ...]
    kept_fraction: float
    dense_flops: int
    kept_flops: int
    time_ms: float
    share: float
    config: dict[str, Any]
    #: (output channels computed, the model's) where dead ones were cut (``dead_channels``).
    cut_channels: tuple[int, int] | None = None

    @property
    def gflops(self) -> float:
        """Useful (kept) GFLOP/s."""
        return self.kept_flops / max(self.time_ms, 1e-9) / 1e6


@dataclass(frozen=True)
class OpReport:
    """A non-layer op (pooling, eltwise, ... or a PyTorch fallback) and its share of time."""

    name: str
    kind: str
    time_ms: float
    share: float


@dataclass(frozen=True)
class CompileReport:
    """Per-layer kernel choices and measured time shares of a compiled model."""

    layers: tuple[LayerReport, ...]
    fallbacks: tuple[OpReport, ...]
    others: tuple[OpReport, ...]
    total_ms: float
    isa: str
    threads: int
    compile_seconds: float
    cache_hit: bool
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


class CompiledModel:
    """A model compiled to one shared library; ``run`` executes batch-1 (or small) batches.

    ``adaptive_threads``: each call runs on 1 thread or ``threads``, whichever ran faster
    recently (:class:`~compiler_backend.threads.AdaptiveThreads`); else always ``threads``.
    """

    def __init__(self, graph: Graph, program: Program, artifact: Artifact, threads: int,
                 isa: str, adaptive_threads: bool = False) -> None:
        self.graph, self.program, self.artifact = graph, program, artifact
        self.threads, self.isa = int(threads), isa
        self.thread_policy: ThreadPolicy = (AdaptiveThreads(self.threads)
                                            if adaptive_threads and self.threads > 1
                                            else FixedThreads(self.threads))
        self._lib = ctypes.CDLL(str(artifact.path))
        self._weights = np.ascontiguousarray(program.weights, np.float32)
        self._ints = np.ascontiguousarray(program.ints, np.int32)
        self._arena = aligned_floats(program.arena_floats)
        ptrs = (ctypes.c_void_p(self._weights.ctypes.data), ctypes.c_void_p(self._ints.ctypes.data),
                ctypes.c_void_p(self._arena.ctypes.data))
        self._prof = (ctypes.c_double * max(1, len(graph.ops))).in_dll(self._lib, "npas_prof")
        self._prof_on = ctypes.c_int.in_dll(self._lib, "npas_prof_on")
        self._views: dict[int, torch.Tensor] = {}
        fallbacks = [op for op in graph.ops if isinstance(op, FallbackOp)]
        self._steps: list[tuple[str, Any]] = []
        for si, ops in enumerate(program.segments):
            if ops:
                fn = getattr(self._lib, f"seg_{si}")
                fn.restype = None
                fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
                self._steps.append(("c", (fn, ptrs)))
            if si < len(fallbacks):
                self._steps.append(("py", fallbacks[si]))
        self._batch_fn = getattr(self._lib, "run_batch", None) if len(program.segments) == 1 \
            else None
        if self._batch_fn is not None:
            self._batch_fn.restype = None
            self._batch_fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int, ctypes.c_int,
                                                                ctypes.c_void_p, ctypes.c_void_p]
        self._ptrs = ptrs
        self._fb_index = {id(op): k for k, op in enumerate(graph.ops)}
        self._env: dict[str, Any] = {}
        self._fb_time = np.zeros(len(graph.ops))
        self._report: CompileReport | None = None
        self.compile_seconds = artifact.compile_seconds
        self.cache_hit = artifact.cache_hit

    # ------------------------------------------------------------------ execution
    def view(self, idx: int) -> torch.Tensor:
        """The arena region of buffer ``idx`` as a [1, *shape] tensor (shares memory)."""
        if idx not in self._views:
            buf = self.graph.buffers[idx]
            off = self.program.buffer_offsets[idx]
            n = int(np.prod(buf.shape))
            self._views[idx] = torch.from_numpy(self._arena[off:off + n]).view(1, *buf.shape)
        return self._views[idx]

    def _resolve(self, a: Any) -> Any:
        if isinstance(a, BufRef):
            return self.view(a.idx)
        if isinstance(a, EnvRef):
            return self._env[a.key]
        return a

    def _fallback(self, op: FallbackOp, timed: bool) -> None:
        start = time.perf_counter() if timed else 0.0
        args = map_aggregate(op.args, self._resolve)
        kwargs = map_aggregate(op.kwargs, self._resolve)
        with torch.no_grad():
            out = op.fn(*args, **kwargs)
        if op.dst is not None:
            self.view(op.dst).copy_(out.reshape(self.view(op.dst).shape))
        else:
            self._env[op.env_key] = out
        if timed:
            self._fb_time[self._fb_index[id(op)]] += time.perf_counter() - start

    def _run_sample(self, timed: bool = False) -> None:
        nt = self.thread_policy.choose()
        start = time.perf_counter()
        for kind, step in self._steps:
            if kind == "c":
                fn, ptrs = step
                fn(*ptrs, nt)
            else:
                self._fallback(step, timed)
        self.thread_policy.record(nt, start, time.perf_counter())

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Run the compiled model on ``x`` ([N, ...] float32, N small); returns [N, ...]."""
        in_view = self.view(self.graph.input)
        if tuple(x.shape[1:]) != tuple(in_view.shape[1:]):
            raise BackendError(f"input shape {tuple(x.shape)} does not match the compiled shape "
                               f"[N, {', '.join(map(str, in_view.shape[1:]))}]")
        x = x.detach().to(torch.float32).cpu()
        if self._batch_fn is not None:  # the whole batch in one C call
            xc = x.contiguous()
            out = torch.empty((x.shape[0], *self.graph.output_shape), dtype=torch.float32)
            nt = self.thread_policy.choose()
            start = time.perf_counter()
            self._batch_fn(*self._ptrs, nt, int(x.shape[0]), xc.data_ptr(), out.data_ptr())
            self.thread_policy.record(nt, start, time.perf_counter(), int(x.shape[0]))
            return out
        outs = []
        out_view = self.view(self.graph.output)
        for i in range(x.shape[0]):
            in_view.copy_(x[i:i + 1])
            self._run_sample()
            outs.append(out_view.clone())
        return torch.cat(outs, 0)

    __call__ = run

    # ------------------------------------------------------------------ timing
    def benchmark(self, warmup: int = 10, repeats: int = 50, min_seconds: float = 0.0,
                  x: torch.Tensor | None = None) -> Timing:
        """Time ``run`` on a fixed batch-1 input: median / p10 / p90 / IQR in ms."""
        if x is None:
            x = torch.randn(1, *self.view(self.graph.input).shape[1:])
        self.view(self.graph.input).copy_(x[:1])
        for _ in range(max(0, warmup)):
            self._run_sample()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            self._run_sample()
            times.append((time.perf_counter() - t0) * 1e3)
            if len(times) > 100_000:
                break
        return _timing(times, self.threads)

    def profile(self, repeats: int = 20, warmup: int = 3) -> np.ndarray:
        """Median-free mean per-op time in ms over ``repeats`` runs at ``threads`` threads
        (index = op index)."""
        for _ in range(warmup):
            self._run_sample()
        for i in range(len(self._prof)):
            self._prof[i] = 0.0
        self._fb_time[:] = 0.0
        self._prof_on.value = 1
        policy, self.thread_policy = self.thread_policy, FixedThreads(self.threads)
        try:
            for _ in range(repeats):
                self._run_sample(timed=True)
        finally:
            self._prof_on.value = 0
            self.thread_policy = policy
        c_times = np.array(self._prof[:len(self.graph.ops)], dtype=float)
        return (c_times + self._fb_time) * 1e3 / repeats

    @property
    def report(self) -> CompileReport:
        """Kernel choices per layer, time shares, fallback ops (profiles on first access)."""
        if self._report is None:
            self._report = self.build_report()
        return self._report

    def build_report(self, repeats: int = 20) -> CompileReport:
        per_op = self.profile(repeats)
        total = float(per_op.sum()) or 1e-9
        layer_by_op = {info.op_index: info for info in self.program.layers}
        layers, fallbacks, others = [], [], []
        for k, op in enumerate(self.graph.ops):
            t = float(per_op[k])
            if k in layer_by_op:
                li = layer_by_op[k]
                layers.append(LayerReport(li.name, li.family, li.structure, tuple(li.block_sizes),
                                          li.kept_fraction, li.dense_flops, li.kept_flops, t,
                                          t / total, li.config.to_dict(),
                                          self.graph.cut_channels.get(li.name)))
            elif isinstance(op, FallbackOp):
                fallbacks.append(OpReport(op.name, "fallback", t, t / total))
            else:
                others.append(OpReport(op.name, op.kind, t, t / total))
        return CompileReport(tuple(layers), tuple(fallbacks), tuple(others), total, self.isa,
                             self.threads, self.compile_seconds, self.cache_hit)


def _timing(times_ms: list[float], threads: int) -> Timing:
    arr = np.asarray(times_ms)
    q10, q25, q50, q75, q90 = np.percentile(arr, [10, 25, 50, 75, 90])
    return Timing(float(q50), float(q10), float(q90), float(q75 - q25), threads, int(arr.size))
