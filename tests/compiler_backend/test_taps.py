"""The tap-column kernel family (``compiler_backend.taps``) matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compiler_backend import KernelConfig, compile_model
from compiler_backend.heuristics import default_config
from compiler_backend.ir import ConvOp
from compiler_backend.isa import ISAS
from compiler_backend.sparsity import build_segments
from compiler_backend.taps import band_rows, column_groups
from npas_env.pruning import prune_mask

from .source import kernel_source
from .test_kernels import _reference, _rel_err


class TapsNet(nn.Module):
    """Stride-1 convs of every layout the family writes: 3x3 / pad 1 convs reading a padded
    buffer in place and writing the next padded buffer with a fused residual and ReLU (c2) or
    through the crop epilogue (c6), an unpadded 3x3 writing its plain output directly, a
    2x2 / pad 1 (its output a row and a column larger) and a stride-2 conv that must keep
    another family."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(5, 11, 3, 1, 1)
        self.c2 = nn.Conv2d(11, 11, 3, 1, 1)
        self.c6 = nn.Conv2d(11, 11, 3, 1, 1)
        self.c3 = nn.Conv2d(11, 7, 3, 1, 0)
        self.c4 = nn.Conv2d(11, 6, 2, 1, 1)
        self.c5 = nn.Conv2d(11, 6, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a) + a)
        d = self.c6(b) + b
        return torch.cat([nn.functional.hardswish(self.c3(d)).flatten(1), self.c4(d).flatten(1),
                          self.c5(d).flatten(1)], 1)


def _pattern_masks(model: nn.Module, scheme: str, rate: float) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            s = scheme if tuple(m.weight.shape[2:]) == (3, 3) else "unstructured"
            out[name] = prune_mask(m.weight, s, rate, (4, 4))
    return out


def forced_family_source(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor,
                         config: KernelConfig, compiler_cache, isa: str | None = None) -> str:
    """Compile ``model`` with ``config`` on its six convs, check it against PyTorch and return
    the generated source."""
    configs = {f"c{i}": config for i in range(1, 7)}
    cm = compile_model(model, x, masks, threads=config.threads, isa=isa, configs=configs,
                       cache_dir=compiler_cache)
    assert _rel_err(cm.run(x), _reference(model, masks, x)) < 1e-4
    return kernel_source(cm)


@pytest.mark.parametrize("hw", [(3, 3), (4, 7), (9, 30), (19, 8), (13, 17)])
@pytest.mark.parametrize("v, threads", [(1, 1), (2, 2), (3, 1)])
def test_taps_kernels_match_torch(hw: tuple[int, int], v: int, threads: int,
                                  compiler_cache) -> None:
    """Forced on every layer: odd channels, bands that leave a shorter last band (19 rows),
    tiles narrower than a vector and partial last tiles, 1 and 2 threads."""
    torch.manual_seed(0)
    model = TapsNet().eval()
    masks = _pattern_masks(model, "pattern", 3.0)
    source = forced_family_source(model, masks, torch.randn(2, 5, *hw),
                                  KernelConfig("taps", 1, v, threads), compiler_cache)
    assert "tk_r" in source  # c5 (stride 2) ran as a spatial kernel instead


