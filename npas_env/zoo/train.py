"""Generic training / evaluation loops shared by the zoo and the accuracy evaluators.

Divergence is a value, not an exception: :func:`train_epochs` stops at the first non-finite
loss and returns a :class:`TrainResult` with ``error`` set (``ok`` is False), leaving the model as
it was after the last finite step. Callers turn that into a failure result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from npas_env.errors import InvalidData
from npas_env.layers import FX_TRACE_LOCK

#: ``augment(images) -> images``, applied to each training batch.
Augment = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainResult:
    """What a call to :func:`train_epochs` did.

    Attributes:
        steps: optimizer steps taken.
        epochs: epochs completed (fractional if stopped early).
        mean_loss: mean training loss over the finite steps (NaN if none).
        seconds: wall time.
        error: why training stopped early (e.g. a NaN loss), None if it ran to the end.
    """

    steps: int
    epochs: float
    mean_loss: float
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise InvalidData(f"a loader must yield (inputs, labels) batches, got {type(batch).__name__}")


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def make_sgd(model: nn.Module, lr: float, *, momentum: float = 0.9, weight_decay: float = 5e-4,
             nesterov: bool = True) -> torch.optim.SGD:
    """SGD with momentum; no weight decay on BatchNorm parameters and biases (1-d tensors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)


def train_epochs(model: nn.Module, loader: Iterable[Any], *, epochs: int = 1,
                 optimizer: torch.optim.Optimizer | None = None,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                 criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 augment: Augment | None = None, after_step: Callable[[], None] | None = None,
                 max_batches: int | None = None, progress: bool = False,
                 desc: str = "train") -> TrainResult:
    """Train ``model`` in place for ``epochs`` passes over ``loader``.

    Args:
        model: the model; put in train mode for the call and restored afterwards.
        loader: yields ``(inputs, labels)`` batches (any iterable, e.g. a DataLoader).
        epochs: passes over the loader.
        optimizer: defaults to :func:`make_sgd` with lr 0.01.
        scheduler: stepped after every optimizer step (per batch, not per epoch).
        criterion: ``loss(logits, labels)``; default cross-entropy.
        augment: applied to every input batch before the forward pass.
        after_step: called after every optimizer step (e.g. re-apply pruning masks).
        max_batches: at most this many batches per epoch (None: the whole loader).
        progress: show a tqdm bar.
        desc: the bar's label.

    Returns:
        A TrainResult; ``ok`` is False if a non-finite loss stopped training (that step is not
        applied).
    """
    optimizer = optimizer or make_sgd(model, 0.01)
    criterion = criterion or nn.CrossEntropyLoss()
    device, was_training = _device_of(model), model.training
    per_epoch = _batches_per_epoch(loader, max_batches)
    bar = tqdm(total=per_epoch * epochs if per_epoch else None, desc=desc, disable=not progress,
               leave=False, dynamic_ncols=True)
    start, steps, loss_sum, error = time.perf_counter(), 0, 0.0, None
    model.train()
    try:
        for epoch in range(epochs):
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                x, y = _split_batch(batch)
                x, y = x.to(device), y.to(device)
                if augment is not None:
                    x = augment(x)
                with FX_TRACE_LOCK:  # see npas_env.layers.FX_TRACE_LOCK
                    loss = criterion(model(x), y)
                if not torch.isfinite(loss):
                    error = f"non-finite training loss ({loss.item()}) at epoch {epoch}, batch {i}"
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                if after_step is not None:
                    after_step()
                steps, loss_sum = steps + 1, loss_sum + loss.item()
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / steps:.3f}", refresh=False)
            if error:
                break
    finally:
        bar.close()
        model.train(was_training)
    done = steps / per_epoch if per_epoch else float(epochs if not error else 0)
    return TrainResult(steps, done, loss_sum / steps if steps else math.nan,
                       time.perf_counter() - start, error)


def _batches_per_epoch(loader: Iterable[Any], max_batches: int | None) -> int:
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return max_batches or 0
    return min(n, max_batches) if max_batches is not None else n


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: Iterable[Any], *,
                      max_batches: int | None = None) -> float:
    """Top-1 accuracy of ``model`` over ``loader``, a fraction in [0, 1].

    The model runs in eval mode (BatchNorm uses running statistics); its mode is restored.
    A sample whose logits are not all finite counts as wrong.

    Raises:
        InvalidData: the loader yields no samples, or batches are not ``(inputs, labels)``.
    """
    device, was_training = _device_of(model), model.training
    model.eval()
    correct = total = 0
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = _split_batch(batch)
            with FX_TRACE_LOCK:
                logits = model(x.to(device))
            pred = logits.argmax(dim=1).masked_fill(~torch.isfinite(logits).all(dim=1), -1)
            correct += int((pred == y.to(device)).sum())
            total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise InvalidData("cannot evaluate accuracy: the loader yielded no samples")
    return correct / total
