"""Expand + depthwise fusion (``compiler_backend.fusion``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_backend import compile_model
from compiler_backend.compile import lower_model, resolve_isa
from compiler_backend.fusion import GROUP, MAX_ENTRIES, expand_groups, group_channels, plan_fusion

from .source import kernel_source
from .test_fastpaths import _ref

LANES = resolve_isa().lanes


class Inverted(nn.Module):
    """MobileNetV2's inverted residual block (``res``: with its residual; ``stride``: of its
    depthwise conv); ``tap`` also returns the expanded tensor."""

    def __init__(self, c: int = 16, e: int = 4, tap: bool = False, res: bool = True,
                 stride: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 1, 1)
        self.expand, self.project = nn.Conv2d(c, c * e, 1), nn.Conv2d(c * e, c, 1)
        self.dw = nn.Conv2d(c * e, c * e, 3, stride, 1, groups=c * e)
        self.bn = nn.BatchNorm2d(c * e)
        self.tap, self.res = tap, res

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.stem(x))
        h = F.relu6(self.expand(a))
        y = self.project(F.relu6(self.bn(self.dw(h))))
        y = y + a if self.res else y
        return torch.cat([y, h[:, :8]], 1) if self.tap else y


def sparse_expand_masks(model: nn.Module, per_row: int) -> dict[str, torch.Tensor]:
    """The expand conv keeps ``per_row`` input channels per group of ``GROUP`` rows, the
    project conv half its weights; the depthwise conv stays dense."""
    gen = torch.Generator().manual_seed(1)
    co, ci = model.expand.weight.shape[:2]
    keep = torch.zeros(co // GROUP, ci, dtype=torch.bool)
    for g in range(keep.shape[0]):
        keep[g, torch.randperm(ci, generator=gen)[:per_row]] = True
    proj = torch.rand(model.project.weight.shape, generator=gen) < 0.5
    return {"expand": keep.repeat_interleave(GROUP, 0)[:, :, None, None], "project": proj}


def inverted_block(res: bool = True, stride: int = 1) -> Inverted:
    torch.manual_seed(0)
    model = Inverted(res=res, stride=stride).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize(("h", "w", "threads", "res", "stride"),
                         [(16, 2 * LANES, 1, True, 1), (16, 2 * LANES, 2, True, 1),
                          (5, LANES, 1, False, 1), (4, 32, 2, False, 1),
                          (16, 2 * LANES, 1, False, 2), (16, 2 * LANES, 2, False, 2),
                          (6, 4 * LANES, 1, False, 2), (16, LANES, 2, False, 2),
                          (4, 3 * LANES, 1, False, 1), (4, 6 * LANES, 2, False, 2)])
def test_fused_expand_and_depthwise_match_torch(h: int, w: int, threads: int, res: bool,
                                                 stride: int, compiler_cache) -> None:
    """A sparse expand conv and the depthwise conv reading its output run as one kernel
    (``exdw``): its planes never reach the arena; odd heights, 1 and 2 threads, batch 2,
    stride 2 (rows of half, one and two output vectors, a band of fewer rows), rows of 3 and
    6 vectors (passes over a chunk of the row that divides it). Without the
    block's residual nothing else reads the expand conv's input: the arena must keep it until
    the fused kernel has read it."""
    model = inverted_block(res, stride)
    masks = sparse_expand_masks(model, 3)
    x = torch.randn(2, 3, h, w)
    cm = compile_model(model, x, masks, threads=threads, cache_dir=compiler_cache)
    families = {layer.name: layer.family for layer in cm.report.layers}
    assert (families["expand"], families["dw"]) == ("fused", "exdw")
    assert f"void exdw_{'s2_' if stride == 2 else ''}{h}x{w}(" in kernel_source(cm)
    ref = _ref(model, masks, x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


@pytest.mark.parametrize("lanes", [8, 16])
def test_fusion_needs_an_expand_read_by_the_depthwise_conv_alone(lanes: int) -> None:
    """Not fused: an expanded tensor another op reads too, a map whose rows are not whole
    vectors; at stride 2, rows neither one vector nor whole pairs of vectors, or an odd height.
    With 16 lanes (``MAX_ENTRIES``) also a dense expand conv, or one whose groups keep more than
    8 input channels between them."""
    x = torch.randn(1, 3, 8, 2 * lanes)
    model = inverted_block()
    masks = sparse_expand_masks(model, 3)
    assert set(plan_fusion(lower_model(model, x, masks), lanes, set())) == {"expand"}
    limited = MAX_ENTRIES.get(lanes) is not None
    dense = plan_fusion(lower_model(model, x, {}), lanes, set())
    assert set(dense) == (set() if limited else {"expand"})
    ragged = sparse_expand_masks(model, 3)
    ragged["expand"][1] = ~ragged["expand"][0]
    assert bool(plan_fusion(lower_model(model, x, ragged), lanes, set())) is not limited
    tapped = Inverted(tap=True).eval()
    assert plan_fusion(lower_model(tapped, x, sparse_expand_masks(tapped, 3)), lanes, set()) == {}
    narrow = torch.randn(1, 3, 8, lanes + 2)
    assert plan_fusion(lower_model(model, narrow, masks), lanes, set()) == {}
    s2 = inverted_block(False, 2)
    s2_masks = sparse_expand_masks(s2, 3)
    assert set(plan_fusion(lower_model(s2, x, s2_masks), lanes, set())) == {"expand"}
    for shape in ((8, 3 * lanes), (7, 2 * lanes)):
        x2 = torch.randn(1, 3, *shape)
        assert plan_fusion(lower_model(s2, x2, s2_masks), lanes, set()) == {}


class Viewed(Inverted):
    """The expanded tensor is returned too, flattened into a concat: a view of part of the
    output buffer, which the expand conv must still write."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.stem(x))
        h = F.relu6(self.expand(a))
        y = self.project(F.relu6(self.bn(self.dw(h)))) + a
        return torch.cat([y.flatten(1), h.flatten(1)], 1)