@pytest.mark.parametrize("isa", [None, "generic"])
@pytest.mark.parametrize("scheme, rate", [("pattern", 8.0), ("unstructured", 2.0)])
def test_untuned_choice_and_generic_isa(scheme: str, rate: float, isa: str | None,
                                        compiler_cache) -> None:
    """Pattern masks (about 1.9 kept taps per kernel column) get the family untuned."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(24, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 24, 3, 1, 1)).eval()
    masks = _pattern_masks(model, scheme, rate)
    x = torch.randn(1, 24, 12, 20)
    cm = compile_model(model, x, masks, isa=isa, cache_dir=compiler_cache)
    assert {layer.family for layer in cm.report.layers} == {"taps"}
    assert _rel_err(cm.run(x), _reference(model, masks, x)) < 1e-4


def _op(kept: np.ndarray) -> ConvOp:
    w = np.random.default_rng(0).standard_normal(kept.shape).astype(np.float32) * kept
    return ConvOp(name="c", src=0, dst=1, weight=w, bias=np.zeros(kept.shape[0], np.float32),
                  kept=kept, stride=1, padding=(1, 1), groups=1,
                  in_shape=(kept.shape[1], 14, 14), out_shape=(kept.shape[0], 14, 14))


def test_untuned_choice_follows_taps_per_column() -> None:
    """Sparse unstructured masks (about one tap per column) stay on the spatial kernel."""
    w = torch.randn(32, 32, 3, 3)
    for scheme, rate, want in [("pattern", 8.0, True), ("unstructured", 10.0, False)]:
        op = _op(prune_mask(w, scheme, rate, (4, 4)).numpy().astype(bool))
        assert (default_config(op, ISAS["avx2"], 1).family == "taps") is want


def test_column_groups_hold_every_kept_weight_once() -> None:
    """Packing is a permutation of the kept weights; each group's mask matches its taps."""
    kept = prune_mask(torch.randn(16, 12, 3, 3), "unstructured", 2.0, (4, 4)).numpy().astype(bool)
    op = _op(kept)
    (seg,) = build_segments(op.weight, kept, 1, family="taps", p_max=1, lanes=8)
    ccs, ncc, plane = 5, 3, 16 * 16
    cg = column_groups(seg, 3, 3, plane, ccs, ncc)
    assert sorted(cg.weights.tolist()) == sorted(op.weight[kept].tolist())
    assert cg.ptr[-1] == cg.offsets.size and np.all(np.diff(cg.ptr) >= 0)
    n = 0
    for q in range(cg.ptr.size - 1):
        blk, rest = divmod(q, ncc * 7)
        cc, mask = divmod(rest, 7)
        taps = [i for i in range(3) if (mask + 1) >> i & 1]
        for g in range(cg.ptr[q], cg.ptr[q + 1]):
            ci, j = divmod(int(cg.offsets[g]), plane)
            assert ci // ccs == cc
            assert [i for i in range(3) if kept[seg.rows[blk, 0], ci, i, j]] == taps
            assert cg.weights[n:n + len(taps)].tolist() == op.weight[seg.rows[blk, 0], ci, taps, j].tolist()
            n += len(taps)


@pytest.mark.parametrize("oh, v, want", [(28, 1, 7), (56, 1, 8), (7, 1, 7), (30, 1, 8), (28, 2, 5),
                                         (1, 1, 1)])
def test_band_rows(oh: int, v: int, want: int) -> None:
    assert band_rows(oh, v) == want


class SplitNet(nn.Module):
    """A residual block whose output only stride-2 convs read (a 3x3 and a 1x1 shortcut), so
    it is stored phase-split: the taps bands of c2 store it themselves."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(5, 16, 3, 1, 1)
        self.c2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.down = nn.Conv2d(16, 8, 3, 2, 1)
        self.sc = nn.Conv2d(16, 8, 1, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.c1(x))
        b = torch.relu(self.c2(a) + a)
        return self.down(b) + self.sc(b)


@pytest.mark.parametrize(("hw", "stores"), [((12, 32), True), ((7, 30), False)])
@pytest.mark.parametrize("threads", [1, 2])
def test_taps_bands_store_a_phase_split_output(hw: tuple[int, int], stores: bool, threads: int,
                                               compiler_cache) -> None:
    """Rows of whole vectors: no crop pass; a 30-wide map keeps the crop epilogue."""
    torch.manual_seed(0)
    model = SplitNet().eval()
    masks = _pattern_masks(model, "pattern", 4.0)
    x = torch.randn(2, 5, *hw)
    configs = {n: KernelConfig("taps", 1, 1, threads) for n in ("c1", "c2")}
    cm = compile_model(model, x, masks, threads=threads, configs=configs, cache_dir=compiler_cache)
    assert _rel_err(cm.run(x), _reference(model, masks, x)) < 1e-4
    source = kernel_source(cm)
    assert ("_x2(tid" in source) is stores and ("crop_split2(tid" in source) is not stores
