"""Measuring layer settings: test models of cascaded identical layers, local timing backends.

Settings that share (layer type, channels, feature map) share one test model: ``cascade``
identical layers per setting, one block of layers after the other, compiled once; the compiler's
per-op profiler gives each block's time per round. Per-layer latency = median over rounds of the
block time / ``cascade``; noise = relative inter-quartile range over rounds.

Backends: ``compiled`` (``compiler_backend.compile_model``, the real target) and ``eager`` (torch
eager timing; a stand-in when no C compiler is available). ``measure_model`` is shared by
``build_lut`` and the device server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from evaluators.latency.lut_table import KERNEL_OF, LayerSetting
from npas_env.errors import InvalidConfig
from npas_env.plan import Scheme
from npas_env.pruning.masks import prune_mask

BACKENDS = ("compiled", "eager")


@dataclass(frozen=True)
class ModelTiming:
    """Timing of one model: whole-model median and per-layer times per round (ms)."""

    latency_ms: float
    spread_ms: float
    layer_rounds_ms: dict[str, list[float]] = field(default_factory=dict)
    backend: str = "compiled"
    wall_rounds_ms: list[float] = field(default_factory=list)
    reference_rounds_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"latency_ms": self.latency_ms, "spread_ms": self.spread_ms,
                "layer_rounds_ms": self.layer_rounds_ms, "backend": self.backend}


def pin_threads(threads: int) -> None:
    """Use exactly ``threads`` threads in torch and (for libraries loaded later) OpenMP."""
    if threads < 1:
        raise InvalidConfig(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def cascade_model(layer_type: str, channels: int, fmap: int, count: int) -> tuple[nn.Module, torch.Tensor]:
    """``count`` identical layers (with ReLU) of one type and their batch-1 example input."""
    torch.manual_seed(0)
    if layer_type == "fc":
        layers = [m for _ in range(count) for m in (nn.Linear(channels, channels, bias=False), nn.ReLU())]
        return nn.Sequential(*layers).eval(), torch.randn(1, channels)
    k = KERNEL_OF[layer_type]
    groups = channels if layer_type == "dw3x3" else 1
    layers = [m for _ in range(count)
              for m in (nn.Conv2d(channels, channels, k, padding=k // 2, groups=groups, bias=False), nn.ReLU())]
    return nn.Sequential(*layers).eval(), torch.randn(1, channels, fmap, fmap)


def cascade_masks(model: nn.Module, settings: Sequence[LayerSetting], cascade: int) -> dict[str, torch.Tensor]:
    """Masks for a :func:`cascade_model` holding ``cascade`` layers of each setting in turn."""
    weighted = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for idx, (name, module) in enumerate(weighted):
            s = settings[idx // cascade]
            if s.scheme == Scheme.DENSE.value or s.rate == 1.0:
                continue
            mask = prune_mask(module.weight, s.scheme, s.rate, s.block)
            module.weight.mul_(mask)
            masks[name] = mask
    return masks


def setting_groups(settings: Sequence[LayerSetting]) -> list[list[LayerSetting]]:
    """Settings grouped by (layer type, channels, fmap): one test model per group."""
    groups: dict[tuple[str, int, int], list[LayerSetting]] = {}
    for s in settings:
        groups.setdefault((s.layer_type, s.channels, s.fmap), []).append(s)
    return list(groups.values())


def measure_model(model: nn.Module, example_input: torch.Tensor, masks: Mapping[str, torch.Tensor] | None,
                  *, backend: str = "compiled", threads: int = 1, rounds: int = 7,
                  min_round_s: float = 0.02) -> ModelTiming:
    """Time ``model`` (pruned by ``masks``) at batch 1; per-layer times per round.

    Raises:
        BackendError: the compiled backend is unavailable or failed.
        InvalidConfig: unknown backend.
    """
    if backend not in BACKENDS:
        raise InvalidConfig(f"unknown timing backend {backend!r}; choose one of {BACKENDS}")
    pin_threads(threads)
    if backend == "compiled":
        return _measure_compiled(model, example_input, masks, threads, rounds, min_round_s)
    return _measure_eager(model, example_input, threads, rounds, min_round_s)


def _measure_compiled(model: nn.Module, x: torch.Tensor, masks: Mapping[str, torch.Tensor] | None,
                      threads: int, rounds: int, min_round_s: float) -> ModelTiming:
    from compiler_backend import compile_model

    compiled = compile_model(model, x, dict(masks or {}), threads=threads)
    return time_compiled(compiled, rounds=rounds, min_round_s=min_round_s)


def time_compiled(compiled: Any, *, rounds: int = 7, min_round_s: float = 0.02,
                  wall: bool = False, reference: Any = None) -> ModelTiming:
    """Per-op profile rounds of a ``CompiledModel`` (and with ``wall``, whole-call rounds).

    Each round profiles the ops (``compiled.profile``: mean per op over the round's runs); with
    ``wall`` the per-op time is the median over single profiled runs instead, and the round then
    times whole calls (``compiled.benchmark``, median), the figure ``CompiledLatency`` reports,
    so callers can relate the two in the same round. A ``reference`` compiled model is timed
    the same way after every round (``reference_rounds_ms``), to rescale rounds taken while the
    machine ran in another speed state (``evaluators.latency.anchor``).
    """
    names = {info.op_index: info.name for info in compiled.program.layers}
    t0 = time.perf_counter()
    compiled.profile(repeats=2, warmup=2)
    per_run = max((time.perf_counter() - t0) / 4, 1e-6)
    repeats = int(min(50, max(3, min_round_s / per_run)))
    layer_rounds: dict[str, list[float]] = {n: [] for n in names.values()}
    totals, walls, refs = [], [], []
    for _ in range(rounds):
        if wall:   # per-op median of single runs: robust to preemption, like the wall median
            per_op = np.median([compiled.profile(repeats=1, warmup=0) for _ in range(repeats)], axis=0)
        else:
            per_op = compiled.profile(repeats=repeats, warmup=0)
        totals.append(float(per_op.sum()))
        for op, name in names.items():
            layer_rounds[name].append(float(per_op[op]))
        if wall:
            walls.append(float(compiled.benchmark(warmup=1, repeats=repeats).median_ms))
        if reference is not None:
            refs.append(float(reference.benchmark(warmup=1, repeats=repeats).median_ms))
    q25, q50, q75 = np.percentile(totals, [25, 50, 75])
    return ModelTiming(float(q50), float(q75 - q25), layer_rounds, "compiled", walls, refs)


def _measure_eager(model: nn.Module, x: torch.Tensor, threads: int, rounds: int,
                   min_round_s: float) -> ModelTiming:
    model = model.eval()
    weighted: dict[nn.Module, str] = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    spent: dict[str, float] = dict.fromkeys(weighted.values(), 0.0)
    starts: dict[str, float] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, _i: starts.__setitem__(weighted[mod], time.perf_counter()))
             for m in weighted]
    hooks += [m.register_forward_hook(lambda mod, _i, _o: spent.__setitem__(
        weighted[mod], spent[weighted[mod]] + time.perf_counter() - starts[weighted[mod]])) for m in weighted]
    try:
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(3):
                model(x)
            repeats = int(min(50, max(3, min_round_s / max((time.perf_counter() - t0) / 3, 1e-6))))
            layer_rounds: dict[str, list[float]] = {n: [] for n in spent}
            totals = []
            for _ in range(rounds):
                for n in spent:
                    spent[n] = 0.0
                t0 = time.perf_counter()
                for _ in range(repeats):
                    model(x)
                totals.append((time.perf_counter() - t0) * 1e3 / repeats)
                for n, s in spent.items():
                    layer_rounds[n].append(s * 1e3 / repeats)
    finally:
        for h in hooks:
            h.remove()
    q25, q50, q75 = np.percentile(totals, [25, 50, 75])
    return ModelTiming(float(q50), float(q75 - q25), layer_rounds, "eager")


def settings_from_timing(settings: Sequence[LayerSetting], cascade: int, model: nn.Module,
                         timing: ModelTiming) -> list[tuple[float, float, int]]:
    """(per-layer ms, relative IQR, rounds) of each setting of a cascade test model."""
    weighted = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    out = []
    for i, _ in enumerate(settings):
        block = weighted[i * cascade:(i + 1) * cascade]
        rounds = np.sum([timing.layer_rounds_ms[n] for n in block], axis=0) / cascade
        q25, q50, q75 = np.percentile(rounds, [25, 50, 75])
        out.append((float(q50), float((q75 - q25) / q50) if q50 > 0 else 0.0, len(rounds)))
    return out


def measure_settings(settings: Sequence[LayerSetting], *, cascade: int = 10, backend: str = "compiled",
                     threads: int = 1, rounds: int = 7) -> list[tuple[float, float, int]]:
    """Measure settings sharing (layer type, channels, fmap) locally with one test model."""
    s0 = settings[0]
    if any((s.layer_type, s.channels, s.fmap) != (s0.layer_type, s0.channels, s0.fmap) for s in settings):
        raise InvalidConfig("measure_settings needs settings of one (layer type, channels, fmap)")
    model, x = cascade_model(s0.layer_type, s0.channels, s0.fmap, cascade * len(settings))
    masks = cascade_masks(model, settings, cascade)
    timing = measure_model(model, x, masks, backend=backend, threads=threads, rounds=rounds)
    return settings_from_timing(settings, cascade, model, timing)
