"""NPAS phase 3: pick the pruning algorithm for the chosen plan, under the latency budget.

Once phase 2 has fixed the plan (scheme, rate, block size, filter type per layer), every candidate
algorithm (``magnitude``, ``admm``, ``group_lasso``; see :mod:`evaluators.accuracy.algorithms`)
prunes and retrains the pretrained model on the same short budget. Each result's latency is
measured on its *realized* plan (the plan with every layer's achieved rate, which differs from the
planned one when the algorithm chooses rates itself). The best validation accuracy among the
candidates within the budget wins; if none is within it, the fastest one is returned and
``meets_budget`` is False. Run the winner's full-length prune + retrain afterwards.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from evaluators.accuracy.algorithms.base import (
    AlgorithmResult,
    PruningAlgorithm,
    TrainSettings,
    make_algorithm,
)
from evaluators.accuracy.oneshot import resolve_dataset
from evaluators.context import ModelContext
from npas_env.data import DataSplits, check_dataset
from npas_env.errors import InvalidConfig
from npas_env.plan import LayerAction, PruningPlan
from npas_env.pruning import check_plan, masked_module_name

DEFAULT_CANDIDATES = ("magnitude", "admm", "group_lasso")


@dataclass(frozen=True, eq=False)
class Phase3Result:
    """The chosen algorithm and its pruned model.

    Attributes:
        best_name: name of the chosen candidate.
        model: its pruned, retrained model.
        masks: its masks (qualified module name -> bool, True = kept).
        accuracy: its validation accuracy (None if every candidate failed).
        latency_ms: its measured latency (None without a latency evaluator).
        plan: its realized plan (per-layer achieved rates).
        meets_budget: whether it is within the latency budget (True without a budget).
        table: one row per candidate: name, accuracy, latency_ms, achieved_rate, seconds,
            meets_budget, error.
        error: set when every candidate failed.
    """

    best_name: str
    model: nn.Module
    masks: dict[str, Tensor]
    accuracy: float | None
    latency_ms: float | None
    plan: PruningPlan
    meets_budget: bool = True
    table: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_markdown(self) -> str:
        """The per-candidate table as markdown (the chosen row marked with *)."""
        lines = ["| algorithm | val acc | latency ms | rate | seconds | within budget | error |",
                 "|---|---|---|---|---|---|---|"]
        for row in self.table:
            acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
            lat = "-" if row["latency_ms"] is None else f"{row['latency_ms']:.3f}"
            mark = " *" if row["name"] == self.best_name else ""
            lines.append(f"| {row['name']}{mark} | {acc} | {lat} | {row['achieved_rate']:.2f} | "
                         f"{row['seconds']:.1f} | {row['meets_budget']} | {row['error'] or ''} |")
        return "\n".join(lines)


def realized_plan(plan: PruningPlan, context: ModelContext, actions: Sequence[LayerAction],
                  masks: Mapping[str, Tensor]) -> PruningPlan:
    """``plan`` with each pruned layer's rate replaced by the rate its mask achieves."""
    new = []
    for spec, action in zip(context.layers, actions, strict=True):
        mask = masks.get(masked_module_name(spec.name, action.filter_type) or "")
        if mask is not None and not action.is_dense:
            kept = max(int(mask.sum()), 1)
            action = LayerAction(action.scheme, max(1.0, mask.numel() / kept), action.block_size,
                                 action.filter_type)
        new.append(action)
    return PruningPlan(tuple(new), plan.layer_names, plan.arch_fingerprint,
                       {**plan.metadata, "realized": True})


def _row(result: AlgorithmResult, latency_ms: float | None, latency_error: str | None,
         budget_ms: float | None) -> dict[str, Any]:
    total = sum(m.numel() for m in result.masks.values())
    kept = sum(int(m.sum()) for m in result.masks.values())
    meets = budget_ms is None or (latency_ms is not None and latency_ms <= budget_ms)
    return {"name": result.name, "accuracy": result.accuracy, "latency_ms": latency_ms,
            "achieved_rate": total / kept if kept else 1.0, "seconds": result.seconds,
            "meets_budget": meets, "error": result.error or latency_error}


