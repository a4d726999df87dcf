"""Banded execution (``compiler_backend.bands``): outputs equal the masked PyTorch model on 2
threads and on 1; the halo pushes are what makes them equal; models that do not fit bands are
refused with a reason."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_backend import bands, compile_model
from compiler_backend.threads import FixedThreads
from compiler_backend.verify import output_error
from npas_env.errors import InvalidConfig
from npas_env.pruning.masks import prune_mask
from npas_env.zoo import build_model

from .test_zoo_equality import _block_masks, _calibrated


def _pattern_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    masks = {}
    with torch.no_grad():
        for n, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1 and m.kernel_size == (3, 3) \
                    and m.in_channels >= 16:
                masks[n] = prune_mask(m.weight, "pattern", 8.0, (8, 16))
                m.weight.mul_(masks[n])
    return masks


def _assert_equal_on_both_counts(compiled, model: nn.Module) -> None:
    x = torch.randn(2, 3, *compiled.graph.buffers[compiled.graph.input].shape[1:])
    with torch.no_grad():
        ref = model(x)
    assert float((ref[0] - ref[1]).abs().max()) > 1e-2 * float(ref.abs().max())  # input matters
    for threads in (2, 1):
        compiled.thread_policy = FixedThreads(threads)
        err = float((compiled.run(x) - ref).abs().max() / ref.abs().max())
        assert err <= 1e-4, f"{threads} threads: relative error {err:.2e}"


@pytest.mark.parametrize(("name", "masking"), [("resnet20", _block_masks),
                                               ("resnet20", _pattern_masks),
                                               ("mobilenetv2", _block_masks)],
                         ids=["resnet20-block4x", "resnet20-pattern8x", "mobilenetv2-block4x"])
def test_banded_zoo_models_match_torch(name: str, masking, compiler_cache) -> None:
    torch.manual_seed(0)
    model = build_model(name)
    masks = masking(model)
    model = _calibrated(model)
    compiled = compile_model(model, torch.randn(1, 3, 32, 32), masks, threads=2, banded=True,
                             cache_dir=compiler_cache)
    assert compiled.program.arena_floats % bands.BANDS == 0
    _assert_equal_on_both_counts(compiled, model)


class BandNet(nn.Module):
    """What a trunk may hold: depthwise and grouped convs at strides 1 and 2, a 1x1 stride-2
    conv, a residual, a 2x2 max pool, a concat read by a 1x1 conv, an unfolded batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU())
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.pool = nn.MaxPool2d(2)
        self.a, self.b = nn.Conv2d(16, 8, 3, 1, 1), nn.Conv2d(16, 8, 1)
        self.mix = nn.Conv2d(16, 16, 1)
        self.g = nn.Conv2d(16, 16, 3, 2, 1, groups=4)
        self.dws2 = nn.Conv2d(16, 16, 3, 2, 1, groups=16)
        self.down1, self.down2 = nn.Conv2d(16, 16, 1, 2), nn.Conv2d(16, 16, 1, 2)
        self.fc = nn.Linear(16, 5)
        for m in self.modules():  # activations neither die out nor average away
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.pool(F.relu(self.pw(F.relu(self.dw(x) + x))))
        x = F.hardswish(self.mix(torch.cat([self.a(x), self.b(x)], 1)))
        x = self.dws2(F.relu(self.g(x))) + self.down2(self.down1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_a_trunk_of_every_kind_of_op_bands_exactly(compiler_cache) -> None:
    torch.manual_seed(0)
    model = BandNet().eval()
    compiled = compile_model(model, torch.randn(1, 3, 32, 24), threads=2, banded=True,
                             cache_dir=compiler_cache)
    _assert_equal_on_both_counts(compiled, model)


def test_without_the_halo_pushes_the_bands_are_wrong(monkeypatch, compiler_cache) -> None:
    """The check above can fail: with no rows pushed between the bands the output differs."""
    torch.manual_seed(0)
    model = BandNet().eval()
    monkeypatch.setattr(bands, "pushes", lambda *args: [])
    x = torch.randn(1, 3, 32, 24)
    compiled = compile_model(model, x, threads=2, banded=True, cache_dir=compiler_cache,
                             verify=False)
    assert output_error(compiled, model, x) > 1e-2


class NoGlobalPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, 1, 1)
        self.fc = nn.Linear(4 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.c(x), (1, 2)), 1))


class WideKernel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 5, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.c(x), 1)


