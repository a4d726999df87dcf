"""The sweep kernel family (``compiler_backend.sweep``) matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compiler_backend import KernelConfig
from compiler_backend.heuristics import default_config
from compiler_backend.isa import ISAS
from compiler_backend.sparsity import build_segments
from compiler_backend.sweep import pattern_count, plan_sweep, tap_offsets
from npas_env.pruning import prune_mask

from .lanes import EIGHT_LANES
from .test_quads import _op
from .test_taps import TapsNet, _pattern_masks, forced_family_source


@pytest.mark.parametrize("hw", [(3, 3), (4, 4), (8, 8), (9, 30), (13, 17)])
@pytest.mark.parametrize("v, threads, isa", [(1, 1, None), (2, 2, None), (2, 1, "generic"),
                                             (2, 1, EIGHT_LANES)])
def test_sweep_kernels_match_torch(hw: tuple[int, int], v: int, threads: int, isa: str | None,
                                   compiler_cache) -> None:
    """Forced on every layer: padded sources read in place, per-tap planes (4x4), stride 2,
    a 2x2 kernel, fused residuals into padded and plain outputs, stores by runs of pixels
    into plain and padded outputs, partial last pixel blocks, pruned filters, thread slices of
    rows, the AVX2 and portable preludes (8 lanes, 12 registers: one vector per block)."""
    torch.manual_seed(0)
    model = TapsNet().eval()
    masks = _pattern_masks(model, "pattern", 3.0)
    masks["c2"][:3] = False  # pruned filters (rows with no kernel)
    source = forced_family_source(model, masks, torch.randn(2, 5, *hw),
                                  KernelConfig("sweep", 1, v, threads), compiler_cache, isa)
    assert "sw_" in source


def test_plan_groups_kernels_by_slice_channel_and_pattern() -> None:
    """Each (slice, channel, pattern) group lists its rows; weights follow kernel by kernel."""
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    kept = prune_mask(w, "pattern", 3.0, (4, 4)).numpy()
    weight = w.numpy() * kept
    seg = build_segments(weight, kept, 1, family="sweep", p_max=1, lanes=16)[0]
    offsets = (seg.cols // 9) * 100 + (seg.cols % 9) // 3 * 10 + seg.cols % 3
    toff = tap_offsets(seg.cols, offsets, 9, 100)
    assert toff is not None and toff[5] == 12
    assert tap_offsets(seg.cols, offsets + (seg.cols // 9 == 1), 9, 100) is None
    plan = plan_sweep(seg, 9, 3, toff, slices=2)
    npat = len(plan.patterns)
    assert npat == pattern_count(kept) and plan.row_ptr[0] == 0 and plan.row_ptr[-1] == seg.nblk
    rows = seg.rows[:, 0]
    for s in range(2):
        for c in range(3):
            for p, taps in enumerate(plan.patterns):
                g = (s * 3 + c) * npat + p
                for n, e in enumerate(range(plan.group_ptr[g], plan.group_ptr[g + 1])):
                    o = rows[plan.row_ptr[s] + plan.acc_row[e]]
                    assert np.flatnonzero(kept[o, c].ravel()).tolist() == list(taps)
                    got = plan.weights[plan.weight_ptr[g] + n * len(taps):][:len(taps)]
                    assert got.tolist() == weight[o, c].ravel()[list(taps)].tolist()
    assert plan.group_ptr[-1] == int(kept.reshape(6, 3, 9).any(2).sum())


def test_untuned_choice_takes_sweeps_for_pattern_rows_with_many_kernels_per_channel() -> None:
    """Pattern 8x rows on 64 channels (18 kernels per input channel) on 4x4 to 32x32 maps and
    a stride-2 conv with 9; not 16 output channels at stride 1 (4.5), block rows or
    unstructured rows (about one tap per kernel)."""
    torch.manual_seed(0)
    isa = ISAS["avx512"]

    def family(cout: int, scheme: str, rate: float, hw: int) -> str:
        w = torch.randn(cout, 64, 3, 3)
        kept = prune_mask(w, scheme, rate, (8, 16)).numpy()
        return default_config(_op(kept, hw), isa, 1).family

    assert {family(64, "pattern", 8.0, hw) for hw in (4, 8, 32)} == {"sweep"}
    s2 = _op(prune_mask(torch.randn(32, 16, 3, 3), "pattern", 8.0, (8, 16)).numpy(), 16)
    s2.stride, s2.in_shape = 2, (16, 32, 32)  # 9 kernels per channel, no taps family at stride 2
    assert default_config(s2, isa, 1).family == "sweep"
    assert "sweep" not in {family(16, "pattern", 8.0, 8), family(64, "block_punched", 8.0, 8),
                           family(64, "unstructured", 10.0, 8)}
