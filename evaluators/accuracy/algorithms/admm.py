"""ADMM pruning with fixed per-layer rates (PatDNN / YOLObile style), then a masked retrain.

The constrained problem ``min f(W) s.t. W_i in S_i`` (S_i = weights with layer i's mask
structure at its planned rate) is split with an auxiliary Z and a scaled dual U::

    W-step:  minimise  f(W) + rho/2 * sum_i ||W_i - Z_i + U_i||^2        (SGD, one epoch)
    Z-step:  Z_i = Proj_S_i(W_i + U_i)   (magnitude mask of the plan's scheme via prune_mask)
    U-step:  U_i = U_i + W_i - Z_i

Z and U are updated after every ADMM epoch. Then the weights are hard-pruned to the masks of the
final W and retrained with the masks enforced. ``rho`` may grow by ``rho_growth`` per epoch
(progressive ADMM).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from evaluators.accuracy.algorithms.base import (
    AlgorithmResult,
    Prepared,
    TrainSettings,
    failure,
    finish,
    prepare,
    register_algorithm,
    train,
)
from npas_env.data import DataSplits
from npas_env.errors import InvalidConfig
from npas_env.layers import LayerSpec
from npas_env.plan import PruningPlan
from npas_env.pruning import compute_masks, module_weight, prune_mask


@register_algorithm("admm")
class AdmmPruning:
    """ADMM with the plan's per-layer rates.

    Args:
        rho: penalty weight of ``||W - Z + U||^2`` (CoCoPIE uses 1e-3 for long schedules; short
            budgets need a larger value to pull W onto the structure in a few epochs: on
            ResNet-20 / digits with 3 epochs, rho 0.01 / 0.1 / 1.0 gave 0.14 / 0.18 / 0.91
            validation accuracy).
        rho_growth: multiply rho by this after every ADMM epoch.
        admm_fraction: share of the epoch budget spent in ADMM (at least one epoch); the rest is
            masked retraining.
    """

    name = "admm"

    def __init__(self, rho: float = 1.0, rho_growth: float = 1.5, admm_fraction: float = 0.5) -> None:
        if rho <= 0 or rho_growth < 1 or not 0 < admm_fraction <= 1:
            raise InvalidConfig(f"admm: need rho > 0, rho_growth >= 1, admm_fraction in (0, 1]; got "
                                f"{rho}, {rho_growth}, {admm_fraction}")
        self.rho, self.rho_growth, self.admm_fraction = rho, rho_growth, admm_fraction

    def project(self, weight: Tensor, prep: Prepared, name: str) -> Tensor:
        """Euclidean projection (by magnitude) of ``weight`` onto layer ``name``'s structure."""
        action = dict(prep.targets)[name]
        mask = prune_mask(weight, action.scheme, action.rate, action.block_size,
                          pattern_set=prep.pattern_set)
        return weight * mask

    def run(self, model: nn.Module, layers: Sequence[LayerSpec], plan: PruningPlan, data: DataSplits,
            *, epochs: int, settings: TrainSettings = TrainSettings()) -> AlgorithmResult:  # noqa: B008
        start = time.perf_counter()
        prep = prepare(model, layers, plan, settings.device)
        net = prep.model
        weights = {name: module_weight(net, name) for name, _ in prep.targets}
        with torch.no_grad():
            z = {n: self.project(w.detach().clone(), prep, n) for n, w in weights.items()}
            u = {n: torch.zeros_like(w) for n, w in weights.items()}
        admm_epochs = max(1, round(epochs * self.admm_fraction)) if epochs > 0 else 0
        rho, residuals = self.rho, []
        ce = nn.CrossEntropyLoss()
        for epoch in range(admm_epochs):
            def criterion(logits: Tensor, labels: Tensor, rho: float = rho) -> Tensor:
                penalty = sum((w - z[n] + u[n]).square().sum() for n, w in weights.items())
                return ce(logits, labels) + 0.5 * rho * penalty

            res = train(net, data, 1, settings, criterion=criterion, epoch_offset=epoch)
            if not res.ok:
                return failure(self.name, prep, net, {}, f"ADMM epoch {epoch}: {res.error}", start,
                               {"rho": rho})
            with torch.no_grad():
                for n, w in weights.items():
                    z[n] = self.project(w.detach() + u[n], prep, n)
                    u[n] += w.detach() - z[n]
                residuals.append(float(sum((w.detach() - z[n]).norm() for n, w in weights.items())))
            rho *= self.rho_growth
        masks = compute_masks(net, layers, prep.actions, pattern_set=prep.pattern_set)
        details = {"admm_epochs": admm_epochs, "rho_final": rho, "primal_residuals": residuals}
        return finish(self.name, prep, net, masks, data, epochs - admm_epochs, settings, start,
                      details, epoch_offset=admm_epochs)
