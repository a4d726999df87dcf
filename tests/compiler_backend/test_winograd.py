"""Winograd F(2x2, 3x3) for dense 3x3 convs (``compiler_backend.winograd``)."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_backend import compile_model
from compiler_backend.compile import lower_model, resolve_isa
from compiler_backend.export import export_c
from compiler_backend.heuristics import default_config
from compiler_backend.ir import ConvOp
from compiler_backend.isa import ISAS
from compiler_backend.layout import plan_padded, plan_split2
from compiler_backend.toolchain import find_compiler
from compiler_backend.tuning.base import KernelConfig
from compiler_backend.winograd import MAX_CIN, eligible, plan
from npas_env.zoo import build_model

from .lanes import EIGHT_LANES
from .test_export import _build_and_run, _check_output
from .test_fastpaths import _ref

LANES = resolve_isa().lanes


class WinoBlock(nn.Module):
    """``a`` reads the plain graph input (a padded copy), ``b`` its output with it as the
    residual; with ``down`` only stride-2 convs read ``b``'s output (stored phase-split)."""

    def __init__(self, cin: int = 8, c: int = 16, down: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(cin, c, 3, 1, 1), nn.Conv2d(c, c, 3, 1, 1)
        self.bn = nn.BatchNorm2d(c)
        self.down = nn.Conv2d(c, c, 3, 2, 1) if down else None
        self.short = nn.Conv2d(c, c, 1, 2) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(x))
        y = F.relu(self.bn(self.b(h)) + h)
        if self.down is None or self.short is None:
            return y
        return self.down(y) + self.short(y)


def _block(down: bool) -> WinoBlock:
    torch.manual_seed(0)
    model = WinoBlock(down=down).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model