def _pick(rows: list[dict[str, Any]]) -> int:
    ok = [i for i, r in enumerate(rows) if r["error"] is None]
    if not ok:
        return 0
    within = [i for i in ok if rows[i]["meets_budget"]]
    if within:
        return max(within, key=lambda i: (rows[i]["accuracy"], -i))
    timed = [i for i in ok if rows[i]["latency_ms"] is not None]
    if timed:
        return min(timed, key=lambda i: (rows[i]["latency_ms"], i))
    return max(ok, key=lambda i: (rows[i]["accuracy"], -i))


def phase3(context: ModelContext, plan: PruningPlan, data: str | DataSplits, *,
           candidates: Sequence[str | PruningAlgorithm] = DEFAULT_CANDIDATES, epochs: int = 2,
           latency_evaluator: Any | None = None, latency_budget_ms: float | None = None,
           settings: TrainSettings | None = None) -> Phase3Result:
    """Try each candidate algorithm on a short budget and keep the best within the latency budget.

    Args:
        context: the pretrained model and its layers (not modified).
        plan: the phase-2 plan.
        data: a registered dataset name or DataSplits (train for training, val for scoring).
        candidates: algorithm names (see ``algorithm_names()``) or algorithm objects.
        epochs: training epochs per candidate (its ADMM / regularisation epochs included).
        latency_evaluator: a LatencyEvaluator to measure each realized plan (optional).
        latency_budget_ms: the target T; needs ``latency_evaluator``.
        settings: optimizer / data settings shared by all candidates.

    Returns:
        A :class:`Phase3Result` (its ``table`` has one row per candidate). If every candidate
        failed (e.g. NaN loss), ``error`` is set and ``accuracy`` is None.

    Raises:
        InvalidPlan: the plan was made for another model.
        InvalidData: the dataset does not fit the model.
        InvalidConfig: no candidates, or a budget without a latency evaluator.
    """
    if not candidates:
        raise InvalidConfig("phase3 needs at least one candidate algorithm")
    if latency_budget_ms is not None and (latency_evaluator is None or latency_budget_ms <= 0):
        raise InvalidConfig("latency_budget_ms needs a latency_evaluator and must be > 0, got "
                            f"{latency_budget_ms} with evaluator {latency_evaluator!r}")
    check_plan(plan, context.layers)
    splits = resolve_dataset(data)
    check_dataset(splits, context.model)
    settings = settings or TrainSettings()
    results, rows, plans = [], [], []
    for candidate in candidates:
        algo = make_algorithm(candidate) if isinstance(candidate, str) else candidate
        start = time.perf_counter()
        result = algo.run(context.model, context.layers, plan, splits, epochs=epochs, settings=settings)
        realized = realized_plan(plan, context, result.actions, result.masks)
        latency_ms = latency_error = None
        if latency_evaluator is not None and result.ok:
            if callable(getattr(latency_evaluator, "measure_model", None)):  # the model itself
                measured = measure_model_in_context(latency_evaluator, result.model, result.masks,
                                                    context)
            else:  # evaluators that only take plans: the realized plan
                measured = latency_evaluator.measure(context, [realized])[0]
            latency_ms, latency_error = measured.latency_ms, measured.error
        row = _row(result, latency_ms, latency_error, latency_budget_ms)
        row["seconds"] = time.perf_counter() - start
        results.append(result)
        rows.append(row)
        plans.append(realized)
    best = _pick(rows)
    chosen = results[best]
    error = None
    if all(r["error"] is not None for r in rows):
        error = "every candidate failed: " + "; ".join(f"{r['name']}: {r['error']}" for r in rows)
    return Phase3Result(chosen.name, chosen.model, chosen.masks, chosen.accuracy,
                        rows[best]["latency_ms"], plans[best], rows[best]["meets_budget"] and not error,
                        tuple(rows), error)


def measure_model_in_context(evaluator: Any, model: nn.Module, masks: Any, context: ModelContext) -> Any:
    """``evaluator.measure_model`` on the fine-tuned model, passing ``context`` where accepted
    (the compiled evaluator anchors its timing to the context's dense model)."""
    try:
        accepts = "context" in inspect.signature(evaluator.measure_model).parameters
    except (TypeError, ValueError):
        accepts = False
    if accepts:
        return evaluator.measure_model(model, context.example_input, masks, context=context)
    return evaluator.measure_model(model, context.example_input, masks)
