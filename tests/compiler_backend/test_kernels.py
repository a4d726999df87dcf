"""Every kernel family / sparsity structure matches PyTorch on odd shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compiler_backend import compile_model
from compiler_backend.compile import resolve_isa
from compiler_backend.isa import detect_isa

from .lanes import EIGHT_LANES
from .source import kernel_source

# (out_channels, kernel, stride, padding, groups) on a 12 x 11 x 9 input
_CASES = [(13, 1, 1, 0, 1), (13, 3, 1, 1, 1), (16, 3, 2, 1, 1), (12, 3, 1, 1, 12),
          (12, 5, 1, 2, 3), (9, 7, 2, 3, 1), (8, 3, 2, 0, 1), (20, 1, 2, 0, 4), (24, 3, 1, 0, 1),
          (10, 5, 2, 2, 1), (6, 2, 2, 1, 2), (12, 3, 2, 1, 12)]


class Branches(nn.Module):
    """Parallel convs over one input, each output flattened and concatenated, plus a Linear."""

    def __init__(self, cin: int = 12) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(cin, co, k, s, p, groups=g) for co, k, s, p, g in _CASES)
        self.fc = nn.Linear(cin, 37)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [c(x).flatten(1) for c in self.convs]
        outs.append(self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))
        return torch.cat(outs, 1)


class TinyMap(nn.Module):
    """Tiny feature maps (1x1 to 3x3): 3x3 convs with padding (one with a residual), a 1x1
    conv, and a wide Linear: all in the channel family."""

    def __init__(self) -> None:
        super().__init__()
        self.c3 = nn.Conv2d(16, 21, 3, 1, 1)
        self.c4 = nn.Conv2d(21, 21, 3, 1, 1)
        self.c1 = nn.Conv2d(21, 19, 1)
        self.fc = nn.Linear(19, 45)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.c3(x)
        b = torch.relu(self.c1(torch.relu(self.c4(a) + a)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(b, 1), 1))


def _mask(shape: tuple[int, ...], structure: str, gen: torch.Generator) -> torch.Tensor:
    co, ci = shape[0], shape[1]
    taps = shape[2] * shape[3] if len(shape) == 4 else 1
    w = torch.zeros(co, ci, taps, dtype=torch.bool)
    if structure == "dense":
        return torch.ones(shape, dtype=torch.bool)
    if structure == "filter":
        w[torch.rand(co, generator=gen) < 0.5] = True
    elif structure == "block_punched":  # 4 rows x 4 in-channels share the kept taps
        for r in range(0, co, 4):
            for c in range(0, ci, 4):
                keep = torch.rand(taps, generator=gen) < 0.35
                keep[torch.randint(taps, (1,), generator=gen)] = True
                w[r:r + 4, c:c + 4] = keep
    elif structure == "block_based":  # 8 rows keep whole input columns
        for r in range(0, co, 8):
            keep = torch.rand(ci, taps, generator=gen) < 0.3
            w[r:r + 8] = keep
    elif structure == "pattern":  # 4-of-taps patterns from a set of 4, half the kernels cut
        patterns = [torch.randperm(taps, generator=gen)[:max(1, min(4, taps - 1))] for _ in range(4)]
        for r in range(co):
            for c in range(ci):
                if torch.rand(1, generator=gen).item() < 0.5:
                    w[r, c, patterns[int(torch.randint(4, (1,), generator=gen))]] = True
    elif structure == "unstructured":
        w = torch.rand(co, ci, taps, generator=gen) < 0.2
    return w.reshape(shape)


def _masks(model: nn.Module, structure: str) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {n: _mask(tuple(m.weight.shape), structure, gen) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def _reference(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    import copy

    from npas_env.pruning import enforce_masks

    ref = copy.deepcopy(model)
    enforce_masks(ref, masks)
    with torch.no_grad():
        return ref(x)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


STRUCTURES = ["dense", "filter", "block_punched", "block_based", "pattern", "unstructured"]


@pytest.mark.parametrize("structure", STRUCTURES)
def test_kernels_match_torch_per_structure(structure: str, compiler_cache) -> None:
    torch.manual_seed(0)
    model = Branches().eval()
    masks = _masks(model, structure)
    x = torch.randn(2, 12, 11, 9)
    cm = compile_model(model, x, masks, cache_dir=compiler_cache)
    assert _rel_err(cm.run(x), _reference(model, masks, x)) < 1e-4
    assert not cm.report.fallbacks


@pytest.mark.parametrize("hw", [1, 2, 3])
@pytest.mark.parametrize("structure", ["dense", "block_based", "unstructured"])
def test_tiny_maps_and_linear_match_torch(structure: str, hw: int, compiler_cache) -> None:
    torch.manual_seed(0)
    model = TinyMap().eval()
    masks = _masks(model, structure)
    x = torch.randn(2, 16, hw, hw)
    cm = compile_model(model, x, masks, isa=EIGHT_LANES, cache_dir=compiler_cache)
    assert _rel_err(cm.run(x), _reference(model, masks, x)) < 1e-4
    # unstructured rows share few entries: a channel block of 8 rows would run about 4x the
    # kept FMAs, more than one-row spatial tiles lose in unused lanes except on 1x1 maps
    convs = {layer.name: layer.family for layer in cm.report.layers if layer.name != "fc"}
    want = "spatial" if structure == "unstructured" and hw > 1 else "channel"
    assert set(convs.values()) == {want}


class GlobalPool(nn.Module):
    """A conv, then global average pooling and a Linear head."""

    def __init__(self, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, cout, 3, 1, 1)
        self.fc = nn.Linear(cout, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return torch.cat([self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1)),
                          y.mean((2, 3))], 1)


@pytest.mark.parametrize(("cout", "h", "w"), [(37, 7, 7), (64, 4, 4), (16, 1, 1), (21, 5, 3)])
@pytest.mark.parametrize("isa", [None, EIGHT_LANES])
def test_global_average_pool_matches_torch(cout: int, h: int, w: int, isa: str | None,
                                           compiler_cache) -> None:
    """Whole vector blocks of channels (folded pairwise), a scalar tail, partial pixel
    vectors, 1 and 2 threads."""
    torch.manual_seed(0)
    model = GlobalPool(cout).eval()
    x = torch.randn(2, 3, h, w)
    for threads in (1, 2):
        cm = compile_model(model, x, {}, threads=threads, isa=isa, cache_dir=compiler_cache)
        assert _rel_err(cm.run(x), _reference(model, {}, x)) < 1e-4
        assert not cm.report.fallbacks


def test_two_threads_and_forced_configs_match(compiler_cache) -> None:
    from compiler_backend import KernelConfig

    torch.manual_seed(0)
    model = Branches().eval()
    masks = _masks(model, "block_punched")
    configs = {f"convs.{i}": KernelConfig("spatial", p, v, 2)
               for i, (p, v) in enumerate([(4, 3), (2, 1), (1, 4), (8, 1), (4, 2), (2, 4), (1, 1),
                                           (8, 1), (4, 1)])}
    configs["convs.2"] = KernelConfig("channel", 8, 1, 2)
    x = torch.randn(1, 12, 11, 9)
    cm = compile_model(model, x, masks, threads=2, configs=configs, cache_dir=compiler_cache)
    assert _rel_err(cm.run(x), _reference(model, masks, x)) < 1e-4


@pytest.mark.parametrize("threads", [1, 2])
def test_pixel_major_tiles_match_torch(threads: int, compiler_cache) -> None:
    """2 rows x 6 vectors on 8 lanes: weight-major FMAs would need 19 of AVX2's 16 registers,
    so the tiles walk pixel vectors outermost (``_x``) and still equal PyTorch."""
    from compiler_backend import KernelConfig

    torch.manual_seed(0)
    model = Branches().eval()
    masks = _masks(model, "block_punched")
    configs = {f"convs.{i}": KernelConfig("spatial", 2, 6, threads) for i in (0, 1, 2, 7)}
    x = torch.randn(2, 12, 11, 9)
    cm = compile_model(model, x, masks, threads=threads, isa=EIGHT_LANES, configs=configs,
                       cache_dir=compiler_cache)
    assert _rel_err(cm.run(x), _reference(model, masks, x)) < 1e-4
    assert "void sk_p2_v6_x(" in kernel_source(cm)


@pytest.mark.parametrize("cv", [1, 2])
@pytest.mark.parametrize("structure", ["dense", "filter", "block_punched"])
def test_channel_family_writes_every_layout_in_place(structure: str, cv: int,
                                                      compiler_cache) -> None:
    """Channel tiles of one or two output-channel vectors, forced on every layer: odd shapes,
    strides and groups, outputs and residuals in padded and plain layouts, partial tiles."""
    from compiler_backend import KernelConfig

    torch.manual_seed(0)
    wide_in = nn.Sequential(nn.Conv2d(80, 24, 3, 1, 1), nn.ReLU(), nn.Conv2d(24, 80, 1))
    for model, x in ((Branches().eval(), torch.randn(2, 12, 11, 9)),
                     (TinyMap().eval(), torch.randn(2, 16, 7, 5)),
                     (wide_in.eval(), torch.randn(2, 80, 7, 6))):  # two input-channel slices
        masks = _masks(model, structure)
        names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        configs = {n: KernelConfig("channel", 8, cv, 1) for n in names}
        cm = compile_model(model, x, masks, configs=configs, cache_dir=compiler_cache)
        assert _rel_err(cm.run(x), _reference(model, masks, x)) < 1e-4
        assert {layer.family for layer in cm.report.layers} == {"channel"}


def test_generic_c_fallback_isa_matches(compiler_cache) -> None:
    torch.manual_seed(0)
    model = TinyMap().eval()
    x = torch.randn(1, 16, 1, 1)
    cm = compile_model(model, x, None, isa="generic", cache_dir=compiler_cache)
    assert cm.isa == "generic"
    assert _rel_err(cm.run(x), _reference(model, {}, x)) < 1e-4


class CropActs(nn.Module):
    """Crop epilogues (whole vectors + a tail) with ReLU6 + residual and Hardswish.

    c2's output is read by the strided conv c3 only (stored phase-split: ``crop_split2``) or,
    with ``plain``, also returned (plain layout: ``crop``).
    """

    def __init__(self, plain: bool) -> None:
        super().__init__()
        self.plain = plain
        self.c1 = nn.Conv2d(4, 8, 3, 1, 1)
        self.c2 = nn.Conv2d(8, 8, 3, 1, 1)
        self.c3 = nn.Conv2d(8, 8, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.hardswish(self.c1(x))
        b = nn.functional.relu6(self.c2(a) + a)
        c = nn.functional.hardswish(self.c3(b))
        return torch.cat([c.flatten(1), b.flatten(1)], 1) if self.plain else c


@pytest.mark.parametrize("plain", [True, False])
@pytest.mark.parametrize("isa", [EIGHT_LANES, "generic"])
def test_crop_epilogue_activations_and_residual_match_torch(isa: str, plain: bool,
                                                            compiler_cache) -> None:
    torch.manual_seed(0)
    model = CropActs(plain).eval()
    x = torch.randn(2, 4, 11, 21) * 3
    cm = compile_model(model, x, None, isa=isa, cache_dir=compiler_cache)
    src = kernel_source(cm)
    assert src.count("crop(tid, nt, A, k)") == (2 if plain else 1)  # c3 (and c2 if plain)
    assert src.count("crop_split2(tid, nt, A, k)") == (0 if plain else 1)
    assert _rel_err(cm.run(x), _reference(model, {}, x)) < 1e-5


class DepthwiseS2(nn.Module):
    """Stride-2 depthwise 3x3 convs: with a residual (a 1x1 stride-2 branch), writing a padded
    buffer (a 3x3 / stride-1 conv reads it), and reading a padded buffer."""

    def __init__(self, c: int = 10) -> None:
        super().__init__()
        self.dw, self.sc = nn.Conv2d(c, c, 3, 2, 1, groups=c), nn.Conv2d(c, c, 1, 2)
        self.dw2, self.c3 = nn.Conv2d(c, c, 3, 2, 1, groups=c), nn.Conv2d(c, c, 3, 1, 1)
        self.c0, self.dw3 = nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 2, 1, groups=c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = nn.functional.relu6(self.dw(x) + self.sc(x))
        b = self.c3(torch.relu(self.dw2(x)))
        c = self.dw3(torch.relu(self.c0(x)))
        return torch.cat([a.flatten(1), b.flatten(1), c.flatten(1)], 1)


@pytest.mark.parametrize("isa", ["native", "generic"])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 4), (7, 33), (8, 8), (8, 40)])
def test_stride2_depthwise_kernel_matches_torch(hw: tuple[int, int], isa: str,
                                                compiler_cache) -> None:
    torch.manual_seed(0)
    model = DepthwiseS2().eval()
    x = torch.randn(2, 10, *hw)
    cm = compile_model(model, x, None, isa=None if isa == "native" else isa,
                       cache_dir=compiler_cache)
    src = kernel_source(cm)
    plane = resolve_isa(None if isa == "native" else isa).name == "avx512" and hw == (8, 8)
    assert src.count("dws2_plane4(tid, nt, W, I, A, k)") == int(plane)  # dw3: padded 8x8 input
    assert src.count("dws2(tid, nt, W, I, A, k)") == 3 - int(plane)
    assert _rel_err(cm.run(x), _reference(model, {}, x)) < 1e-4


class PlaneS2(nn.Module):
    """A stride-2 depthwise conv on a padded 8x8 input with a plain residual (a 1x1 stride-2
    branch of the graph input, which a concat also reads) and ReLU6, into a plain output."""

    def __init__(self, c: int = 24) -> None:
        super().__init__()
        self.c0, self.dw = nn.Conv2d(c, c, 3, 1, 1), nn.Conv2d(c, c, 3, 2, 1, groups=c)
        self.sc = nn.Conv2d(c, c, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.sc(x)
        return torch.cat([nn.functional.relu6(self.dw(torch.relu(self.c0(x))) + s), s], 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_stride2_depthwise_plane_kernel_with_residual(threads: int, compiler_cache) -> None:
    """AVX-512: one vector per 4x4 output plane (``depthwise.S2_PLANE4_TEMPLATE``)."""
    torch.manual_seed(0)
    model = PlaneS2().eval()
    x = torch.randn(2, 24, 8, 8)
    cm = compile_model(model, x, None, threads=threads, cache_dir=compiler_cache)
    if detect_isa().name == "avx512":
        assert "dws2_plane4(tid, nt, W, I, A, k)" in kernel_source(cm)
    assert _rel_err(cm.run(x), _reference(model, {}, x)) < 1e-4


@pytest.mark.parametrize("hw", [(9, 7), (17, 40), (1100, 300)])
def test_stride2_depthwise_on_taller_maps_takes_the_phase_split_path(hw: tuple[int, int],
                                                                      compiler_cache) -> None:
    """Past 8 rows the phase-split layout serves stride-2 depthwise convs (dws2 is not used)."""
    torch.manual_seed(0)
    model = DepthwiseS2().eval()
    x = torch.randn(1, 10, *hw)
    cm = compile_model(model, x, None, cache_dir=compiler_cache)
    assert "dws2(tid, nt, W, I, A, k)" not in kernel_source(cm)
    assert _rel_err(cm.run(x), _reference(model, {}, x)) < 1e-4


class MapsOfTwoSizes(nn.Module):
    """A 3x3 conv on a 32x32 map (split between threads by pixel chunks), then one on 4x4
    (split by row blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.big = nn.Conv2d(16, 32, 3, 1, 1)
        self.small = nn.Conv2d(32, 256, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.small(nn.functional.max_pool2d(torch.relu(self.big(x)), 8))


@pytest.mark.parametrize(("structure", "small_slices"), [("unstructured", 8), ("block_based", 2)])
def test_slices_per_thread_follow_the_balance_of_the_split(structure: str, small_slices: int,
                                                           compiler_cache) -> None:
    """One slice per thread where the split is even (pixel chunks, or row blocks of equal
    length); four where threads would split one-row blocks of unlike lengths."""
    import re

    torch.manual_seed(0)
    model = MapsOfTwoSizes().eval()
    masks = _masks(model, structure)
    x = torch.randn(1, 16, 32, 32)
    cm = compile_model(model, x, masks, threads=2, cache_dir=compiler_cache)
    slices = {f: int(g) for f, g in re.findall(r"NPAS_STEP\(\d+, (op_\d+_k), (\d+)\)",
                                                kernel_source(cm))}
    big, small = (f"op_{cm.program.op_names.index(n)}_k" for n in ("big", "small"))
    assert (slices[big], slices[small]) == (2, small_slices)
    assert _rel_err(cm.run(x), _reference(model, masks, x)) < 1e-4


def test_an_even_split_of_unequal_items_counts_as_skewed() -> None:
    """The check behind several slices per thread: equal-count shares of the items must carry
    about equal work (a last, short pixel chunk or sorted row blocks break that)."""
    import numpy as np

    from compiler_backend.codegen import _skewed

    assert not _skewed(np.full(16, 3.0), 2)
    assert _skewed(np.array([5.0, 5.0, 1.0, 1.0]), 2)
    # 3x3 128@28 at block 4x: 3 pixel chunks of 384 / 384 / 72 wide-row pixels x 16 row
    # blocks, dealt chunk by chunk: the first thread gets 576 chunk-pixels per block, the
    # second 264 (2 threads ran it at 396 us with one slice each, 298 us with four)
    chunks = np.outer([384, 384, 72], np.ones(16)).ravel()
    assert _skewed(chunks, 2) and not _skewed(chunks, 1)
