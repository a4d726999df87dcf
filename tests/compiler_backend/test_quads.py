"""The quad kernel family (``compiler_backend.quads``) matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compiler_backend import KernelConfig, compile_model
from compiler_backend.heuristics import default_config
from compiler_backend.ir import ConvOp
from compiler_backend.isa import ISAS
from compiler_backend.quads import plan_quads, quad_count
from npas_env.pruning import prune_mask

from .lanes import EIGHT_LANES
from .test_kernels import _reference, _rel_err
from .test_taps import TapsNet, _pattern_masks, forced_family_source


class QuadNet(TapsNet):
    """The tap-family test net with a 1x1 conv for c3 (one-tap quads), so that it runs on maps
    down to 1x1: padded sources and destinations (c2, c6 with fused residuals), a plain
    output, a 2x2 kernel (its output a row and a column larger), stride 2 and hardswish."""

    def __init__(self) -> None:
        super().__init__()
        self.c3 = nn.Conv2d(11, 7, 1)


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (4, 4), (3, 3), (2, 5)])
@pytest.mark.parametrize("isa, threads", [(None, 1), (None, 2), ("generic", 1), (EIGHT_LANES, 1)])
def test_quad_kernels_match_torch(hw: tuple[int, int], isa: str | None, threads: int,
                                  compiler_cache) -> None:
    """Forced on every layer (those on maps over a vector keep another family): partial quads
    (unstructured masks on the 1x1 and 2x2 kernels), 1 and 2 threads, the AVX2 and portable
    preludes."""
    torch.manual_seed(0)
    model = QuadNet().eval()
    masks = _pattern_masks(model, "pattern", 3.0)
    source = forced_family_source(model, masks, torch.randn(2, 5, *hw),
                                  KernelConfig("quads", 1, 1, threads), compiler_cache, isa)
    assert "quads_v" in source


def test_plan_cuts_each_kernel_into_quads() -> None:
    """Kept taps in tap order, four per quad; keys shared by kernels of one input channel."""
    kept = np.zeros((2, 3, 3, 3), bool)
    kept[0, 0].flat[[0, 4, 5, 8]] = True  # one full quad
    kept[1, 0].flat[[0, 4, 5, 8]] = True  # the same key
    kept[1, 2].flat[[1, 2, 3, 4, 6, 7]] = True  # a full quad and one of two taps
    weight = np.arange(kept.size, dtype=np.float32).reshape(kept.shape)
    plan = plan_quads(weight, kept)
    assert quad_count(kept) == 4 and list(plan.row_ptr) == [0, 1, 4]
    assert plan.quad_key[0] == plan.quad_key[1]
    assert list(plan.chan_keys) == [0, 1, 1, 3]
    assert plan.taps[plan.key_pattern[plan.quad_key[3]]].tolist() == [6, 7, -1, -1]
    assert plan.weights[3].tolist() == [weight[1, 2].flat[6], weight[1, 2].flat[7], 0, 0]


def _op(kept: np.ndarray, hw: int) -> ConvOp:
    cout, cin = kept.shape[:2]
    return ConvOp("c", 0, 1, np.ones(kept.shape, np.float32), np.zeros(cout, np.float32), kept,
                  (cin, hw, hw), (cout, hw, hw), 1, (1, 1))


def test_untuned_choice_takes_quads_for_pattern_rows_on_2x2_maps() -> None:
    """Pattern rows where a quad is one vector (2x2 maps, 16 lanes); not 4x4 maps (the sweep
    family's), block rows or mostly empty quads (unstructured)."""
    torch.manual_seed(0)
    w = torch.randn(64, 64, 3, 3)
    masks = {name: prune_mask(w, scheme, rate, (8, 16)).numpy() for name, scheme, rate in
             (("pattern", "pattern", 8.0), ("block", "block_punched", 8.0),
              ("scattered", "unstructured", 10.0))}
    isa = ISAS["avx512"]
    family = {(name, hw): default_config(_op(m, hw), isa, 1).family
              for name, m in masks.items() for hw in (2, 4)}
    assert family[("pattern", 2)] == "quads"
    assert "quads" not in {family[("pattern", 4)], family[("block", 2)], family[("scattered", 2)]}


def test_quads_next_to_a_phase_split_buffer_fall_back_to_spatial_tiles(compiler_cache) -> None:
    """A buffer read only by a stride-2 conv is stored phase-split; neither its producer nor its
    reader can take quads there, and both still match PyTorch."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1)).eval()
    masks = _pattern_masks(model, "pattern", 3.0)
    x = torch.randn(1, 8, 4, 4)
    quads = KernelConfig("quads", 1, 1, 1)
    cm = compile_model(model, x, masks, configs={"0": quads, "2": quads},
                       cache_dir=compiler_cache)
    assert [layer.family for layer in cm.report.layers] == ["spatial", "spatial"]
    assert _rel_err(cm.run(x), _reference(model, masks, x)) < 1e-4
