"""Model names -> constructors (``build_model``), with did-you-mean on unknown names."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from npas_env.errors import EvaluatorNotFound, InvalidModel
from npas_env.zoo.mobilenetv2 import mobilenetv2
from npas_env.zoo.resnet import resnet20, resnet56
from npas_env.zoo.small_cnn import SmallCNN
from npas_env.zoo.vgg import vgg16

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "vgg16": vgg16,
    "mobilenetv2": mobilenetv2,
}

#: Read-only view of the registered models: name -> constructor(num_classes=..., **kw).
MODELS: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(_MODELS)


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``build_model(name, ...)`` call the decorated constructor."""
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = factory
        return factory
    return decorator


def build_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build a zoo model with freshly initialized weights (seed with ``torch.manual_seed``).

    Args:
        name: one of :data:`MODELS` (``small_cnn``, ``resnet20``, ``resnet56``, ``vgg16``,
            ``mobilenetv2``).
        num_classes: output logits.
        **kwargs: model-specific options (``in_channels``, ``width``, ``width_mult``, ...).

    Raises:
        EvaluatorNotFound: unknown name (kind ``"model"``, with a did-you-mean suggestion).
        InvalidModel: the options do not fit the model.
    """
    try:
        factory = _MODELS[name]
    except KeyError:
        raise EvaluatorNotFound(name, kind="model", known=list(_MODELS)) from None
    if num_classes < 1:
        raise InvalidModel(f"num_classes must be >= 1, got {num_classes}")
    try:
        return factory(num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise InvalidModel(f"cannot build {name!r} with {kwargs}: {exc}") from None
