"""``proxy``: a training-free accuracy proxy from magnitude retention.

For every layer, the share of the pretrained weight energy (sum of squares) that survives its
action (filter-type change, then pruning mask) is computed; the proxy is
``base_accuracy * mean_l(retained_l) ** sharpness``. It costs no data and is memoized per
(layer, action), so a whole plan is scored in microseconds. It ranks plans the way magnitude
pruning intuition does, nothing more: use ``oneshot`` for real accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from evaluators.context import ModelContext
from evaluators.registry import register_accuracy
from evaluators.results import AccuracyResult
from npas_env.layers import LayerSpec
from npas_env.plan import FilterType, LayerAction, PruningPlan
from npas_env.pruning import model_pattern_set, module_weight, prune_mask
from npas_env.pruning.surgery import replace_filter_type


def pattern_set_for(context: ModelContext) -> torch.Tensor:
    """The model's 3x3 pattern set (built once from its pretrained weights, cached on context)."""
    if "pattern_set" not in context.extras:
        context.extras["pattern_set"] = model_pattern_set(context.model, context.layers,
                                                          context.search_space.num_patterns)
    return context.extras["pattern_set"]


def retained_energy(module: nn.Module, spec: LayerSpec, action: LayerAction,
                    pattern_set: torch.Tensor) -> float:
    """Fraction of ``module.weight``'s energy kept under ``action`` (0 for SKIP)."""
    weight = module_weight(module).detach()
    total = float(weight.double().pow(2).sum())
    if action.filter_type is FilterType.SKIP or total == 0.0:
        return 0.0
    # fork_rng: building the replacement module initialises weights from the global RNG, which
    # must not depend on what the memo already holds.
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        new = replace_filter_type(module, action.filter_type)
        pruned = new[1] if isinstance(new, nn.Sequential) else new
        w = module_weight(pruned).detach()
        mask = prune_mask(w, action.scheme, action.rate, action.block_size, pattern_set=pattern_set)
        kept = w * mask
        if isinstance(new, nn.Sequential):  # effective kernel of depthwise x pointwise
            kept = kept[:, :, 0, 0, None, None] * module_weight(new, "0").detach()[:, 0][None]
        return float(kept.double().pow(2).sum()) / total


@register_accuracy("proxy")
class ProxyAccuracy:
    """Magnitude-retention proxy; see the module docstring.

    Args:
        base_accuracy: accuracy of the unpruned model (the proxy's ceiling).
        sharpness: exponent on the mean retention (higher punishes losses more).
    """

    name = "proxy"

    def __init__(self, base_accuracy: float = 1.0, sharpness: float = 2.0) -> None:
        self.base_accuracy, self.sharpness = float(base_accuracy), float(sharpness)
        self._memo: dict[tuple[str, int, LayerAction], float] = {}

    def config(self) -> dict[str, Any]:
        return {"base_accuracy": self.base_accuracy, "sharpness": self.sharpness}

    def evaluate(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[AccuracyResult]:
        return [self._one(context, plan) for plan in plans]

    def _one(self, context: ModelContext, plan: PruningPlan) -> AccuracyResult:
        fp = context.arch_fingerprint
        total = 0.0
        for idx, (spec, action) in enumerate(zip(context.layers, plan.actions)):
            key = (fp, idx, action)
            value = self._memo.get(key)
            if value is None:
                module = context.model.get_submodule(spec.name)
                value = 1.0 if action.is_dense and action.filter_type is FilterType.KEEP else \
                    retained_energy(module, spec, action, pattern_set_for(context))
                self._memo[key] = value
            total += value
        mean = total / max(len(context.layers), 1)
        return AccuracyResult(self.base_accuracy * mean ** self.sharpness,
                              details={"mean_retained_energy": mean})
