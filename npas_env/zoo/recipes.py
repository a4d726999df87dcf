"""Training recipes for the zoo's pretrained starting points."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from npas_env.errors import InvalidConfig


@dataclass(frozen=True)
class TrainRecipe:
    """How a pretrained model is trained: SGD with momentum, warmup + cosine LR, random crops.

    Attributes:
        epochs: passes over the training split.
        lr: peak learning rate.
        batch_size: samples per step.
        weight_decay: L2 on conv / linear weights (not on BatchNorm parameters or biases).
        momentum: SGD momentum (Nesterov).
        label_smoothing: cross-entropy label smoothing in [0, 1).
        crop_padding: random-crop augmentation padding in pixels (0 disables it).
        warmup_epochs: linear LR warmup before the cosine decay to 0.
        max_batches_per_epoch: cap on steps per epoch (None: the whole split); for smoke tests.
    """

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 5e-4
    momentum: float = 0.9
    label_smoothing: float = 0.0
    crop_padding: int = 2
    warmup_epochs: float = 0.0
    max_batches_per_epoch: int | None = None

    def __post_init__(self) -> None:
        checks = [(self.epochs >= 1, "epochs must be >= 1"), (self.lr > 0, "lr must be > 0"),
                  (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.weight_decay >= 0, "weight_decay must be >= 0"),
                  (0 <= self.momentum < 1, "momentum must be in [0, 1)"),
                  (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
                  (self.crop_padding >= 0, "crop_padding must be >= 0"),
                  (0 <= self.warmup_epochs <= self.epochs, "warmup_epochs must be in [0, epochs]"),
                  (self.max_batches_per_epoch is None or self.max_batches_per_epoch >= 1,
                   "max_batches_per_epoch must be >= 1 or None")]
        for ok, msg in checks:
            if not ok:
                raise InvalidConfig(f"TrainRecipe: {msg}, got {self}")

    def scheduler(self, optimizer: torch.optim.Optimizer,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
        """Per-step schedule: linear warmup, then cosine decay to 0 at the last step."""
        total = max(1, self.epochs * steps_per_epoch)
        warmup = int(self.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


#: Recipes for the bundled digits dataset (measured on 2 CPU cores; see benchmarks/bench_zoo.py).
DIGITS_RECIPES: dict[str, TrainRecipe] = {
    "small_cnn": TrainRecipe(epochs=8, lr=0.1, batch_size=32, weight_decay=1e-4),
    "resnet20": TrainRecipe(epochs=12, lr=0.1, batch_size=32, weight_decay=1e-4, warmup_epochs=1),
    "resnet56": TrainRecipe(epochs=12, lr=0.1, batch_size=32, weight_decay=1e-4, warmup_epochs=1),
    "vgg16": TrainRecipe(epochs=10, lr=0.05, batch_size=32, weight_decay=1e-4, warmup_epochs=1),
    "mobilenetv2": TrainRecipe(epochs=12, lr=0.1, batch_size=32, weight_decay=4e-5,
                               warmup_epochs=1),
}

#: Standard-length CIFAR recipes (hours on a CPU; not tuned here).
CIFAR_RECIPES: dict[str, TrainRecipe] = {
    "small_cnn": TrainRecipe(epochs=60, lr=0.1, batch_size=128, crop_padding=4, warmup_epochs=1),
    "resnet20": TrainRecipe(epochs=160, lr=0.1, batch_size=128, crop_padding=4, warmup_epochs=1),
    "resnet56": TrainRecipe(epochs=160, lr=0.1, batch_size=128, crop_padding=4, warmup_epochs=1),
    "vgg16": TrainRecipe(epochs=160, lr=0.05, batch_size=128, crop_padding=4, warmup_epochs=1),
    "mobilenetv2": TrainRecipe(epochs=160, lr=0.1, batch_size=128, weight_decay=4e-5,
                               crop_padding=4, warmup_epochs=1),
}

_FALLBACK = TrainRecipe(epochs=12, lr=0.05, batch_size=32, weight_decay=1e-4, warmup_epochs=1)


def default_recipe(model: str, dataset: str = "digits") -> TrainRecipe:
    """The recipe :func:`npas_env.zoo.pretrained` uses when none is given."""
    table = DIGITS_RECIPES if dataset == "digits" else CIFAR_RECIPES
    recipe = table.get(model, _FALLBACK)
    if dataset != "digits" and model not in table:
        recipe = replace(recipe, crop_padding=4)
    return recipe
