"""Run reports: the per-layer decisions table, before/after figures, and the Pareto plot."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npas_env.io import atomic_write_bytes
from npas_env.layers import LayerSpec
from npas_env.problem import Trial


@dataclass
class RunSummary:
    """Figures of one finished run (all latencies in ms, accuracies as fractions)."""

    model: str
    dataset: str
    agent: str
    budget_ms: float
    dense_latency_ms: float
    final_latency_ms: float | None
    dense_accuracy: float
    final_accuracy: float | None
    true_evaluations: int
    phase3_table: list[dict[str, Any]] = field(default_factory=list)
    phase1_replaced: list[str] = field(default_factory=list)
    phase1_left: list[str] = field(default_factory=list)
    fallback_ops: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    threads: int = 1

    @property
    def speedup(self) -> float | None:
        if not self.final_latency_ms:
            return None
        return self.dense_latency_ms / self.final_latency_ms


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (latency, accuracy) not dominated by a faster-and-at-least-as-accurate one."""
    front: list[tuple[float, float]] = []
    best_acc = -float("inf")
    for lat, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best_acc:
            front.append((lat, acc))
            best_acc = acc
    return front


def write_pareto_plot(path: Path, trials: Sequence[Trial], summary: RunSummary) -> None:
    """Scatter of explored (latency, accuracy) points with the Pareto front and the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(t.latency_ms, t.accuracy) for t in trials if t.latency_ms and t.accuracy is not None]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if points:
        ax.scatter(*zip(*points), s=14, alpha=0.6, label="explored plans")
        front = pareto_front(points)
        ax.plot(*zip(*front), "r-o", ms=4, label="Pareto front")
    ax.axvline(summary.budget_ms, color="gray", ls="--", label="latency budget")
    ax.scatter([summary.dense_latency_ms], [summary.dense_accuracy], marker="*", s=120,
               color="k", label="dense (phase 1)")
    if summary.final_latency_ms and summary.final_accuracy is not None:
        ax.scatter([summary.final_latency_ms], [summary.final_accuracy], marker="D", s=60,
                   color="green", label="final (phase 3)")
    ax.set_xlabel(f"compiled latency, batch 1, {summary.threads} thread(s) [ms]")
    ax.set_ylabel("accuracy (explored: one-shot; dense / final: test)")
    ax.set_title(f"{summary.model} on {summary.dataset}: {summary.agent} search")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    atomic_write_bytes(Path(path), png.getvalue())


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def failure_lines(trials: Sequence[Trial], top: int = 10) -> list[str]:
    """A markdown section counting failed evaluations by reason (empty if none failed)."""
    reasons = Counter(t.error.strip()[:160] for t in trials if t.error)
    if not reasons:
        return []
    lines = ["", "## Failed evaluations", "",
             f"{sum(reasons.values())} of {len(trials)} true evaluations failed; each scored the "
             "failure reward and the search went on.", "", "| count | reason |", "|---|---|"]
    lines += [f"| {n} | {reason.replace('|', '/')} |" for reason, n in reasons.most_common(top)]
    if len(reasons) > top:
        lines.append(f"| {sum(n for _, n in reasons.most_common()[top:])} | (other reasons) |")
    return lines


def render_report(summary: RunSummary, layers: Sequence[LayerSpec], plan_actions: Sequence[Any],
                  best: Trial | None, trials: Sequence[Trial] = ()) -> str:
    """The run's markdown report (``trials``: every true evaluation, for the failure counts)."""
    lines = [f"# npas search: {summary.model} on {summary.dataset}", "",
             "| | dense (after phase 1) | final (phase 3) |", "|---|---|---|",
             f"| accuracy (test) | {summary.dense_accuracy:.4f} | {_fmt(summary.final_accuracy, '.4f')} |",
             f"| compiled latency (ms) | {summary.dense_latency_ms:.4f} | "
             f"{_fmt(summary.final_latency_ms, '.4f')} |",
             f"| speedup | 1.00x | {_fmt(summary.speedup, '.2f')}x |", "",
             f"Latency budget {summary.budget_ms:.4f} ms; {summary.true_evaluations} true evaluations "
             f"by `{summary.agent}`; latency measured by our compiler on this machine "
             f"({summary.threads} thread(s), batch 1; each model timed in rounds alternating with "
             "the dense model, median ratio x the dense latency).", ""]
    if best is not None:
        lines += [f"Best searched plan: reward {best.reward:.4f}, one-shot accuracy "
                  f"{_fmt(best.accuracy, '.4f')}, latency {_fmt(best.latency_ms, '.4f')} ms.", ""]
    lines += ["## Per-layer decisions", "", "| layer | kind | kernel | in -> out | MACs | decision |",
              "|---|---|---|---|---|---|"]
    for spec, action in zip(layers, plan_actions):
        lines.append(f"| {spec.name} | {spec.kind.value} | {spec.kernel_size[0]}x{spec.kernel_size[1]} | "
                     f"{spec.in_channels} -> {spec.out_channels} | {spec.macs:,} | {action} |")
    if summary.phase3_table:
        lines += ["", "## Phase 3 candidates", "", "| algorithm | accuracy | latency (ms) | meets budget | error |",
                  "|---|---|---|---|---|"]
        for row in summary.phase3_table:
            lines.append(f"| {row.get('name')} | {_fmt(row.get('accuracy'), '.4f')} | "
                         f"{_fmt(row.get('latency_ms'), '.4f')} | {row.get('meets_budget')} | "
                         f"{row.get('error') or ''} |")
    lines += failure_lines(trials)
    lines += ["", "## Phase 1", "", f"Replaced: {', '.join(summary.phase1_replaced) or 'nothing'}.",
              f"Left: {', '.join(summary.phase1_left) or 'nothing'}."]
    if summary.fallback_ops:
        lines += ["", f"Ops run through PyTorch inside the compiled runtime: {', '.join(summary.fallback_ops)}."]
    lines += ["", "## Time", "", *[f"- {k}: {v:.1f} s" for k, v in summary.seconds.items()], "",
              "![explored plans](pareto.png)", ""]
    return "\n".join(lines)
