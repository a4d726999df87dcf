"""Dead-channel elimination (``compiler_backend.dead_channels``): channels no layer reads are
cut from the buffers and the convs that write them, and outputs stay equal to PyTorch's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_backend import compile_model
from compiler_backend.compile import lower_model
from compiler_backend.ir import ConvOp

from .test_fastpaths import _ref
from .test_fusion import Inverted


def _reading(model: Inverted, live: torch.Tensor) -> dict[str, torch.Tensor]:
    """The project conv keeps half its weights, on the input channels in ``live`` only."""
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(model.project.weight.shape, generator=gen) < 0.5
    mask[:, ~live] = False
    mask[0, live] = True  # every live channel is read
    return {"project": mask}


def _live(n: int, k: int) -> torch.Tensor:
    live = torch.zeros(n, dtype=torch.bool)
    live[torch.randperm(n, generator=torch.Generator().manual_seed(3))[:k]] = True
    return live


def _check(model: nn.Module, masks: dict[str, torch.Tensor], threads: int, cache) -> dict:
    x = torch.randn(2, 3, 8, 16)
    cm = compile_model(model, x, masks, threads=threads, cache_dir=cache)
    ref = _ref(model, masks, x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4
    return {layer.name: layer.cut_channels for layer in cm.report.layers}


@pytest.mark.parametrize("threads", [1, 2])
def test_dead_channels_are_cut_through_the_depthwise_conv(threads: int, compiler_cache) -> None:
    """The project conv reads 20 of the 64 expanded channels: the expand conv computes only
    those, the depthwise conv runs on them alone, and the project conv reads a 20-channel map."""
    torch.manual_seed(0)
    model = Inverted().eval()
    masks = _reading(model, _live(64, 20))
    graph = lower_model(model, torch.randn(1, 3, 8, 16), masks)
    assert graph.cut_channels == {"expand": (20, 64), "dw": (20, 64)}
    ops = {op.name: op for op in graph.ops if isinstance(op, ConvOp)}
    assert ops["expand"].weight.shape[0] == ops["dw"].groups == ops["project"].in_shape[0] == 20
    assert graph.buffers[ops["dw"].dst].shape == (20, 8, 16)
    cut = _check(model, masks, threads, compiler_cache)
    assert cut == {"stem": None, "expand": (20, 64), "dw": (20, 64), "project": None}


class Separable(nn.Module):
    """A stem, then a depthwise-separable pair whose 1x1 convs both read the depthwise output;
    a third 1x1 conv reads the stem's output too."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 1, 1)
        self.dw = nn.Conv2d(32, 32, 3, 1, 1, groups=32)
        self.left, self.right = nn.Conv2d(32, 8, 1), nn.Conv2d(32, 8, 1)
        self.skip = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.stem(x))
        h = F.relu(self.dw(a))
        return torch.cat([self.left(h), self.right(h), self.skip(a)], 1)


def _columns(cols: slice) -> torch.Tensor:
    mask = torch.zeros(8, 32, 1, 1, dtype=torch.bool)
    mask[:, cols] = True
    return mask


def test_a_buffer_keeps_what_any_reader_needs_back_to_the_stem(compiler_cache) -> None:
    """Two convs read the depthwise output (channels 0-5 and 4-9), a third one the stem's
    (channels 20-23): the stem keeps the union of all three, and the depthwise conv, whose
    input and output channels must match, computes those 14 channels too."""
    torch.manual_seed(0)
    model = Separable().eval()
    masks = {"left": _columns(slice(0, 6)), "right": _columns(slice(4, 10)),
             "skip": _columns(slice(20, 24))}
    cut = _check(model, masks, 1, compiler_cache)
    assert cut == {"stem": (14, 32), "dw": (14, 32), "left": None, "right": None, "skip": None}


def test_buffers_other_ops_read_stay_whole() -> None:
    """No cut where a concat reads the expanded tensor (nor, then, the depthwise conv's output,
    which must keep its input's channels), nor of the stem's output, a residual."""
    torch.manual_seed(0)
    tapped = Inverted(tap=True).eval()
    graph = lower_model(tapped, torch.randn(1, 3, 8, 16), _reading(tapped, _live(64, 20)))
    assert graph.cut_channels == {}
    plain = Inverted().eval()
    masks = {"expand": torch.zeros(64, 16, 1, 1, dtype=torch.bool)}
    masks["expand"][:, :4] = True  # the expand conv reads 4 of the stem's 16 channels
    assert lower_model(plain, torch.randn(1, 3, 8, 16), masks).cut_channels == {}


def test_a_layer_reading_nothing_leaves_one_channel(compiler_cache) -> None:
    """A fully pruned project conv reads no channel: its producers keep one (no empty buffer),
    and the output (the project conv's bias plus the residual) is still right."""
    torch.manual_seed(0)
    model = Inverted().eval()
    masks = {"project": torch.zeros(16, 64, 1, 1, dtype=torch.bool)}
    cut = _check(model, masks, 1, compiler_cache)
    assert cut["expand"] == cut["dw"] == (1, 64)


def test_block_pruned_mobilenetv2_loses_dead_channels() -> None:
    """Block-based 8x16 at 8x leaves MobileNetV2's project convs channels they never read."""
    from npas_env.pruning.masks import prune_mask
    from npas_env.zoo import build_model

    torch.manual_seed(0)
    model = build_model("mobilenetv2").eval()
    masks = {n: prune_mask(m.weight, "block_based", 8.0, (8, 16)) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels >= 16
             and m.kernel_size == (1, 1)}
    cut = lower_model(model, torch.randn(1, 3, 32, 32), masks).cut_channels
    assert cut["features.5.conv.3"][1] == 144 and cut["features.5.conv.3"][0] < 72


def test_npas_compile_reports_each_layers_channels(capsys, compiler_cache) -> None:
    """``npas compile``'s layer table has a ``channels`` column ("all" where nothing is cut)."""
    from npas_env.cli import main

    assert main(["compile", "--model", "small_cnn", "--random-weights", "--repeats", "5"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert table[0] == "| layer | kernel family | structure | kept | channels | time ms | share |"
    assert len(table) > 2 and all(row.split(" | ")[4] == "all" for row in table[2:])
