"""Every zoo model, unpruned and block-pruned, runs through the compiler with outputs equal to
the masked PyTorch model (max abs error <= 1e-4 of the output's max magnitude); so do random
plans of the search space (filter types included) on ResNet-20 and MobileNetV2."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from compiler_backend import KernelConfig, compile_model
from npas_env.pruning.masks import prune_mask
from npas_env.zoo import MODELS, build_model


def _calibrated(model: nn.Module) -> nn.Module:
    """A zoo model whose batch-norm statistics come from random inputs: with the initial
    statistics, activations of a random-weight MobileNetV2 die out and its output no longer
    depends on the input (an equality test on it would test only the classifier bias). Scales
    are drawn at random too: ResNet-20 zero-initialises the last one of each residual branch,
    which would leave every branch's convs out of its output."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(16, 3, 32, 32))
    return model.eval()


def _block_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Block-punched (3x3) / block-based (1x1) 4x masks on every non-grouped conv but the stem."""
    masks = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels >= 16:
                scheme = "block_punched" if m.kernel_size[0] > 1 else "block_based"
                masks[name] = prune_mask(m.weight, scheme, 4.0, (8, 16))
                m.weight.mul_(masks[name])
    return masks


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "block4x"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_zoo_model_matches_torch(name: str, pruned: bool, compiler_cache) -> None:
    torch.manual_seed(0)
    model = build_model(name)
    masks = _block_masks(model) if pruned else {}
    model = _calibrated(model)  # after masking, so pruned layers feed normalised activations too
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    assert float((ref[0] - ref[1]).abs().max()) > 1e-2 * float(ref.abs().max())  # input matters
    compiled = compile_model(model, x[:1], masks, cache_dir=compiler_cache)
    out = compiled.run(x)
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err <= 1e-4, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("name", ["resnet20", "vgg16"])
def test_pattern_pruned_zoo_models_match_torch_through_sweeps_and_quads(name: str,
                                                                         compiler_cache) -> None:
    """Pattern 8x on every 3x3 conv but the stem (block-based 1x1 shortcuts), forced into the
    sweep family, or the quad family on maps of at most 4 pixels, on any ISA."""
    torch.manual_seed(0)
    model = build_model(name)
    masks, configs = {}, {}
    with torch.no_grad():
        for n, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels >= 16:
                pattern = m.kernel_size == (3, 3)
                masks[n] = prune_mask(m.weight, "pattern" if pattern else "block_based", 8.0,
                                      (8, 16))
                m.weight.mul_(masks[n])
    model = _calibrated(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    assert float((ref[0] - ref[1]).abs().max()) > 1e-2 * float(ref.abs().max())  # input matters
    sizes = _out_sizes(model, x[:1])
    for n, m in model.named_modules():
        if n in masks and m.kernel_size == (3, 3):
            configs[n] = KernelConfig("quads" if sizes[n] <= 4 else "sweep", 1, 2, 1)
    compiled = compile_model(model, x[:1], masks, configs=configs, cache_dir=compiler_cache)
    assert {layer.family for layer in compiled.report.layers} >= (
        {"sweep", "quads"} if name == "vgg16" else {"sweep"})
    err = float((compiled.run(x) - ref).abs().max() / ref.abs().max())
    assert err <= 1e-4, f"{name}: relative error {err:.2e}"


def _out_sizes(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Output pixels of every conv for input ``x``."""
    sizes: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: sizes.__setitem__(n, o.shape[2] * o.shape[3]))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sizes


@functools.cache
def _zoo_layers(name: str) -> tuple[nn.Module, list]:
    """A zoo model (``apply_plan`` copies it) and its prunable layers, built once."""
    from npas_env.layers import extract_layers

    torch.manual_seed(0)
    model = build_model(name).eval()
    return model, list(extract_layers(model, torch.randn(1, 3, 32, 32)))


@pytest.mark.parametrize(("name", "seed"),
                         [("resnet20", s) for s in range(8)] + [("mobilenetv2", s) for s in range(3)])
def test_random_search_plans_match_torch(name: str, seed: int, compiler_cache) -> None:
    """Random plans of the NPAS search space (every scheme, rate, block size and filter type:
    1x1 and depthwise-separable replacements, skipped layers), applied as a search applies
    them and compiled on 1 or 2 threads. A mismatch fails here even where the safer-flags
    rebuild would hide it. Before plain residuals of phase-split tiles were fixed, 3 of the 8
    ResNet-20 plans failed (the demo's search lost two plans to it)."""
    import warnings

    import numpy as np

    from compiler_backend.verify import SafetyRetryWarning
    from npas_env.plan import PruningPlan
    from npas_env.pruning import apply_plan
    from npas_env.search_space import SearchSpace, sample_masked_action

    model, layers = _zoo_layers(name)
    space, rng, decided = SearchSpace(), np.random.default_rng(seed), []
    for spec in layers:
        vec = sample_masked_action(space.nvec, space.action_mask(spec, decided), rng)
        decided.append((spec, space.decode(spec, vec, decided)))
    plan = PruningPlan(tuple(space.canonical(s, a) for s, a in decided),
                       tuple(s.name for s in layers))
    pruned = apply_plan(model, plan, layers)
    net = _calibrated(pruned.model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SafetyRetryWarning)
        compiled = compile_model(net, x[:1], pruned.masks, threads=1 + seed % 2,
                                 cache_dir=compiler_cache)
    err = float((compiled.run(x) - ref).abs().max() / ref.abs().max())
    assert err <= 1e-4, f"{name} plan {seed}: relative error {err:.2e}"
