"""Masked-row kernels (``compiler_backend.masked``): plain 8-wide maps, the padding read as
masked-off lanes."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_backend import KernelConfig, compile_model, export_c
from compiler_backend.compile import lower_model, resolve_isa
from compiler_backend.ir import ConvOp
from compiler_backend.isa import ISAS
from compiler_backend.layout import plan_masked
from compiler_backend.masked import lane_masks
from compiler_backend.toolchain import find_compiler
from npas_env.pruning import prune_mask

from .lanes import RUNNABLE_ISAS
from .source import kernel_source
from .test_export import _build_and_run, _check_output
from .test_fastpaths import _masked, _ref

AVX512 = resolve_isa().name == "avx512"


class Block(nn.Module):
    """A ResNet basic block without downsampling: two 3x3 convs, the input as residual;
    ``down`` adds a stride-2 conv reading the block's output."""

    def __init__(self, c: int, down: bool = False) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)
        self.down = nn.Conv2d(c, c, 3, 2, 1) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c2(F.relu(self.c1(x))) + x)
        return self.down(y) if self.down is not None else y


class Inverted(nn.Module):
    """MobileNetV2's inverted residual block (expand 1x1, depthwise 3x3, project 1x1, the
    input as residual); ``dw_res`` instead adds the depthwise conv's input to its output."""

    def __init__(self, c: int, e: int = 3, dw_res: bool = False) -> None:
        super().__init__()
        self.expand, self.project = nn.Conv2d(c, c * e, 1), nn.Conv2d(c * e, c, 1)
        self.dw = nn.Conv2d(c * e, c * e, 3, 1, 1, groups=c * e)
        self.bn = nn.BatchNorm2d(c * e)
        self.dw_res = dw_res

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.expand(x))
        d = self.bn(self.dw(h))
        d = F.relu(d + h) if self.dw_res else F.relu6(d)
        return self.project(d) + x


def test_lane_masks_drop_the_padding() -> None:
    """Bit ``l`` of (tap, vector) is set where lane ``l`` reads a pixel of the map."""
    model = Block(4).eval()
    op = next(o for o in lower_model(model, torch.randn(1, 4, 8, 8)).ops if isinstance(o, ConvOp))
    masks = lane_masks(op, 16)
    assert masks.shape == (9, 4)
    assert (masks[4] == 0xFFFF).all()  # the centre tap reads inside the map everywhere
    # tap (-1, -1), vector 0 holds rows 0 and 1: row 0 reads above the map, column 0 left of it
    assert masks[0, 0] == 0xFE00 and masks[0, 1] == 0xFEFE
    assert masks[8, 3] == 0x007F  # tap (+1, +1), rows 6 and 7: row 7 reads below the map


def test_plan_masked_keeps_neighbours_layouts() -> None:
    """Convs take the masked family only together with every conv sharing one of their maps:
    a stride-2 reader of the block's output wants it phase-split, so neither conv takes it.
    Dense convs Winograd takes (at 1 thread on an 8x8 map) do not take it either."""
    x = torch.randn(1, 16, 8, 8)
    assert plan_masked(lower_model(Block(16).eval(), x), 16, threads=2) == {"c1", "c2"}
    assert plan_masked(lower_model(Block(16).eval(), x), 16, threads=1) == set()
    assert plan_masked(lower_model(Block(16, down=True).eval(), x), 16, threads=2) == set()
    assert plan_masked(lower_model(Block(16).eval(), torch.randn(1, 16, 16, 16)), 16, 2) == set()
    assert plan_masked(lower_model(Block(16).eval(), x), 8, 2) == set()  # AVX2 has no such loads


