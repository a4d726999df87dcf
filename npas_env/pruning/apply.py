"""Replay a :class:`~npas_env.plan.PruningPlan` on a model: filter-type surgery, then masks.

``apply_plan`` deep-copies the model, applies each layer's filter type, computes a one-shot
magnitude mask for each pruned layer and zeroes the masked weights. The masks are keyed by the
qualified name of the module whose ``.weight`` they cover in the *new* model: the layer itself, or
``"<name>.1"`` (the pointwise conv) for a depthwise-separable replacement, whose depthwise part
stays dense. Skipped layers and dense layers have no mask.

Filter pruning of coupled layers (same ``LayerSpec.coupled_group``, e.g. convs meeting in a
residual add) ranks filters by the sum of the members' L2 norms, so all members keep the same
filters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from npas_env.errors import InvalidAction, InvalidPlan
from npas_env.layers import LayerKind, LayerSpec, layers_fingerprint
from npas_env.plan import FilterType, LayerAction, PruningPlan, Scheme
from npas_env.pruning.masks import prune_mask
from npas_env.pruning.patterns import build_pattern_set
from npas_env.pruning.surgery import apply_filter_types
from npas_env.search_space import SearchSpace


@dataclass(frozen=True, eq=False)
class PrunedModel:
    """The result of :func:`apply_plan`.

    Attributes:
        model: a deep copy of the input model with surgery applied and masked weights zeroed.
        masks: qualified module name -> bool mask of that module's weight (True = kept).
        actions: the canonical action of every layer, in layer order.
        pattern_set: bool [n, 3, 3] patterns used by pattern pruning (None if no layer used it).
    """

    model: nn.Module
    masks: dict[str, Tensor]
    actions: tuple[LayerAction, ...]
    pattern_set: Tensor | None = None

    @property
    def sparsity(self) -> float:
        """Fraction of the masked weights that are zero (0.0 when nothing is masked)."""
        return mask_sparsity(self.masks)

    @property
    def rate(self) -> float:
        """Compression rate over the masked weights (masked numel / kept)."""
        return achieved_rate(self.masks)


def masked_module_name(name: str, filter_type: FilterType) -> str | None:
    """Name of the module whose weight is pruned for a layer with ``filter_type`` (None if none)."""
    if filter_type is FilterType.SKIP:
        return None
    return f"{name}.1" if filter_type is FilterType.DW_SEPARABLE else name


def check_plan(plan: PruningPlan, layers: Sequence[LayerSpec]) -> None:
    """Raise :class:`InvalidPlan` unless ``plan`` was made for the model ``layers`` describe."""
    if not isinstance(plan, PruningPlan):
        raise InvalidPlan(f"expected a PruningPlan, got {type(plan).__name__}")
    names = tuple(spec.name for spec in layers)
    fingerprint = layers_fingerprint(layers)
    if plan.arch_fingerprint and plan.arch_fingerprint != fingerprint:
        raise InvalidPlan(f"plan was made for another model: its arch fingerprint is "
                          f"{plan.arch_fingerprint!r}, this model's is {fingerprint!r}. Make a new plan "
                          "for this model (or pass the layers of the model the plan was made for)")
    if plan.layer_names != names:
        diff = next((i for i, (a, b) in enumerate(zip(plan.layer_names, names, strict=False)) if a != b),
                    min(len(names), len(plan.layer_names)))
        got = plan.layer_names[diff] if diff < len(plan.layer_names) else "<end>"
        want = names[diff] if diff < len(names) else "<end>"
        raise InvalidPlan(f"plan was made for another model: it lists {len(plan.layer_names)} layers, "
                          f"the model has {len(names)}; first difference at position {diff}: plan "
                          f"{got!r} vs model {want!r}")


def _check_modules(model: nn.Module, layers: Sequence[LayerSpec]) -> None:
    for spec in layers:
        try:
            module = model.get_submodule(spec.name)
        except AttributeError:
            raise InvalidPlan(f"layers do not describe this model: it has no module {spec.name!r}") from None
        weight = getattr(module, "weight", None)
        if not isinstance(weight, Tensor) or tuple(weight.shape) != spec.weight_shape:
            raise InvalidPlan(f"layers do not describe this model: module {spec.name!r} has weight shape "
                              f"{tuple(getattr(weight, 'shape', ()))}, expected {spec.weight_shape}")


def module_weight(model: nn.Module, name: str = "") -> Tensor:
    """``model.get_submodule(name).weight`` (``""``: ``model.weight``) typed as a Tensor.

    ``nn.Module.__getattr__`` is typed ``Tensor | Module``; every layer this package prunes
    (Conv2d / Linear) holds its weight as a Parameter.

    Raises:
        AttributeError: the model has no such submodule, or it has no ``weight``.
    """
    return cast(Tensor, model.get_submodule(name).weight)


def model_pattern_set(model: nn.Module, layers: Sequence[LayerSpec], num_patterns: int = 8) -> Tensor:
    """Pattern set from the 3x3 regular/grouped conv weights of ``model`` (see build_pattern_set)."""
    weights = [module_weight(model, s.name) for s in layers
               if s.kernel_size == (3, 3) and s.kind in (LayerKind.CONV, LayerKind.GROUPED)]
    return build_pattern_set(weights, num_patterns)


def _coupled_filter_scores(model: nn.Module, layers: Sequence[LayerSpec],
                           actions: Sequence[LayerAction]) -> dict[str, Tensor]:
    """Summed filter L2 norms per (coupled group, out channels), for group members with FILTER."""
    sums: dict[tuple[int, int], Tensor] = {}
    members: dict[tuple[int, int], list[str]] = {}
    for spec, action in zip(layers, actions, strict=True):
        target = masked_module_name(spec.name, action.filter_type)
        if spec.coupled_group is None or action.is_dense or action.scheme is not Scheme.FILTER or target is None:
            continue
        weight = module_weight(model, target).detach()
        key = (spec.coupled_group, weight.shape[0])
        norms = weight.reshape(weight.shape[0], -1).float().norm(dim=1)
        sums[key] = sums[key] + norms if key in sums else norms
        members.setdefault(key, []).append(target)
    return {name: sums[key] for key, names in members.items() if len(names) > 1 for name in names}


def compute_masks(model: nn.Module, layers: Sequence[LayerSpec], actions: Sequence[LayerAction], *,
                  pattern_set: Tensor | None = None) -> dict[str, Tensor]:
    """Masks for ``actions`` on a model that already has its filter-type surgery applied.

    Args:
        model: the (surgered) model; not modified.
        layers: the layer specs of the original model, same order as ``actions``.
        actions: canonical actions.
        pattern_set: patterns for PATTERN layers (required if any layer uses PATTERN).

    Returns:
        masked module name -> bool mask (pruned layers only).

    Raises:
        InvalidPlan: ``layers`` and ``actions`` differ in length.
        InvalidAction: an action does not fit its layer (the message names the layer).
    """
    if len(layers) != len(actions):
        raise InvalidPlan(f"{len(actions)} actions for {len(layers)} layers")
    scores = _coupled_filter_scores(model, layers, actions)
    masks: dict[str, Tensor] = {}
    for spec, action in zip(layers, actions, strict=True):
        target = masked_module_name(spec.name, action.filter_type)
        if action.is_dense or target is None:
            continue
        weight = module_weight(model, target)
        try:
            masks[target] = prune_mask(weight, action.scheme, action.rate, action.block_size,
                                       pattern_set=pattern_set, filter_scores=scores.get(target))
        except InvalidAction as exc:
            raise InvalidAction(f"layer {spec.name!r} ({action}): {exc}") from None
    return masks


def enforce_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Zero the pruned weights in place: ``weight.mul_(mask)`` under ``no_grad``.

    Call after each optimizer step when fine-tuning a pruned model.

    Raises:
        InvalidPlan: a mask names a module the model lacks or has the wrong shape.
    """
    with torch.no_grad():
        for name, mask in masks.items():
            try:
                weight = module_weight(model, name)
            except AttributeError:
                raise InvalidPlan(f"mask for {name!r}, but the model has no such module with a weight") from None
            if weight.shape != mask.shape:
                raise InvalidPlan(f"mask for {name!r} has shape {tuple(mask.shape)}, weight has "
                                  f"{tuple(weight.shape)}")
            weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))


