"""Expand + depthwise fusion (``compiler_backend.fusion``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_backend import compile_model
from compiler_backend.compile import lower_model, resolve_isa
from compiler_backend.fusion import GROUP, expand_groups, plan_fusion

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


def _masks(model: nn.Module, per_row: int) -> dict[str, torch.Tensor]:
    """The expand conv keeps ``per_row`` input channels per group of ``GROUP`` rows, the
    project conv half its weights; the depthwise conv stays dense."""
    gen = torch.Generator().manual_seed(1)
    co, ci = model.expand.weight.shape[:2]
    keep = torch.zeros(co // GROUP, ci, dtype=torch.bool)
    for g in range(keep.shape[0]):
        keep[g, torch.randperm(ci, generator=gen)[:per_row]] = True
    proj = torch.rand(model.project.weight.shape, generator=gen) < 0.5
    return {"expand": keep.repeat_interleave(GROUP, 0)[:, :, None, None], "project": proj}


def _model(res: bool = True, stride: int = 1) -> Inverted:
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
                          (6, 4 * LANES, 1, False, 2), (16, LANES, 2, False, 2)])
def test_fused_expand_and_depthwise_match_torch(h: int, w: int, threads: int, res: bool,
                                                 stride: int, compiler_cache) -> None:
    """A sparse expand conv and the depthwise conv reading its output run as one kernel
    (``exdw``): its planes never reach the arena; odd heights, 1 and 2 threads, batch 2,
    stride 2 (rows of half, one and two output vectors, a band of fewer rows). Without the
    block's residual nothing else reads the expand conv's input: the arena must keep it until
    the fused kernel has read it."""
    model = _model(res, stride)
    masks = _masks(model, 3)
    x = torch.randn(2, 3, h, w)
    cm = compile_model(model, x, masks, threads=threads, cache_dir=compiler_cache)
    families = {layer.name: layer.family for layer in cm.report.layers}
    assert (families["expand"], families["dw"]) == ("fused", "exdw")
    assert f"void exdw_{'s2_' if stride == 2 else ''}{h}x{w}(" in kernel_source(cm)
    ref = _ref(model, masks, x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


def test_fusion_needs_a_sparse_grouped_expand_read_by_the_depthwise_conv_alone() -> None:
    """Not fused: a dense expand conv, rows of a group keeping different input channels, an
    expanded tensor another op reads too, a map whose rows are not whole vectors; at stride 2,
    rows neither one vector nor whole pairs of vectors, or an odd height."""
    x = torch.randn(1, 3, 8, 2 * LANES)
    model = _model()
    assert set(plan_fusion(lower_model(model, x, _masks(model, 3)), LANES, set())) == {"expand"}
    assert plan_fusion(lower_model(model, x, {}), LANES, set()) == {}
    ragged = _masks(model, 3)
    ragged["expand"][1] = ~ragged["expand"][0]
    assert plan_fusion(lower_model(model, x, ragged), LANES, set()) == {}
    tapped = Inverted(tap=True).eval()
    assert plan_fusion(lower_model(tapped, x, _masks(tapped, 3)), LANES, set()) == {}
    narrow = torch.randn(1, 3, 8, LANES + 2)
    assert plan_fusion(lower_model(model, narrow, _masks(model, 3)), LANES, set()) == {}
    s2 = _model(False, 2)
    assert set(plan_fusion(lower_model(s2, x, _masks(s2, 3)), LANES, set())) == {"expand"}
    for shape in ((8, 3 * LANES), (7, 2 * LANES)):
        x2 = torch.randn(1, 3, *shape)
        assert plan_fusion(lower_model(s2, x2, _masks(s2, 3)), LANES, set()) == {}


def test_expand_groups_hold_each_groups_weights() -> None:
    """Group ``g``'s entries name its kept input channels (as plane offsets) and carry the
    weights of its ``GROUP`` rows for each."""
    model = _model()
    masks = _masks(model, 3)
    op = next(o for o in lower_model(model, torch.randn(1, 3, 8, 8), masks).ops
              if getattr(o, "name", "") == "expand")
    gptr, offs, ws = expand_groups(op, 100)
    assert gptr.tolist() == [3 * g for g in range(op.out_shape[0] // GROUP + 1)]
    kept = op.kept.reshape(op.out_shape[0], -1)
    weight = op.weight.reshape(kept.shape)
    for g in range(len(gptr) - 1):
        cols = offs[gptr[g]:gptr[g + 1]] // 100
        assert kept[GROUP * g, cols].all() and kept[GROUP * g].sum() == cols.size
        np.testing.assert_array_equal(ws[gptr[g]:gptr[g + 1]],
                                      weight[GROUP * g:GROUP * (g + 1), cols].T)
