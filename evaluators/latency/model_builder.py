"""``build_model_lut``: time every (layer, action) of one model inside the compiled model (resumable).

Each compiled model of the build gives **every** layer a different action still missing from the
table (shuffled per layer, so each build looks like a random plan); the compiled runtime's per-op
profile separates the layers' own op times (:func:`npas_env.tables.layer_ops_ms`, shared with the
tabular builder), so one gcc run measures one setting per layer. Layers whose actions are all done
repeat a measured one (an extra sample). The first build is the dense model; the base term is the
median over builds of the whole-call latency minus the layers' own op times (:func:`base_term`). See
:mod:`evaluators.latency.model_table` for the table and the prediction. The local runner times the
dense model after every round and rescales the round to the dense build's latency, so builds made
while the machine ran faster or slower land on one scale (:mod:`evaluators.latency.anchor`).

CLI: ``npas build-lut --model resnet20 --device NAME --out FILE [--rates 2 5 10]`` (mounted by
:func:`evaluators.latency.lut_builder.add_build_lut_parser`).
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluators.context import ModelContext
from evaluators.latency.lut_builder import machine_info, progress_bar
from evaluators.latency.lut_table import backend_version
from evaluators.latency.model_table import ModelLatencyTable
from evaluators.latency.profiling import ModelTiming, pin_threads, time_compiled
from npas_env.errors import BackendError, InvalidAction, InvalidConfig, InvalidPlan
from npas_env.plan import FilterType, LayerAction, PruningPlan
from npas_env.pruning.apply import apply_plan, model_pattern_set
from npas_env.tables import layer_ops_ms, table_actions

#: (pruned model, example input, masks) -> timing with per-op and whole-call rounds.
ModelRunner = Callable[[torch.nn.Module, torch.Tensor, dict[str, torch.Tensor]], ModelTiming]


class LocalModelRunner:
    """Compile with ``compiler_backend`` and time per-op and whole-call rounds on this machine."""

    def __init__(self, threads: int = 1, rounds: int = 7, min_round_s: float = 0.02) -> None:
        self.threads, self.rounds, self.min_round_s = threads, rounds, min_round_s
        self.version = backend_version()
        self.reference: Any = None

    def set_reference(self, model: torch.nn.Module, x: torch.Tensor) -> None:
        """Time the dense ``model`` after every round from now on (anchors builds to one scale)."""
        self.reference = self._compile(model, x, {})

    def __call__(self, model: torch.nn.Module, x: torch.Tensor, masks: dict[str, torch.Tensor]) -> ModelTiming:
        return time_compiled(self._compile(model, x, masks), rounds=self.rounds,
                             min_round_s=self.min_round_s, wall=True, reference=self.reference)

    def _compile(self, model: torch.nn.Module, x: torch.Tensor, masks: dict[str, torch.Tensor]) -> Any:
        from compiler_backend import compile_model

        return compile_model(model, x, masks, threads=self.threads)


def layer_actions(context: ModelContext, rates: Sequence[float] | None = None) -> list[list[LayerAction]]:
    """Per layer, the canonical actions to measure: all its mask allows (filter pruning on coupled
    layers included), optionally only the pruned ones at ``rates`` (dense entries always)."""
    out = []
    for spec in context.layers:
        acts = table_actions(context.search_space, spec, coupled_filter=True)
        out.append([a for a in acts if a.is_dense or rates is None or a.rate in rates])
    return out


def build_model_lut(context: ModelContext, out: str | Path, *, device: str = "local",
                    rates: Sequence[float] | None = None, max_builds: int | None = None,
                    runner: ModelRunner | None = None, resume: bool = True, progress: bool = True,
                    threads: int = 1, rounds: int = 7, seed: int = 0, force: bool = False) -> ModelLatencyTable:
    """Measure ``context``'s layers in context and write the table to ``out`` after every build.

    Args:
        context: the model; its search space defines the actions.
        out: the table file; with ``resume`` an existing one is extended (done settings skipped).
        device: device name recorded in (and checked against) the table.
        rates: measure pruned actions only at these rates (others are interpolated); None: all.
        max_builds: stop after this many compiled models in this run (None: until complete).
        runner: how a pruned model is timed (default :class:`LocalModelRunner`).
        resume, progress, threads, force: as in :func:`~evaluators.latency.lut_builder.build_lut`.
        rounds: profiling rounds per compiled model.
        seed: order in which each layer's actions are combined into builds.

    Returns:
        The table; ``table.machine["build"]`` has settings, builds, seconds, settings per minute.

    Raises:
        TableMismatch: ``out`` belongs to another model, device or backend.
        CacheError: ``out`` exists but is unreadable.
    """
    pin_threads(threads)
    run = runner or LocalModelRunner(threads, rounds)
    table = _open_table(context, Path(out), device, str(getattr(run, "version", "custom")),
                        threads, resume, force)
    if callable(getattr(run, "set_reference", None)):  # anchored: rounds rescaled to the dense build
        run.set_reference(context.model, context.example_input)  # type: ignore[attr-defined]
    todo = _todo(context, table, rates, seed)
    pattern_set = _pattern_set(context)
    n_builds = max((len(t) for t in todo), default=0) + (table.base_ms is None)
    if max_builds is not None:
        n_builds = min(n_builds, max_builds)
    start, done, failures = time.perf_counter(), 0, []
    bar = progress_bar(sum(map(len, todo)), progress)
    fill = random.Random(seed + 1)
    for _ in range(n_builds):
        dense = table.base_ms is None
        fresh = 0 if dense else sum(1 for t in todo if t)
        actions = _next_actions(context, table, todo, fill, dense)
        try:
            _measure_build(context, table, actions, run, pattern_set, dense)
            done += fresh
        except (BackendError, InvalidAction, InvalidPlan, OSError, RuntimeError) as exc:
            failures.append(f"build {len(table.builds)}: {type(exc).__name__}: {exc}")
            if dense:
                raise
        seconds = time.perf_counter() - start
        table.machine["build"] = {"settings": done, "builds": len(table.builds), "seconds": round(seconds, 2),
                                  "settings_per_min": round(60 * done / max(seconds, 1e-9), 1),
                                  "failures": failures}
        table.save(out)
        bar.update(fresh)
        bar.set_postfix(rate=f"{60 * done / max(seconds, 1e-9):.0f}/min")
    bar.close()
    if table.builds:
        table.base_ms = base_term(table.builds)
    if failures:
        warnings.warn(f"{len(failures)} compiled models failed (their settings are retried on the next "
                      f"run): {failures[:3]}", stacklevel=2)
    return table


def _open_table(context: ModelContext, out: Path, device: str, version: str, threads: int,
                resume: bool, force: bool) -> ModelLatencyTable:
    if resume and out.exists():
        return ModelLatencyTable.load(out, device=device, backend=version,
                                      arch_fingerprint=context.arch_fingerprint, force=force)
    return ModelLatencyTable(context.name, context.arch_fingerprint, context.layer_names, device, version,
                             machine_info(), threads=threads)


def _todo(context: ModelContext, table: ModelLatencyTable, rates: Sequence[float] | None,
          seed: int) -> list[list[LayerAction]]:
    """Per layer, the missing actions: shuffled, then by rate level (so a partial build covers
    every family at a few well-spread rates, the rest interpolated)."""
    rng = random.Random(seed)
    level = {r: i for i, r in enumerate(spread_order(sorted({a.rate for acts in layer_actions(context, rates)
                                                               for a in acts})))}
    todo = []
    for name, acts in zip(context.layer_names, layer_actions(context, rates), strict=True):
        missing = [a for a in acts if (name, a) not in table]
        rng.shuffle(missing)
        todo.append(sorted(missing, key=lambda a: -1 if a.is_dense else level[a.rate]))
    return todo


def spread_order(rates: Sequence[float]) -> list[float]:
    """``rates`` ordered farthest-point first in log scale, starting from the middle one."""
    pruned = [r for r in rates if r > 1.0]
    if not pruned:
        return list(rates)
    order = [pruned[len(pruned) // 2]]
    while len(order) < len(pruned):
        order.append(max((r for r in pruned if r not in order),
                         key=lambda r: min(abs(np.log(r / o)) for o in order)))
    return [1.0, *order] if 1.0 in rates else order


def _next_actions(context: ModelContext, table: ModelLatencyTable, todo: list[list[LayerAction]],
                  fill: random.Random, dense: bool) -> list[LayerAction]:
    """The next build's plan: each layer's next missing action, else a measured one (context)."""
    if dense:
        return [LayerAction() for _ in context.layers]
    return [t.pop(0) if t else fill.choice([a for (n, a) in table.entries if n == name] or [LayerAction()])
            for name, t in zip(context.layer_names, todo, strict=True)]


def _pattern_set(context: ModelContext) -> torch.Tensor | None:
    """The model's pattern set, computed once for all builds (as ``apply_plan`` would)."""
    if not any(a.scheme.value == "pattern" for acts in layer_actions(context) for a in acts):
        return None
    return model_pattern_set(context.model, list(context.layers), context.search_space.num_patterns)


