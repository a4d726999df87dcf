"""Dataset names -> loaders, and a fit check between a dataset and a model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from npas_env.data.cifar import load_cifar10, load_cifar100
from npas_env.data.digits import load_digits
from npas_env.data.splits import DataSplits, first_sample
from npas_env.errors import EvaluatorNotFound, InvalidData

_DATASETS: dict[str, Callable[..., DataSplits]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., DataSplits]], Callable[..., DataSplits]]:
    """Decorator: make ``load_dataset(name, **kw)`` call the decorated loader."""
    def decorator(loader: Callable[..., DataSplits]) -> Callable[..., DataSplits]:
        _DATASETS[name] = loader
        return loader
    return decorator


register_dataset("digits")(load_digits)
register_dataset("cifar10")(load_cifar10)
register_dataset("cifar100")(load_cifar100)


def dataset_names() -> list[str]:
    """The registered dataset names, sorted."""
    return sorted(_DATASETS)


def load_dataset(name: str, **kwargs: Any) -> DataSplits:
    """Load a registered dataset by name.

    Args:
        name: ``"digits"`` (bundled, no files needed), ``"cifar10"``, ``"cifar100"``.
        **kwargs: passed to the loader (e.g. ``root=...`` for CIFAR, ``seed=...``).

    Raises:
        EvaluatorNotFound: unknown name (kind ``"dataset"``, with a did-you-mean suggestion).
        InvalidData: the loader could not read the data.
    """
    try:
        loader = _DATASETS[name]
    except KeyError:
        raise EvaluatorNotFound(name, kind="dataset", known=list(_DATASETS)) from None
    return loader(**kwargs)


def check_dataset(splits: DataSplits, model: nn.Module) -> None:
    """Check that ``splits`` is non-empty and fits ``model``; raise InvalidData if not.

    Checks: every split has samples; the first training item is an ``(image, label)`` pair with the image of
    ``splits.input_shape`` and an integer label in range; the model maps a batch of that shape to
    ``[batch, num_classes]`` logits.
    """
    for which, size in splits.sizes().items():
        if size == 0:
            raise InvalidData(f"the {which} split of dataset {splits.name!r} is empty")
    try:
        image, label = first_sample(splits.train)
    except Exception as exc:
        raise InvalidData(f"dataset {splits.name!r}: the first train item must be an (image, "
                          f"label) pair ({type(exc).__name__}: {exc})") from None
    shape = tuple(getattr(image, "shape", ()))
    if shape != splits.input_shape:
        raise InvalidData(f"dataset {splits.name!r}: sample shape {shape} != declared "
                          f"input_shape {splits.input_shape}")
    label = int(label)
    if not 0 <= label < splits.num_classes:
        raise InvalidData(f"dataset {splits.name!r}: label {label} outside [0, {splits.num_classes})")
    _check_model_output(splits, model)


def _check_model_output(splits: DataSplits, model: nn.Module) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(splits.example_input(2))
    except Exception as exc:
        raise InvalidData(f"the model does not accept inputs of shape (N, *{splits.input_shape}) "
                          f"from dataset {splits.name!r}: {type(exc).__name__}: {exc}") from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, splits.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidData(f"the model outputs {got} for a batch of 2 but dataset {splits.name!r} "
                          f"has {splits.num_classes} classes; build it with "
                          f"num_classes={splits.num_classes}")