class PlainAdd(nn.Module):
    """An add (kept apart from the conv by the ReLU between) reads a map a 3x3 conv reads."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, 4, 3, 1, 1), nn.Conv2d(4, 4, 3, 1, 1, groups=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return F.adaptive_avg_pool2d(F.relu(self.dw(x)) + x, 1)


@pytest.mark.parametrize(("model", "shape", "threads", "match"), [
    (NoGlobalPool(), (1, 3, 8, 8), 2, "global average pool"),
    (WideKernel(), (1, 3, 8, 8), 2, "c: a conv with kernel height 5"),
    (WideKernel(), (1, 3, 9, 8), 2, "splits the input rows in 2"),
    (WideKernel(), (1, 3, 8, 8), 1, "runs on 2 threads"),
    (build_model("vgg16"), (1, 3, 32, 32), 2, "does not fit them"),
    (PlainAdd(), (1, 3, 8, 8), 2, "add reads it and needs it plain"),
], ids=["no-global-pool", "5x5-conv", "odd-rows", "one-thread", "vgg16-too-deep", "plain-add"])
def test_models_that_do_not_fit_bands_are_refused_with_the_reason(
        model: nn.Module, shape: tuple[int, ...], threads: int, match: str,
        compiler_cache) -> None:
    with pytest.raises(InvalidConfig, match=match):
        compile_model(model.eval(), torch.randn(*shape), threads=threads, banded=True,
                      cache_dir=compiler_cache)


def test_the_report_times_every_op_of_a_band_step(compiler_cache) -> None:
    """A band step runs several ops (up to the next 3x3 conv); each still gets its own time."""
    torch.manual_seed(0)
    model = build_model("mobilenetv2").eval()
    compiled = compile_model(model, torch.randn(1, 3, 32, 32), threads=2, banded=True,
                             cache_dir=compiler_cache, verify=False)
    steps = compiled.program.source.count("static void band_op_")
    layers = compiled.build_report(repeats=3).layers
    assert steps < len(layers)  # grouped
    assert all(layer.time_ms > 0 for layer in layers), [
        layer.name for layer in layers if not layer.time_ms > 0]
    # the 1x1 convs (none starts a band step) do most of MobileNetV2's multiply-adds
    pointwise = sum(layer.time_ms for layer in layers if layer.name.endswith((".0", ".6")))
    assert pointwise > 0.3 * sum(layer.time_ms for layer in layers)


def test_cli_compiles_and_times_a_banded_model(capsys, compiler_cache) -> None:
    from npas_env.cli import main

    assert main(["compile", "--model", "resnet20", "--random-weights", "--threads", "2",
                 "--banded", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert '"threads": 2' in out and "layer3.2.conv2" in out
    assert main(["compile", "--model", "small_cnn", "--random-weights", "--threads", "2",
                 "--banded"]) != 0
    assert "needs a global average pool" in capsys.readouterr().err


def test_mailboxes_are_whole_lines_of_their_own_a_page_apart_by_direction() -> None:
    """Each push gets a line-aligned run past ``start``; no two overlap; band 1's runs start at
    least ``MAIL_GAP`` floats after band 0's end; the pushes keep their order."""
    items = [bands.Push(band, 100 * i, channels, 40, floats, 0, 0)
             for i, (band, channels, floats) in enumerate([(0, 16, 32), (1, 16, 32), (0, 64, 8),
                                                          (1, 3, 5)])]
    planned, end = bands.plan_mailboxes(items, 4096)
    assert [p.offset for p in planned] == [p.offset for p in items]
    runs = sorted((p.mail, p.mail + p.channels * p.floats, p.band) for p in planned)
    assert all(lo % 16 == 0 and lo >= 4096 for lo, _, _ in runs)
    assert all(a[1] <= b[0] for a, b in zip(runs, runs[1:], strict=False))
    last0 = max(hi for _, hi, band in runs if band == 0)
    assert min(lo for lo, _, band in runs if band == 1) >= last0 + bands.MAIL_GAP
    assert end >= runs[-1][1]


def test_bands_hand_rows_over_through_mailboxes_only(compiler_cache) -> None:
    """No band writes into the other's arena: each copies its edge rows into mailboxes past
    both arenas and its own border rows from them."""
    torch.manual_seed(0)
    compiled = compile_model(BandNet().eval(), torch.randn(1, 3, 32, 24), threads=2,
                             banded=True, cache_dir=compiler_cache)
    source = compiled.program.source
    band = int(re.search(r"float\* restrict Ab = A \+ \(long\)b \* (\d+);", source).group(1))
    pushes = re.findall(r"memcpy\(A \+ (\d+) \+ c \* \d+, A \+ (\d+) \+", source)
    pulls = re.findall(r"if \(b == (\d)\) for \(int c = 0; c < \d+; \+\+c\) memcpy\(A \+ (\d+) "
                       r"\+ \(long\)c \* \d+, A \+ (\d+) \+ c", source)
    assert pushes and pulls
    assert all(int(mail) >= 2 * band and int(src) < 2 * band for mail, src in pushes)
    assert all(int(b) * band <= int(dst) < (int(b) + 1) * band and int(mail) >= 2 * band
               for b, dst, mail in pulls)
