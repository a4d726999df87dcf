"""Zero-shot accuracy: one-shot magnitude pruning and no fine-tune at all.

The cheapest (and least faithful) proxy: the pruned copy is scored as it is. Optionally the
BatchNorm running statistics are re-estimated on a few training batches first (no weight update),
which removes much of the damage pruning does to the activation statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from evaluators.accuracy.oneshot import OneShotAccuracy, dataset_id
from evaluators.registry import register_accuracy
from npas_env.data import DataSplits, as_loader
from npas_env.errors import InvalidConfig
from npas_env.pruning import PrunedModel


@register_accuracy("zeroshot")
class ZeroShotAccuracy(OneShotAccuracy):
    """One-shot magnitude pruning, then validation accuracy without any training.

    Args:
        dataset: a registered dataset name (e.g. ``"digits"``) or a DataSplits.
        bn_recalibration_batches: re-estimate BatchNorm statistics on this many training batches
            before scoring (0 = keep the pretrained statistics).
        batch_size: batch size of the recalibration batches.
        seed: seeds the recalibration batch order and the validation subset.
        val_fraction: score on this seeded fraction of the validation split (None: all of it).
        device: torch device.
    """

    name = "zeroshot"

    def __init__(self, dataset: str | DataSplits = "digits", *, bn_recalibration_batches: int = 0,
                 batch_size: int = 64, seed: int = 0, val_fraction: float | None = None,
                 device: str = "cpu") -> None:
        if bn_recalibration_batches < 0:
            raise InvalidConfig(f"bn_recalibration_batches must be >= 0, got {bn_recalibration_batches}")
        super().__init__(dataset, epochs=0, batch_size=batch_size, seed=seed,
                         val_fraction=val_fraction, device=device)
        self.bn_batches = int(bn_recalibration_batches)

    def config(self) -> dict[str, Any]:
        return {"dataset": dataset_id(self.dataset), "bn_recalibration_batches": self.bn_batches,
                "batch_size": self.batch_size, "seed": self.seed, "val_fraction": self.val_fraction,
                "device": self.device.type}

    def _finetune_and_score(self, model: nn.Module, pruned: PrunedModel,
                            details: dict[str, Any]) -> tuple[float | None, float, str | None]:
        if self.bn_batches:
            recalibrate_batchnorm(model, as_loader(self.data.train, self.batch_size, shuffle=True,
                                                   seed=self.seed), self.bn_batches)
        return super()._finetune_and_score(model, pruned, details)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: Any, batches: int) -> None:
    """Reset and re-estimate every BatchNorm's running mean / var on ``batches`` batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    device = next(model.parameters()).device
    model.train()
    try:
        for i, (x, _) in enumerate(loader):
            if i >= batches:
                break
            model(x.to(device))
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.train(was_training)

