"""Reweighted group lasso with block groups (TODAES section 4.2), then a masked retrain.

Each pruned layer's weights are split into the groups of its scheme (block-punched: one kernel
position of a p x q block; block-based: one p-row column segment of a block; filter: a filter;
pattern: a kernel; unstructured: a weight). Training minimises::

    f(W) + lambda * sum_g alpha_g * ||W_g||^2,      alpha_g = 1 / (||W_g^t||^2 + eps)

with the alphas recomputed from the current weights at the start of every regularisation epoch
(reweighted l1 of Candes et al.): small groups get large penalties and are driven to zero, large
ones are barely touched, so per-layer and per-block rates emerge. At the end, groups whose RMS is
below ``threshold`` x the layer's RMS are hard-pruned (``rate_mode="threshold"``). The default
``"at_least_plan"`` additionally prunes the weakest remaining groups until the plan's rate is
reached, so the result is never less compressed (slower) than the plan; ``"plan"`` prunes exactly
to the plan's rate. Filter and pattern layers always use the plan's rate (their masks must stay
consistent across coupled layers / within the pattern set).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from evaluators.accuracy.algorithms.base import (
    AlgorithmResult,
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
from npas_env.plan import LayerAction, PruningPlan, Scheme
from npas_env.pruning import compute_masks, keep_top_groups, module_weight

RateMode = Literal["threshold", "at_least_plan", "plan"]


def _block(size: int | None, dim: int) -> int:
    return min(size, dim) if size else dim


def group_ids(shape: Sequence[int], action: LayerAction) -> tuple[Tensor, int]:
    """Group index of every weight (int64 tensor of ``shape``) and the number of groups."""
    rows, cols = int(shape[0]), int(shape[1])
    kernel = int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else 1
    r, c = torch.arange(rows)[:, None], torch.arange(cols)[None, :]
    bs = action.block_size or (0, 0)
    scheme = action.scheme
    if scheme is Scheme.BLOCK_PUNCHED:
        p, q = _block(bs[0], rows), _block(bs[1], cols)
        blocks = (r // p) * (-(-cols // q)) + c // q
        ids = blocks[:, :, None] * kernel + torch.arange(kernel)[None, None, :]
        count = (-(-rows // p)) * (-(-cols // q)) * kernel
    elif scheme is Scheme.BLOCK_BASED:
        p = _block(bs[0], rows)
        ids, count = ((r // p) * cols + c)[:, :, None].expand(rows, cols, kernel), (-(-rows // p)) * cols
    elif scheme is Scheme.FILTER:
        ids, count = r[:, :, None].expand(rows, cols, kernel), rows
    elif scheme is Scheme.PATTERN:
        ids, count = (r * cols + c)[:, :, None].expand(rows, cols, kernel), rows * cols
    else:
        ids, count = torch.arange(rows * cols * kernel).reshape(rows, cols, kernel), rows * cols * kernel
    return ids.reshape(*shape).contiguous(), count


def group_sq_norms(weight: Tensor, ids: Tensor, count: int) -> Tensor:
    """Squared L2 norm of every group, float [count] (differentiable)."""
    return weight.new_zeros(count).scatter_add(0, ids.flatten(), weight.flatten().square())


@register_algorithm("group_lasso")
class ReweightedGroupLasso:
    """Reweighted group lasso (automatic per-layer / per-block rates).

    Args:
        lam: regularisation strength lambda (the only hyperparameter of the method).
        eps: the epsilon of the reweighting rule.
        threshold: prune groups whose RMS is below this fraction of the layer's weight RMS.
        rate_mode: "threshold", "at_least_plan" (default) or "plan" (see the module docstring).
        reg_fraction: share of the epoch budget spent regularising (at least one epoch).
        reweight_every: also recompute the alphas every this many optimizer steps (None: only at
            the start of each regularisation epoch, as in the paper).
    """

    name = "group_lasso"

    def __init__(self, lam: float = 5e-4, eps: float = 1e-3, threshold: float = 0.1,
                 rate_mode: RateMode = "at_least_plan", reg_fraction: float = 0.5,
                 reweight_every: int | None = None) -> None:
        if lam < 0 or eps <= 0 or threshold < 0 or rate_mode not in ("threshold", "at_least_plan", "plan") \
                or not 0 < reg_fraction <= 1:
            raise InvalidConfig(f"group_lasso: bad settings lam={lam}, eps={eps}, threshold={threshold}, "
                                f"rate_mode={rate_mode!r}, reg_fraction={reg_fraction}")
        self.lam, self.eps, self.threshold = lam, eps, threshold
        self.rate_mode, self.reg_fraction = rate_mode, reg_fraction
        self.reweight_every = reweight_every

    def run(self, model: nn.Module, layers: Sequence[LayerSpec], plan: PruningPlan, data: DataSplits,
            *, epochs: int, settings: TrainSettings = TrainSettings()) -> AlgorithmResult:  # noqa: B008
        start = time.perf_counter()
        prep = prepare(model, layers, plan, settings.device)
        net = prep.model
        weights = {n: module_weight(net, n) for n, _ in prep.targets}
        groups = {}
        for name, action in prep.targets:
            ids, count = group_ids(tuple(weights[name].shape), action)
            groups[name] = (ids.to(weights[name].device), count)
        reg_epochs = max(1, round(epochs * self.reg_fraction)) if epochs > 0 else 0
        ce = nn.CrossEntropyLoss()
        alpha: dict[str, Tensor] = {}
        steps = [0]

        @torch.no_grad()
        def reweight() -> None:
            alpha.update({n: 1.0 / (group_sq_norms(w, *groups[n]) + self.eps) for n, w in weights.items()})

        def after_step() -> None:
            steps[0] += 1
            if self.reweight_every and steps[0] % self.reweight_every == 0:
                reweight()

        def criterion(logits: Tensor, labels: Tensor) -> Tensor:
            penalty = sum((alpha[n] * group_sq_norms(w, *groups[n])).sum() for n, w in weights.items())
            return ce(logits, labels) + self.lam * penalty

        for epoch in range(reg_epochs):
            reweight()
            res = train(net, data, 1, settings, criterion=criterion, after_step=after_step,
                        epoch_offset=epoch)
            if not res.ok:
                return failure(self.name, prep, net, {}, f"group lasso epoch {epoch}: {res.error}",
                               start, {})
        masks = self.final_masks(net, layers, prep.actions, prep.targets, groups, prep.pattern_set)
        rates = {n: round(m.numel() / max(int(m.sum()), 1), 3) for n, m in masks.items()}
        details = {"reg_epochs": reg_epochs, "lam": self.lam, "rate_mode": self.rate_mode,
                   "layer_rates": rates}
        return finish(self.name, prep, net, masks, data, epochs - reg_epochs, settings, start, details,
                      epoch_offset=reg_epochs)

    def final_masks(self, net: nn.Module, layers: Sequence[LayerSpec], actions: Sequence[LayerAction],
                    targets: Sequence[tuple[str, LayerAction]], groups: dict[str, tuple[Tensor, int]],
                    pattern_set: Tensor | None) -> dict[str, Tensor]:
        """Plan-rate masks for filter / pattern layers, threshold (and plan) masks for the rest."""
        masks = compute_masks(net, layers, actions, pattern_set=pattern_set)
        if self.rate_mode == "plan":
            return masks
        for name, action in targets:
            if action.scheme in (Scheme.FILTER, Scheme.PATTERN):
                continue
            weight = module_weight(net, name).detach()
            ids, count = groups[name]
            sizes = torch.zeros(count, dtype=torch.long, device=ids.device).scatter_add(
                0, ids.flatten(), torch.ones_like(ids.flatten()))
            norms = group_sq_norms(weight, ids, count).sqrt()
            rms = norms / sizes.clamp(min=1).sqrt()
            keep = rms >= self.threshold * weight.square().mean().sqrt()
            if self.rate_mode == "at_least_plan":
                keep &= keep_top_groups(norms, sizes, weight.numel() / action.rate)
            if not bool((keep & (sizes > 0)).any()):
                keep[int(torch.argmax(norms))] = True
            masks[name] = keep[ids]
        return masks
