"""Magnitude pruning: one-shot, or gradual over several stages, then a masked retrain."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from torch import nn

from evaluators.accuracy.algorithms.base import (
    AlgorithmResult,
    TrainSettings,
    failure,
    finish,
    prepare,
    register_algorithm,
    train,
    with_rate,
)
from npas_env.data import DataSplits
from npas_env.errors import InvalidConfig
from npas_env.layers import LayerSpec
from npas_env.plan import PruningPlan
from npas_env.pruning import compute_masks


@register_algorithm("magnitude")
class MagnitudePruning:
    """Prune by weight magnitude with the plan's scheme, rate and block size.

    ``mode="oneshot"`` prunes to the final rates at once and spends the whole budget on a masked
    retrain. ``mode="gradual"`` reaches the rates in ``stages`` steps of a geometric schedule
    (stage k prunes to ``rate ** (k / stages)``, recomputing masks from the current weights) with
    one epoch of masked training per stage, then retrains with the remaining budget.

    Args:
        mode: "oneshot" or "gradual".
        stages: pruning steps of the gradual mode (capped at the epoch budget).
    """

    name = "magnitude"

    def __init__(self, mode: Literal["oneshot", "gradual"] = "oneshot", stages: int = 3) -> None:
        if mode not in ("oneshot", "gradual") or stages < 1:
            raise InvalidConfig(f"magnitude: mode must be 'oneshot' or 'gradual' and stages >= 1, got "
                                f"{mode!r}, {stages}")
        self.mode, self.stages = mode, int(stages)

    def run(self, model: nn.Module, layers: Sequence[LayerSpec], plan: PruningPlan, data: DataSplits,
            *, epochs: int, settings: TrainSettings = TrainSettings()) -> AlgorithmResult:  # noqa: B008
        start = time.perf_counter()
        prep = prepare(model, layers, plan, settings.device)
        net = prep.model
        stages = min(self.stages, max(epochs, 1)) if self.mode == "gradual" else 0
        details: dict[str, object] = {"mode": self.mode, "stages": stages}
        for k in range(1, stages):  # the last stage is the final prune below
            actions = [with_rate(a, a.rate ** (k / stages)) for a in prep.actions]
            masks = compute_masks(net, layers, actions, pattern_set=prep.pattern_set)
            res = train(net, data, 1, settings, masks=masks, epoch_offset=k)
            if not res.ok:
                return failure(self.name, prep, net, masks, f"stage {k}: {res.error}", start, details)
        masks = compute_masks(net, layers, prep.actions, pattern_set=prep.pattern_set)
        retrain = max(epochs - max(stages - 1, 0), 0)
        return finish(self.name, prep, net, masks, data, retrain, settings, start, details,
                      epoch_offset=stages)
