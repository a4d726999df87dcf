"""compile_model checks the library against PyTorch before handing it out."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import compiler_backend.compile as compile_mod
from compiler_backend import compile_model
from compiler_backend.verify import (
    VERIFY_RTOL,
    SafetyRetryWarning,
    masked_reference,
    output_error,
)
from npas_env.errors import BackendError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def _skew_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every generated program gets its weights scaled: a wrong library, as a miscompile is."""
    real = compile_mod.generate

    def skewed(*args: Any, **kwargs: Any) -> Any:
        program = real(*args, **kwargs)
        program.weights *= 1.5
        return program

    monkeypatch.setattr(compile_mod, "generate", skewed)


def test_a_right_library_passes_with_masks(compiler_cache) -> None:
    model, x = _model(), torch.randn(2, 3, 9, 9)
    masks = {"2": torch.rand(8, 8, 3, 3) > 0.6}
    cm = compile_model(model, x, masks, cache_dir=compiler_cache)
    assert output_error(cm, model, x, masks) < 1e-4
    # the reference honours the mask: without it the same library is far off
    assert output_error(cm, model, x) > VERIFY_RTOL
    assert masked_reference(model, masks)[2].weight.count_nonzero() <= int(masks["2"].sum())
    assert model[2].weight.count_nonzero() == model[2].weight.numel()  # the caller's is untouched


def test_a_wrong_library_is_refused(compiler_cache, monkeypatch) -> None:
    _skew_weights(monkeypatch)
    model, x = _model(), torch.randn(1, 3, 9, 9)
    with pytest.raises(BackendError, match="differs from PyTorch's by .* verify=False"), \
            pytest.warns(SafetyRetryWarning):  # the first refusal, before the retry's
        compile_model(model, x, cache_dir=compiler_cache)
    cm = compile_model(model, x, cache_dir=compiler_cache, verify=False)
    assert output_error(cm, model, x) > VERIFY_RTOL


def test_a_wrong_library_is_a_failed_latency_result(tmp_path, monkeypatch) -> None:
    from evaluators.registry import make_latency

    _skew_weights(monkeypatch)
    evaluator = make_latency("compiled", warmup=0, repeats=1, anchor=False, cache_dir=tmp_path)
    with pytest.warns(SafetyRetryWarning):
        result = evaluator.measure_model(_model(), torch.randn(1, 3, 9, 9))
    assert not result.ok and "differs from PyTorch" in result.error


def test_a_failed_check_is_retried_with_the_safety_flags(compiler_cache, monkeypatch) -> None:
    """A library that fails the check is rebuilt with ``toolchain.SAFETY_FLAGS`` (the flags
    that cure the GCC 12.2 fault) and kept if that one passes."""
    calls: list[bool] = []
    real_compile, real_verify = compile_mod.compile_source, compile_mod.verify_compiled

    def spy(*args: Any, safe: bool = False, **kwargs: Any) -> Any:
        calls.append(safe)
        return real_compile(*args, safe=safe, **kwargs)

    def first_fails(compiled: Any, *args: Any, **kwargs: Any) -> float:
        if len(calls) == 1:
            raise BackendError("differs")
        return real_verify(compiled, *args, **kwargs)

    monkeypatch.setattr(compile_mod, "compile_source", spy)
    monkeypatch.setattr(compile_mod, "verify_compiled", first_fails)
    model, x = _model(), torch.randn(1, 3, 9, 9)
    with pytest.warns(SafetyRetryWarning, match="Rebuilding it with -fno-delete-null-pointer"):
        cm = compile_model(model, x, cache_dir=compiler_cache)
    assert calls == [False, True]
    assert output_error(cm, model, x) < 1e-4
