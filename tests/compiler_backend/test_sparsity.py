"""Filter pruning: kept filters run as dense blocks, pruned ones write only their epilogue."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_backend import KernelConfig, compile_model
from compiler_backend.compile import lower_model
from compiler_backend.heuristics import default_config
from compiler_backend.ir import ConvOp
from compiler_backend.isa import ISAS
from compiler_backend.sparsity import build_segments
from npas_env.pruning import enforce_masks

from .lanes import EIGHT_LANES
from .source import kernel_source


def _filter_mask(shape: tuple[int, ...], keep: float, seed: int) -> torch.Tensor:
    """Keep ``round(keep * P)`` random filters (rows) of a weight of ``shape``."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.zeros(shape[0], dtype=torch.bool)
    rows[torch.randperm(shape[0], generator=gen)[:round(keep * shape[0])]] = True
    return rows.reshape(-1, *([1] * (len(shape) - 1))).expand(shape).clone()


class FilterNet(nn.Module):
    """3x3 + BN + ReLU convs with residual adds, then a 1x1 + BN + ReLU head (the output).

    ``c1`` writes its padded output in wide rows, ``c2`` too with a padded residual, ``c3``
    goes through the crop epilogue (its reader ``pw`` is a 1x1 conv).
    """

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.c1 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.c2 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c))
        self.c3 = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c))
        self.pw = nn.Sequential(nn.Conv2d(c, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        b = F.relu(self.c2(self.c1(a)) + a)  # c2 reads c1's pruned channels, the add reads c2's
        return self.pw(F.relu(self.c3(b) + b))


def _filter_net() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = FilterNet()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial folded biases, some of them negative
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-1, 1)
    model.eval()
    masks = {name: _filter_mask(tuple(model.get_submodule(name).weight.shape), 0.5, seed)
             for seed, name in enumerate(("c1.0", "c2.0", "c3.0", "pw.0"))}
    masks["c2.0"][:, ~masks["c1.0"][:, 0, 0, 0]] = False  # also drop c1's pruned input channels
    return model, masks


def _reference(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    ref = copy.deepcopy(model)
    enforce_masks(ref, masks)
    with torch.no_grad():
        return ref(x)


def test_filter_mask_packs_kept_rows_dense_and_pruned_rows_without_entries() -> None:
    gen = np.random.default_rng(0)
    weight = gen.standard_normal((32, 16, 3, 3)).astype(np.float32)
    kept = _filter_mask(weight.shape, 0.5, 0).numpy()
    kept[:, 3] = False  # a whole input channel is pruned too
    segs = build_segments(weight * kept, kept, 1, family="spatial", p_max=4, lanes=8)
    live = set(np.flatnonzero(kept[:, 0, 0, 0]).tolist())
    *work, idle = segs
    assert {int(r) for r in idle.rows.ravel() if r >= 0} == set(range(32)) - live
    assert idle.p == 4 and not idle.eptr.any()
    assert {int(r) for s in work for r in s.rows.ravel() if r >= 0} == live
    for seg in work:  # every block holds every kept (input channel, tap) entry: a dense block
        assert seg.p == 4 and np.all(np.diff(seg.eptr) == 15 * 9)


@pytest.mark.parametrize("k", [3, 1])
def test_filter_pruned_conv_gets_the_dense_tile(k: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(128, 128, k, padding=k // 2, bias=False)).eval()
    x = torch.randn(1, 128, 28, 28)
    mask = _filter_mask((128, 128, k, k), 0.5, 0)
    ops = [next(op for op in lower_model(model, x, masks).ops if isinstance(op, ConvOp))
           for masks in ({}, {"0": mask})]
    # the direct kernels' tile (untuned, the dense 3x3 layer takes Winograd)
    dense, pruned = (default_config(op, ISAS["avx2"], 1, winograd=False) for op in ops)
    assert pruned == dense


@pytest.mark.parametrize(("hw", "threads"), [((13, 10), 1), ((13, 10), 2), ((8, 8), 1)])
def test_filter_pruned_bn_relu_residual_chain_matches_torch(hw: tuple[int, int], threads: int,
                                                            compiler_cache) -> None:
    model, masks = _filter_net()
    x = torch.randn(2, 3, *hw)
    # tiny layers would run on 1 thread: force both threads onto the pruned ones
    configs = {name: KernelConfig("spatial", 4, 2, threads) for name in masks}
    cm = compile_model(model, x, masks, threads=threads, configs=configs if threads > 1 else None,
                       isa=EIGHT_LANES, cache_dir=compiler_cache)
    assert ("_r(tid" in kernel_source(cm)) == (hw == (8, 8))  # 8x8: row-mode tiles
    # pruned filters write act(bias): those of c2, c3 and pw; c2 reads none of c1's, which are
    # dead and cut (``dead_channels``)
    assert kernel_source(cm).count("fill_rows(tid, nt, W, I, A, k)") == 3
    assert {layer.name: layer.cut_channels for layer in cm.report.layers}["c1.0"] == (8, 16)
    assert {layer.structure for layer in cm.report.layers if layer.name != "stem.0"} >= {"filter"}
    ref = _reference(model, masks, x)
    out = cm.run(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    # the head's pruned filters output act(folded BN bias): one constant per channel
    bn = model.pw[1]
    bias = bn.bias - bn.running_mean * bn.weight / (bn.running_var + bn.eps).sqrt()
    pruned = ~masks["pw.0"][:, 0, 0, 0]
    want = torch.relu(bias[pruned]).detach()[None, :, None, None].expand_as(out[:, pruned])
    assert torch.allclose(out[:, pruned], want, rtol=0, atol=1e-6)


def test_filter_pruned_linear_and_tiny_maps_match_torch(compiler_cache) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 21, 3, 1, 1), nn.BatchNorm2d(21), nn.ReLU(),
                          nn.Flatten(), nn.Linear(21, 45)).eval()
    model[1].running_mean.uniform_(-1, 1)
    masks = {"0": _filter_mask((21, 16, 3, 3), 0.5, 1), "4": _filter_mask((45, 21), 0.4, 2)}
    x = torch.randn(1, 16, 1, 1)
    cm = compile_model(model, x, masks, cache_dir=compiler_cache)
    ref = _reference(model, masks, x)
    out = cm.run(x)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    assert torch.equal(out[:, ~masks["4"][:, 0]], model[4].bias[~masks["4"][:, 0]][None].detach())


def test_mixed_block_and_filter_mask_matches_torch(compiler_cache) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 24, 3, 1, 1), nn.BatchNorm2d(24), nn.ReLU()).eval()
    model[1].running_mean.uniform_(-1, 1)
    gen = torch.Generator().manual_seed(5)
    taps = torch.rand(6, 1, 4, 1, 3, 3, generator=gen) < 0.4  # 4-row x 4-channel blocks
    mask = taps.expand(6, 4, 4, 4, 3, 3).reshape(24, 16, 3, 3).clone()
    mask[4:8] = False  # one row block pruned away entirely, plus two scattered filters
    mask[[13, 21]] = False
    x = torch.randn(1, 16, 12, 12)
    cm = compile_model(model, x, {"0": mask}, cache_dir=compiler_cache)
    out = cm.run(x)
    assert float((out - _reference(model, {"0": mask}, x)).abs().max()) < 1e-5
    pruned = [4, 5, 6, 7, 13, 21]
    assert torch.equal(out[:, pruned], out[:, pruned, :1, :1].expand(-1, -1, 12, 12))
    op = next(op for op in lower_model(model, x, {"0": mask}).ops if isinstance(op, ConvOp))
    *_, idle = build_segments(op.weight, op.kept, 1, family="spatial", p_max=4, lanes=8)
    assert sorted(int(r) for r in idle.rows.ravel() if r >= 0) == pruned
