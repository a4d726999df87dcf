"""TODAES rule-based pruning-scheme mapping (Gong et al. 2021, section 5.2, Fig. 8): training-free.

Per layer, from its type alone plus a per-layer latency model:

1. depthwise 3x3 conv: not pruned;
2. other 3x3 conv: pattern pruning on hard (large) datasets, block-punched on easy ones;
3. Linear and 1x1 conv: block-based; any other conv (5x5, 7x7...): block-punched.

Block size (5.2.2): with ``normLat(b) = latency(layer, scheme, rate, b) / MACs``, the smallest
block ``b`` with ``normLat(b) <= (1 + beta) * normLat(whole matrix)`` at the same rate ("whole
matrix" = block (0, 0), i.e. structured pruning). Smaller blocks keep more accuracy, so the
smallest one that is fast enough wins. No training is involved.

Rates: the paper takes per-layer rates from reweighted group lasso training, which is not part of
a search-time baseline. Here the default is a **uniform rate**: the smallest rate of the search
space whose predicted latency (the per-layer model summed, calibrated so the dense model matches
the problem's measured reference latency) meets the latency budget. That plan and its neighbours
at the next rates are the only true evaluations (``max_evals``, default 3). ``rates_fn`` replaces
the uniform rate with per-layer rates (e.g. from ``evaluators/accuracy/algorithms`` group lasso);
its rates are snapped to the nearest allowed rate, and that plan is evaluated first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from baselines.base import Decided, EvalBudget, best_trial, build_plan, nearest
from npas_env.layers import LayerKind, LayerSpec
from npas_env.plan import BlockSize, LayerAction, PruningPlan, Scheme
from npas_env.problem import SearchProblem, Trial

#: Per-layer latency model: (layer, action) -> milliseconds (``AnalyticLatency().layer_ms``, a LUT).
LayerLatency = Callable[[LayerSpec, LayerAction], float]
#: Per-layer rates hook: (problem, mapped actions at the uniform rate) -> one rate per layer.
RatesFn = Callable[[SearchProblem, Sequence[LayerAction]], Sequence[float]]


@dataclass
class RuleBasedSettings:
    """Settings of :func:`run`."""

    beta: float = 0.2
    """Accepted latency degradation of a block size versus whole-matrix pruning (0.2 = 20 %)."""
    hard_dataset: bool = False
    """Large/hard task (ImageNet-like): pattern on 3x3 convs; False (CIFAR-like): block-punched."""
    layer_latency_ms: LayerLatency | None = None
    """Per-layer latency model; None: ``AnalyticLatency().layer_ms`` (swap in the LUT's)."""
    rate: float | None = None
    """Fixed uniform rate; None: the smallest rate whose predicted latency meets the budget."""
    rates_fn: RatesFn | None = None
    """Per-layer rates hook (group lasso); replaces the uniform rate when set."""
    max_evals: int = 3
    """True evaluations: the chosen plan, then neighbouring uniform rates."""


def default_latency_model() -> LayerLatency:
    """The analytic roofline model's per-layer latency."""
    from evaluators.latency.analytic import AnalyticLatency

    return AnalyticLatency().layer_ms


def layer_scheme(spec: LayerSpec, hard_dataset: bool) -> Scheme | None:
    """The scheme Fig. 8 maps to ``spec`` (None: leave dense)."""
    if spec.kind is LayerKind.DEPTHWISE:
        return None
    if spec.kind is LayerKind.LINEAR or spec.kernel_size == (1, 1):
        return Scheme.BLOCK_BASED
    if spec.kernel_size == (3, 3):
        return Scheme.PATTERN if hard_dataset else Scheme.BLOCK_PUNCHED
    return Scheme.BLOCK_PUNCHED


def block_area(spec: LayerSpec, block: BlockSize) -> int:
    """Weights-per-block footprint p x q, with 0 meaning the whole dimension."""
    rows, cols = spec.out_channels, spec.in_channels // spec.groups
    return (block[0] or rows) * (block[1] or cols)


def select_block_size(spec: LayerSpec, scheme: Scheme, rate: float, candidates: Sequence[BlockSize],
                      latency_ms: LayerLatency, beta: float) -> BlockSize:
    """The smallest candidate whose MAC-normalized latency is within ``beta`` of whole-matrix."""
    macs = max(spec.macs, 1)
    structured = latency_ms(spec, LayerAction(scheme, rate, (0, 0))) / macs
    ordered = sorted(candidates, key=lambda b: (block_area(spec, b), b))
    for block in ordered:
        if latency_ms(spec, LayerAction(scheme, rate, block)) / macs <= (1.0 + beta) * structured:
            return block
    return ordered[-1]


def map_layer(problem: SearchProblem, spec: LayerSpec, rate: float, cfg: RuleBasedSettings,
              latency_ms: LayerLatency) -> LayerAction:
    """The rule-based action of one layer at ``rate``."""
    scheme = layer_scheme(spec, cfg.hard_dataset)
    if scheme is None or rate <= 1.0 or scheme not in problem.space.schemes:
        return LayerAction()
    if not scheme.uses_block:
        return LayerAction(scheme, rate)
    block = select_block_size(spec, scheme, rate, problem.space.allowed_block_sizes(spec),
                              latency_ms, cfg.beta)
    return LayerAction(scheme, rate, block)


def mapped_plan(problem: SearchProblem, rates: Sequence[float], cfg: RuleBasedSettings,
                latency_ms: LayerLatency) -> PruningPlan:
    """The mapping with one rate per layer (masked choices fall back to dense)."""
    by_layer = dict(zip((s.name for s in problem.layers), rates, strict=True))

    def choose(spec: LayerSpec, decided: Decided) -> LayerAction:
        return map_layer(problem, spec, by_layer[spec.name], cfg, latency_ms)

    return build_plan(problem, choose)


def predicted_ms(problem: SearchProblem, plan: PruningPlan, latency_ms: LayerLatency) -> float:
    """Latency of ``plan`` by the layer model, calibrated to the problem's dense reference."""
    dense = sum(latency_ms(s, LayerAction()) for s in problem.layers)
    total = sum(latency_ms(s, a) for s, a in zip(problem.layers, plan.actions, strict=True))
    reference = problem.scorer.reference_ms
    scale = reference / dense if dense > 0 and reference == reference and reference > 0 else 1.0
    return total * scale


def uniform_rate(problem: SearchProblem, cfg: RuleBasedSettings, latency_ms: LayerLatency) -> float:
    """The smallest rate of the space whose mapped plan is predicted to meet the budget."""
    rates = sorted(r for r in problem.space.rates if r > 1.0)
    budget_ms = problem.scorer.budget_ms
    for rate in rates:
        plan = mapped_plan(problem, [rate] * len(problem.layers), cfg, latency_ms)
        if predicted_ms(problem, plan, latency_ms) <= budget_ms:
            return rate
    return rates[-1] if rates else 1.0


def run(problem: SearchProblem, budget: int, seed: int = 0,
        settings: RuleBasedSettings | None = None) -> Trial | None:
    """Map schemes and block sizes by rule, pick rates, evaluate a handful of plans.

    Args:
        problem: the search problem.
        budget: true evaluations this run may spend (it uses at most ``max_evals``).
        seed: unused (training-free and deterministic); kept for the common signature.
        settings: see :class:`RuleBasedSettings`.

    Returns:
        The best evaluated trial, or None if nothing was evaluated.
    """
    cfg = settings or RuleBasedSettings()
    latency_ms = cfg.layer_latency_ms or default_latency_model()
    start = problem.n_evals
    counter = EvalBudget(problem, min(budget, cfg.max_evals))
    chosen = cfg.rate if cfg.rate is not None else uniform_rate(problem, cfg, latency_ms)
    n = len(problem.layers)
    plans: list[PruningPlan] = []
    if cfg.rates_fn is not None:
        template = mapped_plan(problem, [chosen] * n, cfg, latency_ms).actions
        allowed = list(problem.space.rates)
        rates = [nearest(allowed, float(r)) for r in cfg.rates_fn(problem, template)]
        plans.append(mapped_plan(problem, rates, cfg, latency_ms))
    ladder = sorted(r for r in problem.space.rates if r > 1.0) or [chosen]
    idx = ladder.index(nearest(ladder, chosen))
    order = sorted(range(len(ladder)), key=lambda i: (abs(i - idx), -i))
    plans += [mapped_plan(problem, [ladder[i]] * n, cfg, latency_ms) for i in order]
    for plan in plans:
        if counter.left <= 0:
            break
        counter.evaluate_one(plan)
    return best_trial(problem, start)
