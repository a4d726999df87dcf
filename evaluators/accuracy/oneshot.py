"""Fast accuracy evaluation: one-shot magnitude pruning + a short masked fine-tune (TODAES 5.1).

For each plan: ``apply_plan`` prunes a copy of the pretrained model in one shot (magnitude masks
of the plan's scheme, rate and block size), the copy is fine-tuned for ``epochs`` epochs with the
masks re-applied after every optimizer step, and its validation accuracy is the score. The
partially recovered accuracy ranks plans (NPAS "fast evaluation", spec section 5).

Deterministic: the same model, plan and settings give the same accuracy (seeded shuffling and
RNG; the global RNG state is restored afterwards). A NaN loss is a *deterministic* failure (marked
``details["deterministic"] = True``, so caches keep it); a plan made for another model raises
:class:`~npas_env.errors.InvalidPlan`, a dataset that does not fit the model
:class:`~npas_env.errors.InvalidData`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from evaluators.context import ModelContext
from evaluators.registry import register_accuracy
from evaluators.results import AccuracyResult
from npas_env.data import DataSplits, as_loader, check_dataset, load_dataset
from npas_env.errors import InvalidConfig, InvalidData, NpasError
from npas_env.plan import PruningPlan
from npas_env.pruning import PrunedModel, apply_plan, check_plan, enforce_masks, model_pattern_set
from npas_env.zoo.train import evaluate_accuracy, make_sgd, train_epochs

_EVAL_BATCH = 256
SCHEDULES = ("cosine", "constant")
_NONFINITE = re.compile(r"\((?P<loss>[^)]*)\) at epoch (?P<epoch>\d+), batch (?P<step>\d+)")


def resolve_dataset(dataset: str | DataSplits) -> DataSplits:
    """A DataSplits from a registered dataset name or an existing DataSplits."""
    if isinstance(dataset, DataSplits):
        return dataset
    if isinstance(dataset, str):
        return load_dataset(dataset)
    raise InvalidConfig(f"dataset must be a registered name or DataSplits, got {type(dataset).__name__}")


def dataset_id(dataset: str | DataSplits) -> dict[str, Any]:
    """JSON-able identity of a dataset for cache keys (name, split sizes, input shape)."""
    if isinstance(dataset, str):
        return {"name": dataset}
    return {"name": dataset.name, "sizes": dataset.sizes(), "input_shape": list(dataset.input_shape),
            "num_classes": dataset.num_classes}


def val_subset(val: Dataset | DataLoader, fraction: float | None, seed: int) -> Dataset | DataLoader:
    """The first ``ceil(fraction * n)`` items of a seeded permutation of ``val`` (all if None).

    A user's DataLoader is used as it is; it cannot be subsampled.
    """
    if fraction is None or fraction >= 1.0:
        return val
    if isinstance(val, DataLoader):
        raise InvalidConfig("val_fraction needs a Dataset validation split, not a DataLoader: "
                            "pass the Dataset or leave val_fraction unset")
    n = len(val)  # type: ignore[arg-type]
    take = max(1, int(round(fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:take]
    return Subset(val, sorted(order.tolist()))


def nan_failure(error: str, **kwargs: Any) -> AccuracyResult:
    """Turn a train_epochs divergence message into ``"NaN loss at epoch e step s"`` (deterministic)."""
    match = _NONFINITE.search(error)
    if match:
        kind = "NaN" if "nan" in match["loss"].lower() else f"non-finite ({match['loss']})"
        error = f"{kind} loss at epoch {match['epoch']} step {match['step']}"
    details = {**kwargs.pop("details", {}), "deterministic": True}
    return AccuracyResult.failure(error, details=details, **kwargs)


def cached_pattern_set(context: ModelContext) -> torch.Tensor:
    """The model's pattern set, computed once per context (stored in ``context.extras``)."""
    if "pattern_set" not in context.extras:
        context.extras["pattern_set"] = model_pattern_set(
            context.model, context.layers, context.search_space.num_patterns)
    return context.extras["pattern_set"]


