"""Check a compiled model against PyTorch on the example input before anyone times it.

A wrong kernel is usually also a faster one, so a latency search would reward it. The check
runs the masked model in PyTorch (eval mode) and the compiled library on the same input and
compares them relative to the output's scale. Generated kernels match to about 1e-5; a broken
one is off by whole units (GCC 12.2 once deleted a pooling call outright, see
``toolchain.SAFETY_FLAGS``, the flags ``compile_model`` retries with).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from compiler_backend.threads import FixedThreads
from npas_env.errors import BackendError
from npas_env.pruning import enforce_masks


class SafetyRetryWarning(RuntimeWarning):
    """A library failed the check and was rebuilt with ``toolchain.SAFETY_FLAGS`` (the test
    suite makes it an error, so its tests see the library the default flags build)."""


#: Largest accepted ``max |compiled - torch| / max |torch|``: ten times the equality tests' bound.
VERIFY_RTOL = 1e-3


def masked_reference(model: nn.Module, masks: Mapping[str, torch.Tensor] | None) -> nn.Module:
    """An eval-mode copy of ``model`` with every masked weight zeroed (``enforce_masks``)."""
    ref = copy.deepcopy(model).eval()
    enforce_masks(ref, masks or {})
    return ref


def output_error(compiled: Any, model: nn.Module, example_input: torch.Tensor,
                 masks: Mapping[str, torch.Tensor] | None = None) -> float:
    """``max |compiled - torch| / max |torch|`` on ``example_input`` (0 for an all-zero output)."""
    x = example_input.detach().float().cpu()
    with torch.no_grad():
        ref = masked_reference(model, masks)(x)
    if not isinstance(ref, torch.Tensor):
        raise BackendError(f"cannot verify a model returning {type(ref).__name__}; "
                           "compile with verify=False")
    policy, compiled.thread_policy = compiled.thread_policy, FixedThreads(compiled.threads)
    try:  # a check, not a call: the thread policy neither sees it nor counts it
        out = compiled.run(x).reshape(ref.shape)
    finally:
        compiled.thread_policy = policy
    diff = float((out - ref).abs().max()) if ref.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    if diff != diff:  # NaN in the compiled output
        return float("inf")
    return diff / scale if scale > 0 else diff


def verify_compiled(compiled: Any, model: nn.Module, example_input: torch.Tensor,
                    masks: Mapping[str, torch.Tensor] | None = None,
                    rtol: float = VERIFY_RTOL) -> float:
    """The relative error of ``output_error``; raises :class:`BackendError` above ``rtol``."""
    err = output_error(compiled, model, example_input, masks)
    if not err <= rtol:
        raise BackendError(
            f"the compiled model's output differs from PyTorch's by {err:.3g} of its scale "
            f"(tolerance {rtol:g}; library {compiled.artifact.path}): a code-generation or C "
            "compiler fault. Please report it with the model; compile_model(..., verify=False) "
            "skips this check")
    return err
