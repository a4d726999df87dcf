"""Pruning masks for every scheme, the per-model pattern set, filter-type surgery, apply_plan.

Typical use::

    layers = extract_layers(model, example_input)
    pruned = apply_plan(model, plan, layers)        # deep copy: surgery + zeroed weights
    ...                                             # fine-tune pruned.model
    enforce_masks(pruned.model, pruned.masks)       # after each optimizer step
"""

from __future__ import annotations

from npas_env.pruning.apply import (
    PrunedModel,
    achieved_rate,
    apply_plan,
    check_plan,
    compute_masks,
    enforce_masks,
    mask_sparsity,
    masked_module_name,
    model_pattern_set,
    module_weight,
)
from npas_env.pruning.masks import (
    BlockAxis,
    block_based_mask,
    block_punched_mask,
    filter_mask,
    keep_top_groups,
    pattern_mask,
    prune_mask,
    unstructured_mask,
)
from npas_env.pruning.patterns import (
    DEFAULT_PATTERNS,
    build_pattern_set,
    check_pattern_set,
    default_pattern_set,
)
from npas_env.pruning.surgery import (
    apply_filter_types,
    rank1_factors,
    replace_filter_type,
    to_conv1x1,
    to_dw_separable,
    to_skip,
)

__all__ = [
    "DEFAULT_PATTERNS",
    "BlockAxis",
    "PrunedModel",
    "achieved_rate",
    "apply_filter_types",
    "apply_plan",
    "block_based_mask",
    "block_punched_mask",
    "build_pattern_set",
    "check_pattern_set",
    "check_plan",
    "compute_masks",
    "default_pattern_set",
    "enforce_masks",
    "filter_mask",
    "keep_top_groups",
    "mask_sparsity",
    "masked_module_name",
    "model_pattern_set",
    "module_weight",
    "pattern_mask",
    "prune_mask",
    "rank1_factors",
    "replace_filter_type",
    "to_conv1x1",
    "to_dw_separable",
    "to_skip",
    "unstructured_mask",
]