@register_accuracy("oneshot")
class OneShotAccuracy:
    """One-shot magnitude pruning, then ``epochs`` of masked fine-tuning, then val accuracy.

    Args:
        dataset: a registered dataset name (e.g. ``"digits"``) or a DataSplits.
        epochs: fine-tune epochs (0 = no fine-tune, see ``zeroshot``).
        lr: SGD learning rate (momentum 0.9, weight decay 5e-4).
        batch_size: training batch size. With ``schedule="cosine"``, lr 0.1 and batch 32, the
            2-epoch scores rank plans like a 10-epoch fine-tune (Kendall tau 0.79-0.83 on digits,
            two sets of 20 plans; constant lr 0.05: 0.59-0.80; batch 64 / lr 0.01: 0.14): see
            docs/benchmarks/accuracy.md.
        seed: seeds shuffling and all RNG use; results are deterministic in it.
        early_stopping_patience: evaluate after every epoch and stop after this many epochs
            without improvement; the best validation accuracy is reported. None: train all epochs
            and evaluate once.
        max_train_batches: cap on batches per epoch (None: the whole train split).
        val_fraction: score on this seeded fraction of the validation split (None: all of it).
        schedule: ``"cosine"`` decays the learning rate to 0 over the fine-tune (the last
            iterate is not thrown about by full-size steps), ``"constant"`` keeps ``lr``.
        device: torch device for fine-tuning.
    """

    name = "oneshot"

    def __init__(self, dataset: str | DataSplits = "digits", epochs: int = 2, lr: float = 0.1,
                 batch_size: int = 32, seed: int = 0, early_stopping_patience: int | None = None,
                 max_train_batches: int | None = None, val_fraction: float | None = None,
                 schedule: str = "cosine", device: str = "cpu") -> None:
        checks = [(epochs >= 0, "epochs must be >= 0"), (lr > 0, "lr must be > 0"),
                  (batch_size >= 1, "batch_size must be >= 1"),
                  (early_stopping_patience is None or early_stopping_patience >= 1,
                   "early_stopping_patience must be >= 1 or None"),
                  (max_train_batches is None or max_train_batches >= 1, "max_train_batches must be >= 1"),
                  (val_fraction is None or 0 < val_fraction <= 1, "val_fraction must be in (0, 1]"),
                  (schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {schedule!r}")]
        for ok, msg in checks:
            if not ok:
                raise InvalidConfig(f"{type(self).__name__}: {msg}")
        self.dataset, self.epochs, self.lr, self.batch_size = dataset, int(epochs), float(lr), int(batch_size)
        self.seed, self.patience = int(seed), early_stopping_patience
        self.max_train_batches, self.val_fraction = max_train_batches, val_fraction
        self.schedule = schedule
        self.device = torch.device(device)
        self._data: DataSplits | None = None
        self._checked: set[int] = set()

    def config(self) -> dict[str, Any]:
        return {"dataset": dataset_id(self.dataset), "epochs": self.epochs, "lr": self.lr,
                "batch_size": self.batch_size, "seed": self.seed,
                "early_stopping_patience": self.patience, "max_train_batches": self.max_train_batches,
                "val_fraction": self.val_fraction, "schedule": self.schedule,
                "device": self.device.type}

    @property
    def data(self) -> DataSplits:
        if self._data is None:
            self._data = resolve_dataset(self.dataset)
        return self._data

    def evaluate(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[AccuracyResult]:
        """Score each plan (batch in = batch out).

        Raises:
            InvalidPlan: a plan was made for another model (checked before any work).
            InvalidAction: an action does not fit its layer.
            InvalidData: the dataset does not fit the model.
        """
        for plan in plans:
            check_plan(plan, context.layers)
        self._check_data(context)
        return [self._evaluate_one(context, plan) for plan in plans]

    def _check_data(self, context: ModelContext) -> None:
        if id(context) in self._checked:
            return
        data = self.data
        if tuple(context.example_input.shape[1:]) != data.input_shape:
            raise InvalidData(f"dataset {data.name!r} has inputs of shape {data.input_shape}, but the "
                              f"model's example input is {tuple(context.example_input.shape[1:])}")
        check_dataset(data, context.model)
        self._checked.add(id(context))

    def _evaluate_one(self, context: ModelContext, plan: PruningPlan) -> AccuracyResult:
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            pruned = apply_plan(context.model, plan, context.layers,
                                pattern_set=cached_pattern_set(context) if _uses_pattern(plan) else None)
            model = pruned.model.to(self.device)
            details: dict[str, Any] = {"achieved_rate": pruned.rate, "sparsity": pruned.sparsity}
            try:
                accuracy, epochs, error = self._finetune_and_score(model, pruned, details)
            except NpasError:
                raise
            except Exception as exc:  # e.g. out of memory: a (non-deterministic) failure
                return AccuracyResult.failure(f"{type(exc).__name__}: {exc}",
                                              seconds=time.perf_counter() - start, details=details)
        seconds = time.perf_counter() - start
        details["seconds"] = seconds
        details["epochs_run"] = epochs
        if error is not None:
            return nan_failure(error, seconds=seconds, epochs=epochs, details=details)
        return AccuracyResult(accuracy, seconds=seconds, epochs=epochs, details=details)

    def _finetune_and_score(self, model: nn.Module, pruned: PrunedModel,
                            details: dict[str, Any]) -> tuple[float | None, float, str | None]:
        """Returns (val accuracy, epochs run, divergence message or None)."""
        val = as_loader(val_subset(self.data.val, self.val_fraction, self.seed), _EVAL_BATCH)
        if self.epochs == 0:
            return evaluate_accuracy(model, val), 0.0, None
        train = as_loader(self.data.train, self.batch_size, shuffle=True, seed=self.seed)
        optimizer = make_sgd(model, self.lr)
        scheduler = None
        if self.schedule == "cosine":
            steps = self.epochs * min(len(train), self.max_train_batches or len(train))
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))

        def after_step() -> None:
            enforce_masks(model, pruned.masks)

        if self.patience is None:
            res = train_epochs(model, train, epochs=self.epochs, optimizer=optimizer,
                               scheduler=scheduler, after_step=after_step,
                               max_batches=self.max_train_batches)
            details["train_loss"] = res.mean_loss
            return (None if res.error else evaluate_accuracy(model, val)), res.epochs, res.error
        best, since_best, done, history = -1.0, 0, 0.0, []
        for epoch in range(self.epochs):
            res = train_epochs(model, train, epochs=1, optimizer=optimizer, scheduler=scheduler,
                               after_step=after_step, max_batches=self.max_train_batches)
            done += res.epochs
            if res.error:
                return None, done, res.error.replace("at epoch 0,", f"at epoch {epoch},")
            history.append(evaluate_accuracy(model, val))
            best, since_best = (history[-1], 0) if history[-1] > best else (best, since_best + 1)
            if since_best >= self.patience:
                break
        details["val_history"] = history
        return best, done, None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()})"


def _uses_pattern(plan: PruningPlan) -> bool:
    return any(a.scheme.value == "pattern" and not a.is_dense for a in plan.actions)
