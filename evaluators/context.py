"""What an evaluator is told about the model it evaluates plans for."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from npas_env.layers import LayerSpec, layers_fingerprint
from npas_env.search_space import SearchSpace


@dataclass(frozen=True, eq=False)
class ModelContext:
    """A pretrained model and its prunable layers; shared, never modified by evaluators.

    Attributes:
        model: the pretrained (unpruned) model. Evaluators copy it before changing weights.
        example_input: one input batch, fixes shapes.
        layers: the prunable layers in episode order.
        search_space: the space plans come from (pattern-set size, rates...).
        name: a human-readable model name (zoo name or class name).
        extras: free-form per-context state evaluators may cache into (e.g. a pattern set).
    """

    model: nn.Module
    example_input: torch.Tensor
    layers: tuple[LayerSpec, ...]
    search_space: SearchSpace = field(default_factory=SearchSpace)
    name: str = "model"
    extras: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def arch_fingerprint(self) -> str:
        return layers_fingerprint(self.layers)

    @cached_property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.layers)

    def weights_fingerprint(self) -> str:
        """Hash of the model's parameters and buffers (cached; the model must not change)."""
        if "weights_fingerprint" not in self.extras:
            from evaluators.fingerprint import fingerprint_state

            self.extras["weights_fingerprint"] = fingerprint_state(self.model.state_dict())
        return self.extras["weights_fingerprint"]