def mask_sparsity(masks: Mapping[str, Tensor]) -> float:
    """Fraction of zeros over all masks (0.0 for no masks)."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


def achieved_rate(masks: Mapping[str, Tensor]) -> float:
    """Compression rate over all masks: total numel / kept (1.0 for no masks, inf if all pruned)."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    if not total:
        return 1.0
    return total / kept if kept else float("inf")


def apply_plan(model: nn.Module, plan: PruningPlan, layers: Sequence[LayerSpec], *,
               pattern_set: Tensor | None = None, num_patterns: int = 8) -> PrunedModel:
    """Apply ``plan`` to a copy of ``model``: filter-type surgery, masks, zeroed weights.

    Deterministic: the same model, plan and layers give identical masks.

    Args:
        model: the pretrained model (not modified).
        plan: one action per layer; its ``arch_fingerprint`` (if set) must match ``layers``.
        layers: ``extract_layers(model, example_input)``.
        pattern_set: bool [n, 3, 3] patterns; default: built from the model's own 3x3 conv weights.
        num_patterns: size of the default pattern set.

    Returns:
        A :class:`PrunedModel`.

    Raises:
        InvalidPlan: the plan or the layers were made for another model.
        InvalidAction: an action does not fit its layer (pattern on non-3x3, bad block size...).
    """
    check_plan(plan, layers)
    _check_modules(model, layers)
    space = SearchSpace()
    actions = tuple(space.canonical(spec, action) for spec, action in zip(layers, plan.actions, strict=True))
    uses_pattern = any(a.scheme is Scheme.PATTERN and not a.is_dense for a in actions)
    if uses_pattern and pattern_set is None:
        pattern_set = model_pattern_set(model, layers, num_patterns)
    new = apply_filter_types(model, {s.name: a.filter_type for s, a in zip(layers, actions, strict=True)})
    masks = compute_masks(new, layers, actions, pattern_set=pattern_set)
    enforce_masks(new, masks)
    return PrunedModel(new, masks, actions, pattern_set if uses_pattern else None)