def _shapes(lanes: int) -> list[tuple[int, int]]:
    """One map per walk: rows of two vectors of tiles, one vector per two tile rows, gathered
    tiles (a width of half a vector), and gathered tiles whose last vector is partly copies
    of the last tile (16 lanes: 30x30, 225 tiles in 15 vectors)."""
    return [(4, 2 * lanes), (8, lanes), (8, lanes // 2), (2 * lanes - 2, 2 * lanes - 2)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("down", [False, True])
@pytest.mark.parametrize("hw", _shapes(LANES))
def test_winograd_matches_torch(hw: tuple[int, int], down: bool, threads: int,
                                compiler_cache) -> None:
    """Both convs run Winograd (a plain and a padded input, a residual, BN folded, batch 2)
    and match PyTorch; with ``down`` the second writes the phase planes of a stride-2 conv's
    input. At 2 threads a map of one vector of tiles splits its output channels."""
    model = _block(down)
    x = torch.randn(2, 8, *hw)
    if down:
        graph = lower_model(model, x, {})
        padded = plan_padded(graph, LANES, threads)
        b = next(op for op in graph.ops if isinstance(op, ConvOp) and op.name == "b")
        assert b.dst in plan_split2(graph, padded)
    configs = {name: KernelConfig("winograd", 1, 1, threads) for name in ("a", "b")}
    cm = compile_model(model, x, {}, threads=threads, configs=configs, cache_dir=compiler_cache)
    families = {layer.name: layer.family for layer in cm.report.layers}
    assert families["a"] == families["b"] == "winograd"
    ref = _ref(model, {}, x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


@pytest.mark.parametrize("down", [False, True])
@pytest.mark.parametrize("hw", _shapes(ISAS[EIGHT_LANES].lanes))
def test_winograd_on_eight_lanes(hw: tuple[int, int], down: bool, compiler_cache) -> None:
    """The same walks with 8-lane vectors (their own interleaves and half-vector stores)."""
    model = _block(down)
    x = torch.randn(1, 8, *hw)
    cm = compile_model(model, x, {}, isa=EIGHT_LANES, cache_dir=compiler_cache)
    assert {layer.name: layer.family for layer in cm.report.layers}["b"] == "winograd"
    ref = _ref(model, {}, x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


_QEMU = bool(shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64"))


@pytest.mark.parametrize("isa", ["generic", pytest.param("neon", marks=pytest.mark.skipif(
    not _QEMU, reason="needs gcc-aarch64-linux-gnu and qemu-user"))])
@pytest.mark.parametrize("walk", [0, 1, 2, 3])
def test_winograd_exports_for_portable_c_and_neon(isa: str, walk: int, tmp_path,
                                                  compiler_cache) -> None:
    """Each walk in the standalone package for portable C (8 lanes, run here) and AArch64
    NEON (4 lanes, under qemu): a padded and a phase-split output, a plain input, a
    residual."""
    lanes = ISAS[isa].lanes
    model = _block(True)
    x = torch.randn(1, 8, *_shapes(lanes)[walk])
    configs = {name: KernelConfig("winograd", 1, 1, 1) for name in ("a", "b")}
    out = export_c(model, x, tmp_path, {}, isa=isa, configs=configs)
    assert "void wino" in (out.directory / "npas_model.c").read_text()
    cc, runner = (("aarch64-linux-gnu-gcc", ["qemu-aarch64"]) if isa == "neon"
                  else (find_compiler(), []))
    extra = ["LDFLAGS=-static"] if isa == "neon" else []
    assert _build_and_run(out.directory, cc, runner, *extra)["max_rel_error"] < 1e-4
    _check_output(out.directory, model, {}, x)


def _conv(cin: int = 16, cout: int = 16, hw: tuple[int, int] = (8, 8), k: int = 3,
          stride: int = 1, groups: int = 1) -> ConvOp:
    model = nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups)).eval()
    graph = lower_model(model, torch.randn(1, cin, *hw), {})
    return next(op for op in graph.ops if isinstance(op, ConvOp))


def test_eligibility() -> None:
    """Dense 3x3 / stride-1 / pad-1 convs with whole blocks of 8 output channels on even maps
    whose tiles fill at least 3/4 of their vectors; nothing else."""
    assert all(eligible(_conv(hw=hw), 16) for hw in ((8, 8), (56, 56), (28, 28), (14, 14)))
    pruned = _conv()
    pruned.kept[0, 0, 0, 0] = False
    refused = [pruned, _conv(cout=12), _conv(hw=(8, 7)), _conv(hw=(4, 4)), _conv(k=5),
               _conv(stride=2), _conv(groups=2), _conv(cin=MAX_CIN + 1)]
    assert not any(eligible(op, 16) for op in refused)
    walk = plan(8, 8, 16, 16, 2)  # one vector of tiles: 2 threads split the channels
    assert (walk.vectors, walk.gathered, walk.parts) == (1, True, 2)


def test_default_choice_on_resnet20() -> None:
    """The untuned choice: every dense 3x3 / stride-1 conv of ResNet-20 but the 3-channel stem
    at 1 thread; at 2 threads the 8x8 ones (one vector of tiles) keep the direct kernels."""
    x = torch.randn(1, 3, 32, 32)
    graph = lower_model(build_model("resnet20").eval(), x, {})
    avx512 = ISAS["avx512"]
    convs = [op for op in graph.ops if isinstance(op, ConvOp)]
    one = {op.name for op in convs if default_config(op, avx512, 1).family == "winograd"}
    two = {op.name for op in convs if default_config(op, avx512, 2).family == "winograd"}
    s1 = {op.name for op in convs if op.stride == 1 and op.weight.shape[2] == 3}
    assert one == s1 - {"conv1"} and len(one) == 16
    assert two == {n for n in one if not n.startswith("layer3")}


def test_pruned_layer_configured_winograd_runs_direct(compiler_cache) -> None:
    """A Winograd config on a layer it cannot serve (block-pruned) falls back to the direct
    kernels."""
    model = _block(False)
    x = torch.randn(1, 8, 4, 2 * LANES)
    masks = {"b": torch.rand(16, 16, 3, 3, generator=torch.Generator().manual_seed(0)) < 0.5}
    configs = {"b": KernelConfig("winograd", 1, 1, 1)}
    cm = compile_model(model, x, masks, configs=configs, cache_dir=compiler_cache)
    assert {layer.name: layer.family for layer in cm.report.layers}["b"] != "winograd"
    ref = _ref(model, masks, x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4