def test_plan_masked_takes_depthwise_convs_read_by_pointwise_ones() -> None:
    """A depthwise conv on an 8-wide map takes the masked family although pointwise convs
    (which read any layout) write its input and read its output: the whole block stays
    plain. Not on 16-wide maps, not with 8 lanes, not once a 3x3 conv reads its output."""
    x = torch.randn(1, 16, 8, 8)
    assert plan_masked(lower_model(Inverted(16).eval(), x), 16) == {"dw"}
    assert plan_masked(lower_model(Inverted(16).eval(), torch.randn(1, 16, 16, 16)), 16) == set()
    assert plan_masked(lower_model(Inverted(16).eval(), x), 8) == set()
    then_3x3 = nn.Sequential(Inverted(16), nn.Conv2d(16, 16, 3, 2, 1)).eval()
    assert plan_masked(lower_model(then_3x3, x), 16) == {"0.dw"}  # it reads the block output
    graph = lower_model(nn.Sequential(Inverted(16), Block(16, down=True)).eval(), x)
    assert plan_masked(graph, 16) == {"0.dw"}


@pytest.mark.parametrize("isa", RUNNABLE_ISAS)
@pytest.mark.parametrize(("h", "threads", "dw_res"),
                         [(8, 1, False), (8, 2, False), (6, 1, True), (2, 2, True), (16, 1, False)])
