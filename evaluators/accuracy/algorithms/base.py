"""Phase-3 pruning algorithms: interface, result type, registry and shared training steps.

An algorithm turns a pretrained model and a chosen plan (scheme, rate, block size and filter type
per layer) into a pruned, retrained model. All of them start from the same filter-type surgery as
:func:`~npas_env.pruning.apply_plan` and end with a masked retrain; they differ in how the masks
are found (one-shot / gradual magnitude, ADMM, reweighted group lasso).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from npas_env.data import DataSplits, as_loader
from npas_env.errors import EvaluatorNotFound, InvalidConfig
from npas_env.layers import LayerSpec
from npas_env.plan import LayerAction, PruningPlan
from npas_env.pruning import apply_plan, enforce_masks, masked_module_name
from npas_env.pruning.surgery import apply_filter_types
from npas_env.zoo.train import TrainResult, evaluate_accuracy, make_sgd, train_epochs

#: ``criterion(logits, labels) -> loss``
Criterion = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class TrainSettings:
    """Optimizer and data settings shared by all algorithms.

    Attributes:
        lr: SGD learning rate (momentum 0.9, weight decay 5e-4).
        batch_size: training batch size.
        seed: seeds shuffling and RNG; runs are deterministic in it.
        max_train_batches: cap on batches per epoch (None: the whole train split).
        device: torch device.
    """

    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    max_train_batches: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1:
            raise InvalidConfig(f"TrainSettings needs lr > 0 and batch_size >= 1, got {self}")


@dataclass(frozen=True, eq=False)
class AlgorithmResult:
    """A pruned and retrained model.

    Attributes:
        name: the algorithm's name.
        model: the pruned model (filter-type surgery applied, masked weights zero).
        masks: qualified module name -> bool mask (True = kept), as from ``apply_plan``.
        actions: canonical per-layer actions of the plan (rates as planned).
        accuracy: validation accuracy, or None on failure.
        error: why it failed (e.g. a NaN loss), None on success.
        seconds: wall time.
        details: algorithm-specific extras (JSON-able).
    """

    name: str
    model: nn.Module
    masks: dict[str, Tensor]
    actions: tuple[LayerAction, ...]
    accuracy: float | None
    error: str | None = None
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class PruningAlgorithm(Protocol):
    """Prunes ``model`` to ``plan`` within a budget of ``epochs`` training epochs."""

    name: str

    def run(self, model: nn.Module, layers: Sequence[LayerSpec], plan: PruningPlan, data: DataSplits,
            *, epochs: int, settings: TrainSettings) -> AlgorithmResult:
        ...


_ALGORITHMS: dict[str, Callable[..., PruningAlgorithm]] = {}


def register_algorithm(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make ``make_algorithm(name, **kw)`` build the decorated class."""
    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        _ALGORITHMS[name] = factory
        return factory
    return decorator


def algorithm_names() -> list[str]:
    _load_builtins()
    return sorted(_ALGORITHMS)


def make_algorithm(name: str, **kwargs: Any) -> PruningAlgorithm:
    """Build a phase-3 algorithm by name (``magnitude``, ``admm``, ``group_lasso``)."""
    _load_builtins()
    if name not in _ALGORITHMS:
        raise EvaluatorNotFound(name, kind="pruning algorithm", known=list(_ALGORITHMS))
    return _ALGORITHMS[name](**kwargs)


def _load_builtins() -> None:
    from evaluators.accuracy.algorithms import admm, group_lasso, magnitude  # noqa: F401


# ---------------------------------------------------------------------------- shared steps
@dataclass(frozen=True, eq=False)
class Prepared:
    """Starting point of every algorithm.

    Attributes:
        model: a copy of the model with the plan's filter-type surgery, weights still dense.
        actions: canonical actions (from apply_plan).
        targets: (masked module name, canonical action) of every pruned layer.
        pattern_set: the pattern set for PATTERN layers (None if unused).
    """

    model: nn.Module
    actions: tuple[LayerAction, ...]
    targets: tuple[tuple[str, LayerAction], ...]
    pattern_set: Tensor | None


def prepare(model: nn.Module, layers: Sequence[LayerSpec], plan: PruningPlan,
            device: str = "cpu") -> Prepared:
    """Validate ``plan`` (raises like apply_plan) and build the dense, surgered start model."""
    one_shot = apply_plan(model, plan, layers)
    dense = apply_filter_types(model, {s.name: a.filter_type for s, a in zip(layers, one_shot.actions,
                                                                          strict=True)})
    targets = tuple((name, a) for s, a in zip(layers, one_shot.actions, strict=True)
                    if not a.is_dense and (name := masked_module_name(s.name, a.filter_type)))
    return Prepared(dense.to(device), one_shot.actions, targets, one_shot.pattern_set)


def with_rate(action: LayerAction, rate: float) -> LayerAction:
    """``action`` at another compression rate (>= 1)."""
    return replace(action, rate=max(1.0, float(rate)))


def train(model: nn.Module, data: DataSplits, epochs: int, settings: TrainSettings, *,
          masks: dict[str, Tensor] | None = None, criterion: Criterion | None = None,
          after_step: Callable[[], None] | None = None, epoch_offset: int = 0) -> TrainResult:
    """``epochs`` epochs of SGD; the masks (if any) are enforced after every step.

    The shuffling order depends on ``settings.seed`` and ``epoch_offset``, so successive calls
    see different (but reproducible) orders.
    """
    loader = as_loader(data.train, settings.batch_size, shuffle=True,
                       seed=settings.seed * 1000 + epoch_offset)

    def step() -> None:
        if masks:
            enforce_masks(model, masks)
        if after_step is not None:
            after_step()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed + epoch_offset)
        return train_epochs(model, loader, epochs=epochs, optimizer=make_sgd(model, settings.lr),
                            criterion=criterion, after_step=step, max_batches=settings.max_train_batches)


def validation_accuracy(model: nn.Module, data: DataSplits) -> float:
    return evaluate_accuracy(model, as_loader(data.val, 256))


def finish(name: str, prepared: Prepared, model: nn.Module, masks: dict[str, Tensor],
           data: DataSplits, retrain_epochs: int, settings: TrainSettings, start: float,
           details: dict[str, Any], epoch_offset: int = 0) -> AlgorithmResult:
    """Hard-prune with ``masks``, masked-retrain ``retrain_epochs`` epochs, score on val."""
    enforce_masks(model, masks)
    if retrain_epochs > 0:
        res = train(model, data, retrain_epochs, settings, masks=masks, epoch_offset=epoch_offset)
        details["retrain_loss"] = res.mean_loss
        if not res.ok:
            return failure(name, prepared, model, masks, f"retrain: {res.error}", start, details)
    details["retrain_epochs"] = retrain_epochs
    return AlgorithmResult(name, model, masks, prepared.actions, validation_accuracy(model, data),
                           seconds=time.perf_counter() - start, details=details)


def failure(name: str, prepared: Prepared, model: nn.Module, masks: dict[str, Tensor], error: str,
            start: float, details: dict[str, Any]) -> AlgorithmResult:
    return AlgorithmResult(name, model, masks, prepared.actions, None, error,
                           time.perf_counter() - start, details)


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