def _measure_build(context: ModelContext, table: ModelLatencyTable, actions: list[LayerAction],
                   run: ModelRunner, pattern_set: torch.Tensor | None, dense: bool) -> None:
    """Compile and time one plan; add each layer's own op time (and, if dense, the base term)."""
    plan = PruningPlan(tuple(actions), context.layer_names, context.arch_fingerprint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned = apply_plan(context.model, plan, list(context.layers), pattern_set=pattern_set)
    timing = run(pruned.model, context.example_input, pruned.masks)
    n_rounds = len(timing.wall_rounds_ms)
    if n_rounds == 0:
        raise InvalidConfig("the model runner must time whole calls too (ModelTiming.wall_rounds_ms)")
    per_round = [{op: v[r] for op, v in timing.layer_rounds_ms.items()} for r in range(n_rounds)]
    layer_rounds = np.array([[layer_ops_ms(name, ops) for ops in per_round] for name in context.layer_names])
    walls = np.asarray(timing.wall_rounds_ms)
    if dense:
        table.dense_ms = float(np.median(walls))
    if len(timing.reference_rounds_ms) == n_rounds and table.dense_ms:  # anchored runner
        scale = table.dense_ms / np.asarray(timing.reference_rounds_ms)
        layer_rounds, walls = layer_rounds * scale, walls * scale
    if not dense and table.base_ms is not None:
        _charge_skips(layer_rounds, walls, actions, table.base_ms)
    for name, action, values in zip(context.layer_names, actions, layer_rounds, strict=True):
        q25, q50, q75 = np.percentile(values, [25, 50, 75])
        table.add_sample(name, action, float(q50), float((q75 - q25) / q50) if q50 > 0 else 0.0)
    table.builds.append({"actions": [a.to_dict() for a in actions], "wall_ms": float(np.median(walls)),
                         "layers_ms": float(np.median(layer_rounds.sum(axis=0)))})
    table.base_ms = base_term(table.builds)


def _charge_skips(layer_rounds: np.ndarray, walls: np.ndarray, actions: Sequence[LayerAction],
                  base_ms: float) -> None:
    """Give the build's skipped layers the time no layer's own ops account for (in place).

    A skipped conv leaves ops of no layer behind: its BatchNorm, now an affine op, and the
    residual add it had absorbed. Without this their time went nowhere (the base term comes
    from builds that skip nothing): a ResNet-20 plan with 9 skips spent 45 of its 88 us in
    such ops at generator v36, 13 of 56 at v37. The remainder over the dense model's base is
    shared equally.
    """
    skipped = [i for i, a in enumerate(actions) if a.filter_type is FilterType.SKIP]
    if skipped:
        left = np.maximum(walls - layer_rounds.sum(axis=0) - base_ms, 0.0)
        layer_rounds[skipped] += left / len(skipped)


def base_term(builds: Sequence[dict[str, Any]]) -> float:
    """Median over the compiled models of (whole-call ms - sum of the layers' own op ms).

    The first build is the dense model; later ones refine the estimate: the remainder is the same
    ops in every build, and one difference of two large noisy timings is not a stable estimate.
    """
    return float(np.median([b["wall_ms"] - b["layers_ms"] for b in builds]))


def describe(table: ModelLatencyTable) -> dict[str, Any]:
    """A one-line summary: entries, builds, base term, build rate and noise."""
    return {"entries": len(table), "builds": len(table.builds), "base_ms": table.base_ms,
            "dense_ms": table.dense_ms,
            "settings_per_min": table.machine.get("build", {}).get("settings_per_min"),
            "noise": table.noise()}