def test_masked_depthwise_matches_torch(isa: str, h: int, threads: int, dw_res: bool,
                                        compiler_cache) -> None:
    """The depthwise conv of an inverted residual block on a plain map of two rows per vector
    (8 wide with AVX-512, 4 with AVX2 and portable C) runs ``mdw_v{n}`` (each input row pair
    loaded once per kernel column, the padding masked off), its pointwise neighbours plain
    tiles: no pad copy, no crop, no border zeroing; a residual into the depthwise conv,
    batches of 2, 1 and 2 threads, block-pruned 1x1s."""
    torch.manual_seed(0)
    model = Inverted(16, dw_res=dw_res).eval()
    with torch.no_grad():  # BN statistics that fold into something other than identity
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    masks = _masked(model, "block")
    masks.pop("dw")
    x = torch.randn(2, 16, h, ISAS[isa].lanes // 2)
    cm = compile_model(model, x, masks, threads=threads, isa=isa, cache_dir=compiler_cache)
    assert {layer.name: layer.family for layer in cm.report.layers}["dw"] == "masked"
    src = kernel_source(cm)
    assert f"void mdw_v{h // 2}(" in src
    assert not any(f"_{s}(int tid" in src for s in ("pad", "crop", "zb"))
    ref = _ref(model, masks, x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


@pytest.mark.skipif(not AVX512, reason="the masked family needs AVX-512's masked loads")
@pytest.mark.parametrize("h", [8, 6, 2])
@pytest.mark.parametrize(("structure", "c", "threads"),
                         [("dense", 16, 1), ("block", 20, 1), ("block", 20, 2),
                          ("filter", 24, 1), ("dense", 16, 2)])
def test_masked_tiles_match_torch(h: int, structure: str, c: int, threads: int,
                                  compiler_cache) -> None:
    """Both convs of the block run masked tiles on the plain map (no pad copy, no crop):
    dense rows, 4-row blocks over 20 rows (8- and 4-row segments), pruned filters (blocks
    with no entries), a residual, batches of 2, 1 and 2 threads. Dense rows on 8x8 and 6x8
    maps at 1 thread take Winograd instead (``compiler_backend.winograd``)."""
    torch.manual_seed(0)
    model = Block(c).eval()
    masks = _masked(model, structure)
    x = torch.randn(2, c, h, 8)
    cm = compile_model(model, x, masks, threads=threads, cache_dir=compiler_cache)
    if (structure, threads) == ("dense", 1) and h in (8, 6):
        assert {layer.family for layer in cm.report.layers} == {"winograd"}
        ref = _ref(model, masks, x)
        assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4
        return
    assert {layer.family for layer in cm.report.layers} == {"masked"}
    src = kernel_source(cm)
    assert "mk_p" in src and "_pad(int tid" not in src and "_crop(int tid" not in src
    ref = _ref(model, masks, x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


def _pattern_masks(model: nn.Module, idle_filter: bool) -> dict[str, torch.Tensor]:
    """Pattern + connectivity at 8x on every conv; ``idle_filter`` prunes filter 5 whole."""
    masks = {n: prune_mask(m.weight, "pattern", 8.0) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d)}
    if idle_filter:
        for mask in masks.values():
            mask[5] = False
    return masks


@pytest.mark.skipif(not AVX512, reason="the masked family needs AVX-512's masked loads")
@pytest.mark.parametrize(("h", "threads", "idle_filter"),
                         [(8, 1, False), (8, 2, False), (6, 1, True), (2, 2, True)])
def test_masked_sweeps_match_torch(h: int, threads: int, idle_filter: bool,
                                   compiler_cache) -> None:
    """Pattern-pruned convs on a plain 8-wide map take masked sweeps (kernels grouped by
    pattern, each tap's vectors loaded with the padding masked off): no pad copy, no crop, no
    piece stores; a residual, a pruned filter, batches of 2, 1 and 2 threads."""
    torch.manual_seed(0)
    model = Block(64).eval()  # ResNet-20's layer3: enough kernels per input channel to sweep
    masks = _pattern_masks(model, idle_filter)
    x = torch.randn(2, 64, h, 8)
    cm = compile_model(model, x, masks, threads=threads, cache_dir=compiler_cache)
    assert [(layer.family, layer.config["p_max"]) for layer in cm.report.layers] == [("masked", 1)] * 2
    src = kernel_source(cm)
    assert "VLOADZ(xc" in src and "mk_p" not in src and "_pad(int tid" not in src
    assert "_crop(int tid" not in src
    ref = _ref(model, masks, x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


@pytest.mark.parametrize("hw", [(8, 8), (9, 9)])
def test_masked_config_falls_back_where_it_cannot_run(hw: tuple[int, int], compiler_cache) -> None:
    """A masked config for a conv the family cannot run (a 9-wide map, or no AVX-512), or whose
    maps have a layout of their own, compiles as spatial tiles and still matches PyTorch."""
    torch.manual_seed(0)
    model = Block(8, down=True).eval()
    x = torch.randn(1, 8, *hw)
    configs = {n: KernelConfig("masked", 8, 2) for n in ("c1", "c2", "down")}
    cm = compile_model(model, x, {}, configs=configs, cache_dir=compiler_cache)
    assert {layer.family for layer in cm.report.layers} == {"spatial"}
    ref = _ref(model, {}, x)
    assert np.allclose(cm.run(x).numpy(), ref.numpy(), rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


@pytest.mark.parametrize("isa", ["avx512", "generic"])
@pytest.mark.parametrize(("structure", "kernel"), [("block", "void mk_p"), ("pattern", "VLOADZ(xc")])
def test_exported_block_builds_with_masked_tiles_where_the_isa_has_them(
        isa: str, structure: str, kernel: str, tmp_path) -> None:
    """An exported package for AVX-512 carries masked tiles (block-sparse) or masked sweeps
    (pattern-pruned) and builds on any host (and runs and matches PyTorch on an AVX-512 one);
    for portable C the same block takes other kernels and matches."""
    torch.manual_seed(0)
    c = 16 if structure == "block" else 64
    model = Block(c).eval()
    masks = _masked(model, "block") if structure == "block" else _pattern_masks(model, False)
    x = torch.randn(1, c, 8, 8)
    out = export_c(model, x, tmp_path, masks, isa=isa)
    assert (kernel in (out.directory / "npas_model.c").read_text()) is (isa == "avx512")
    if isa == "avx512" and not AVX512:
        make = subprocess.run(["make", "-s", "-C", str(out.directory), f"CC={find_compiler()}"],
                              capture_output=True, text=True, timeout=300)
        assert make.returncode == 0, make.stderr
        return
    assert _build_and_run(out.directory, find_compiler(), [])["max_rel_error"] < 1e-4
    _check_output(out.directory, model, masks, x)