def test_an_expanded_tensor_shared_by_a_view_is_not_fused(compiler_cache) -> None:
    torch.manual_seed(0)
    model = Viewed().eval()
    masks = sparse_expand_masks(model, 3)
    x = torch.randn(1, 3, 8, 2 * LANES)
    assert plan_fusion(lower_model(model, x, masks), LANES, set()) == {}
    cm = compile_model(model, x, masks, cache_dir=compiler_cache)
    ref = _ref(model, masks, x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


class TwoStrides(nn.Module):
    """A stride-1 and a stride-2 fused pair on maps of the same size."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.e1, self.e2 = nn.Conv2d(16, 64, 1), nn.Conv2d(16, 64, 1)
        self.d1 = nn.Conv2d(64, 64, 3, 1, 1, groups=64)
        self.d2 = nn.Conv2d(64, 64, 3, 2, 1, groups=64)
        self.p1, self.p2 = nn.Conv2d(64, 16, 1), nn.Conv2d(64, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.stem(x))
        b = self.p1(F.relu6(self.d1(F.relu6(self.e1(a))))) + a
        return self.p2(F.relu6(self.d2(F.relu6(self.e2(b)))))


def test_fused_pairs_of_both_strides_on_one_map_size_match_torch(compiler_cache) -> None:
    """Rows of one vector: the stride-2 pair's stores reach floats that the stride-1 pair
    reads as its right border, so each keeps planes of its own. Batch 2: the second sample's
    stride-1 pair runs after the first sample's stride-2 pair."""
    torch.manual_seed(0)
    model = TwoStrides().eval()
    gen = torch.Generator().manual_seed(3)
    keep = (torch.rand(64 // GROUP, 16, generator=gen) < 0.2).repeat_interleave(GROUP, 0)
    masks = {e: keep[:, :, None, None] for e in ("e1", "e2")}
    x = torch.randn(2, 3, 6, LANES)
    cm = compile_model(model, x, masks, threads=2, cache_dir=compiler_cache)
    families = {layer.name: layer.family for layer in cm.report.layers}
    assert [families[n] for n in ("e1", "d1", "e2", "d2")] == ["fused", "exdw"] * 2
    ref = _ref(model, masks, x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


def _ragged_masks(model: Inverted, cut: int) -> dict[str, torch.Tensor]:
    """Every expand row keeps 1-3 random input channels of its own; the project conv keeps no
    weight on the last ``cut`` expanded channels (dead: cut from the graph)."""
    gen = torch.Generator().manual_seed(2)
    co, ci = model.expand.weight.shape[:2]
    keep = torch.zeros(co, ci, dtype=torch.bool)
    for r in range(co):
        keep[r, torch.randperm(ci, generator=gen)[:1 + r % 3]] = True
    proj = torch.rand(model.project.weight.shape, generator=gen) < 0.5
    proj[:, co - cut:] = False
    return {"expand": keep[:, :, None, None], "project": proj}


@pytest.mark.parametrize(("stride", "threads"), [(1, 1), (2, 2)])
def test_fused_expand_regroups_rows_keeping_different_channels(stride: int, threads: int,
                                                                compiler_cache) -> None:
    """Expand rows keeping different input channels, with dead channels cut to a count that
    is no multiple of ``GROUP``: still fused, over each group's union of input channels, and
    equal to torch."""
    model = inverted_block(False, stride)
    masks = _ragged_masks(model, cut=5)
    x = torch.randn(2, 3, 8, 2 * LANES)
    cm = compile_model(model, x, masks, threads=threads, cache_dir=compiler_cache)
    assert cm.graph.cut_channels["expand"] == (59, 64)
    families = {layer.name: layer.family for layer in cm.report.layers}
    assert (families["expand"], families["dw"]) == ("fused", "exdw")
    ref = _ref(model, masks, x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


def test_expand_groups_cover_each_channel_once_with_its_own_weights() -> None:
    """Every channel sits in one slot; a group's entries are the union of the input channels
    its rows keep (as plane offsets), and each slot carries its row's weights (0 where the row
    keeps none), its bias; the last group's tail slots are empty."""
    model = inverted_block()
    masks = _ragged_masks(model, cut=5)
    op = next(o for o in lower_model(model, torch.randn(1, 3, 8, 8), masks).ops
              if getattr(o, "name", "") == "expand")
    groups = expand_groups(op, 100)
    c = op.out_shape[0]
    slots = groups.channels
    assert sorted(slots[slots >= 0].tolist()) == list(range(c))
    assert slots.size == GROUP * (len(groups.gptr) - 1) and (slots[c:] == -1).all()
    kept = op.kept.reshape(c, -1)
    weight = op.weight.reshape(kept.shape)
    for g in range(len(groups.gptr) - 1):
        cols = groups.offsets[groups.gptr[g]:groups.gptr[g + 1]] // 100
        ws = groups.weights[groups.gptr[g]:groups.gptr[g + 1]]
        rows = slots[GROUP * g:GROUP * (g + 1)]
        assert cols.tolist() == np.flatnonzero(kept[rows[rows >= 0]].any(0)).tolist()
        for q, r in enumerate(rows):
            if r < 0:
                assert not ws[:, q].any() and groups.bias[GROUP * g + q] == 0
                continue
            np.testing.assert_array_equal(ws[:, q], weight[r, cols] * kept[r, cols])
            assert groups.bias[GROUP * g + q] == op.bias[r]


def test_identical_rows_group_together() -> None:
    """Rows keeping the same input channels (block pruning's groups) share a group, whatever
    their order, so no group reads a channel it does not need."""
    kept = np.zeros((12, 10), bool)
    for r in range(12):
        kept[r, [r % 3, 3 + r % 3, 9]] = True
    groups = group_channels(kept)
    assert sorted(len(g) for g in groups) == [4, 4, 4]
    assert all(int(kept[g].any(0).sum()) == 3 for g in groups)
