"""The GA tuner returns valid configs, keeps correctness and reuses its log."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compiler_backend import TuningConfig, compile_model


def test_tuning_runs_and_log_is_reused(compiler_cache, tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
    x = torch.randn(1, 8, 12, 12)
    cfg = TuningConfig(generations=1, population=2, repeats=3)
    tuned = compile_model(model, x, tune=cfg, cache_dir=tmp_path)
    with torch.no_grad():
        ref = model(x)
    assert float((tuned.run(x) - ref).abs().max()) < 1e-4
    assert (tmp_path / "tuning_log.json").exists()
    again = compile_model(model, x, tune=cfg, cache_dir=tmp_path)
    assert again.cache_hit  # same configs from the log -> same source -> cached artifact


def test_tuner_starts_from_the_layout_aware_defaults(tmp_path) -> None:
    """With one candidate per layer the tuner keeps the untuned choice ``generate`` makes.

    On this 2x6 map the 1x1 conv reads the padded output of the 3x3 conv: 16 wide-row pixels
    (spatial family) instead of 12 plain ones (channel family).
    """
    from compiler_backend import resolve_isa
    from compiler_backend.codegen import default_configs
    from compiler_backend.compile import lower_model

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
    x = torch.randn(1, 8, 2, 6)
    cfg = TuningConfig(generations=1, population=1, repeats=2, use_log=False)
    tuned = compile_model(model, x, tune=cfg, cache_dir=tmp_path)
    untuned = compile_model(model, x, cache_dir=tmp_path)
    expected = default_configs(lower_model(model, x, None), resolve_isa(), 1)
    assert {info.name: info.config for info in tuned.program.layers} == expected
    assert {info.name: info.config for info in untuned.program.layers} == expected
    assert expected["2"].family == "spatial"


def test_tuner_profiles_candidates_on_a_real_input(tmp_path) -> None:
    """Candidate builds hold a random input, not the arena's zeros (on zeros every
    data-dependent branch predicts, and a profile flatters branchy code)."""
    from compiler_backend import resolve_isa
    from compiler_backend.compile import lower_model
    from compiler_backend.tuning.ga import _build

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6()).eval()
    graph = lower_model(model, torch.randn(1, 3, 6, 6), None)
    cm = _build(graph, resolve_isa(), 1, {}, tmp_path)
    assert float(cm.view(graph.input).abs().min()) > 0


@pytest.mark.parametrize(("tuned_ms", "keep"), [(1.0, True), (1.47, False), (2.0, False)])
def test_tuned_configs_are_kept_only_if_the_whole_model_is_faster(
        tmp_path, monkeypatch, tuned_ms: float, keep: bool) -> None:
    from compiler_backend import KernelConfig, resolve_isa
    from compiler_backend.codegen import default_configs
    from compiler_backend.compile import lower_model
    from compiler_backend.tuning import ga

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 1)).eval()
    x = torch.randn(1, 8, 12, 12)
    odd = KernelConfig("spatial", 1, 1, 1)  # what the "search" found for every layer

    def fake_search(graph, todo, isa, threads, cfg, best, root) -> None:
        for op in todo:
            best[op.name] = (0.5, odd)

    monkeypatch.setattr(ga, "_search", fake_search)
    # two copies per side, tuned first; under a 3 % gain (1.47 against 1.5) is not enough
    monkeypatch.setattr(ga, "_whole_model_ms",
                        lambda models: [tuned_ms, 1.5] * (len(models) // 2))
    cfg = TuningConfig(use_log=False)
    tuned = compile_model(model, x, tune=cfg, cache_dir=tmp_path)
    defaults = default_configs(lower_model(model, x, None), resolve_isa(), 1)
    chosen = {info.name: info.config for info in tuned.program.layers}
    assert chosen == ({name: odd for name in defaults} if keep else defaults)
