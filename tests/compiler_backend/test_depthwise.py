"""Stride-1 depthwise 3x3 layers run in bands of output rows (``depthwise.dwband_template``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compiler_backend import compile_model
from compiler_backend.depthwise import use_bands
from compiler_backend.isa import ISAS, detect_isa
from compiler_backend.kernels import dw9_vectors

from .source import kernel_source
from .test_kernels import _reference, _rel_err


class DepthwiseS1(nn.Module):
    """Depthwise convs writing a padded buffer (dw0), reading one in place and writing the
    next with a fused residual and ReLU6 (dw1), and reading a plain input through a pad copy
    and writing through the crop epilogue (dw3). The pointwise conv's output is returned too,
    so it stays a conv of its own (not fused into dw0, ``exdw``)."""

    def __init__(self, c: int = 10) -> None:
        super().__init__()
        self.pw = nn.Conv2d(c, c, 1)
        self.dw0 = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        self.dw1 = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        self.c3 = nn.Conv2d(c, c, 3, 1, 1)
        self.dw3 = nn.Conv2d(c, c, 3, 1, 1, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pw(x)
        a = self.dw0(p)
        b = nn.functional.relu6(self.dw1(a) + a)
        return torch.cat([self.c3(b).flatten(1), nn.functional.hardswish(self.dw3(x)).flatten(1),
                          p.flatten(1)], 1)


@pytest.mark.parametrize("isa", ["native", "generic"])
@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (4, 4), (7, 9), (9, 17), (13, 8), (32, 32)])
def test_depthwise_bands_match_torch(hw: tuple[int, int], isa: str, compiler_cache) -> None:
    """Maps with fewer rows than a band, a last band of 1-3 rows, rows shorter than a vector
    and rows ending in a partial vector."""
    torch.manual_seed(0)
    model = DepthwiseS1().eval()
    x = torch.randn(2, 10, *hw)
    cm = compile_model(model, x, None, isa=None if isa == "native" else isa,
                       cache_dir=compiler_cache)
    lanes = ISAS[isa].lanes if isa != "native" else detect_isa().lanes
    if hw[0] * (hw[1] + 2) >= 2 * lanes and 2 * hw[1] > lanes:  # else channel family or dw9
        assert kernel_source(cm).count("dwband(tid, nt, W, I, A, k)") == 3
    assert _rel_err(cm.run(x), _reference(model, {}, x)) < 1e-4


def test_bands_only_for_one_input_plane_and_rows_over_half_a_vector() -> None:
    wq = 12
    taps = np.array([i * wq + j for i in range(3) for j in range(3)])
    rows = np.stack([taps + 144 * c for c in range(3)])
    assert use_bands(rows.ravel(), wq, 10, 8)
    assert not use_bands(rows.ravel(), wq, 4, 8)  # 4x4 maps: dw9's vectors span rows
    rows[1, 4] += 1  # a tap read from another plane (a phase-split stride-2 input)
    assert not use_bands(rows.ravel(), wq, 10, 8)


def test_dw9_steps_cover_whole_small_planes() -> None:
    """8x8 maps (80 wide-row pixels) run in one step of 5 vectors with 16 lanes (dependent
    FMA chains otherwise wait on latency); 8 lanes keep 2-vector steps; 4x4 maps are 2."""
    assert dw9_vectors(80, 16) == 5
    assert dw9_vectors(80, 8) == 2
    assert dw9_vectors(24, 16) == 2 and dw9_vectors(24, 8) == 3


@pytest.mark.parametrize("c", [40, 7])
def test_depthwise_on_4x4_maps_matches_torch(c: int, compiler_cache) -> None:
    """4x4 maps: with 16 lanes the padded-source layers take the one-vector plane kernel
    (``depthwise.PLANE4_TEMPLATE``); with a residual, ReLU6 and a padded destination (junk
    lanes masked) too. Other ISAs run ``dw9`` on the same model."""
    torch.manual_seed(0)
    model = DepthwiseS1(c).eval()
    x = torch.randn(2, c, 4, 4)
    cm = compile_model(model, x, None, cache_dir=compiler_cache)
    if detect_isa().name == "avx512":
        assert kernel_source(cm).count("dw9_plane4(tid, nt, W, I, A, k)") >= 2
    assert _rel_err(cm.run(x), _reference(model, {}, x)) < 1e-4
    cm2 = compile_model(model, x, None, threads=2, cache_dir=compiler_cache)
    assert _rel_err(cm2.run(x), _reference(model, {}, x)) < 1e-4
