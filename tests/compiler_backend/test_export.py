"""Exported C packages build with their own Makefile and reproduce the masked PyTorch model:
on this machine (its ISA and portable C) and as AArch64 NEON code under qemu when a cross
compiler and qemu are installed (``apt-get install gcc-aarch64-linux-gnu qemu-user``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_backend import KernelConfig, export_c, fusion
from compiler_backend.export import ExportedModel, masked_reference
from compiler_backend.isa import detect_isa
from compiler_backend.toolchain import find_compiler
from npas_env.errors import BackendError
from npas_env.pruning import prune_mask

from .lanes import EIGHT_LANES
from .source import unflagged
from .test_fastpaths import TwoByTwo
from .test_fusion import inverted_block, sparse_expand_masks


class Mixed(nn.Module):
    """One layer per kernel family: pattern taps (storing their output phase-split),
    block-punched stride 2 with a 1x1 stride-2 shortcut (both read a phase-split input), a
    block-based 1x1 storing its output phase-split for a stride-2 depthwise, depthwise at
    stride 1, unstructured 1x1, pooling, Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.pat = nn.Conv2d(16, 16, 3, 1, 1)
        self.blk, self.short = nn.Conv2d(16, 32, 3, 2, 1), nn.Conv2d(16, 32, 1, 2, 0)
        self.expand = nn.Conv2d(32, 48, 1)
        self.dw, self.dw2 = (nn.Conv2d(48, 48, 3, s, 1, groups=48) for s in (1, 2))
        self.proj = nn.Conv2d(48, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(self.pat(x) + x)
        y = torch.relu(self.blk(x) + self.short(x))
        y = F.relu6(self.dw2(F.relu6(self.expand(y))))
        y = self.proj(F.relu6(self.dw(y)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def _model_and_masks() -> tuple[nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    model = Mixed().eval()
    schemes = {"pat": ("pattern", 4.0), "blk": ("block_punched", 4.0), "short": ("block_based", 2.0),
               "expand": ("block_based", 4.0), "proj": ("unstructured", 5.0)}
    masks = {name: prune_mask(getattr(model, name).weight, s, r, (4, 8))
             for name, (s, r) in schemes.items()}
    return model, masks, torch.randn(1, 3, 32, 32)


def _export_mixed(directory: Path, isa: str, threads: int = 1) -> ExportedModel:
    """Export ``Mixed`` with expand + depthwise fusion off: with 8 or 4 lanes it would take the
    expand conv feeding the stride-2 depthwise conv, whose unfused kernels this model covers
    (``test_fused_expand_export_matches_torch`` covers the fused one)."""
    model, masks, x = _model_and_masks()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fusion, "MAX_ENTRIES", {lanes: 0 for lanes in (4, 8, 16)})
        return export_c(model, x, directory, masks, isa=isa, threads=threads)


#: Kernel templates the Mixed model must use: spatial (one storing phase-split), channel, taps
#: (storing phase-split too), banded and per-vector depthwise.
_KERNELS = ("void sk_p", "_e(int tid", "void ck_t", "void tk_r", "_x2(int tid", "void dwband(",
            "void dw9_v")


def _assert_all_families(directory: Path) -> None:
    source = unflagged((directory / "npas_model.c").read_text())
    assert [k for k in _KERNELS if k not in source] == []


def _build_and_run(directory: Path, cc: str, runner: list[str], *extra: str) -> dict[str, float]:
    make = subprocess.run(["make", "-s", "-C", str(directory), f"CC={cc}", *extra],
                          capture_output=True, text=True, timeout=300)
    assert make.returncode == 0, make.stderr
    run = subprocess.run([*runner, "./npas_model", ".", "3"], cwd=directory, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


def _check_output(directory: Path, model: nn.Module, masks: dict[str, torch.Tensor],
                  x: torch.Tensor) -> None:
    got = np.fromfile(directory / "output.bin", "<f4")
    want = masked_reference(model, masks, x).reshape(-1).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.fixture(scope="module")
def host_export(tmp_path_factory: pytest.TempPathFactory, compiler_cache):
    out = _export_mixed(tmp_path_factory.mktemp("export_host"), EIGHT_LANES)
    return out, _build_and_run(out.directory, find_compiler(), []), _model_and_masks()


def test_host_export_builds_runs_and_matches_torch(host_export) -> None:
    out, result, (model, masks, x) = host_export
    assert set(out.files) <= {p.name for p in out.directory.iterdir()}
    _assert_all_families(out.directory)
    assert result["max_rel_error"] < 1e-4 and result["median_ms"] > 0 and result["runs"] == 3
    _check_output(out.directory, model, masks, x)


def test_driver_fails_on_a_wrong_expected_output(host_export) -> None:
    out = host_export[0]
    bad = out.directory / "expected.bin"
    want = np.fromfile(bad, "<f4")
    (want + 0.5).astype("<f4").tofile(bad)
    try:
        run = subprocess.run(["./npas_model", "."], cwd=out.directory, capture_output=True, text=True)
    finally:
        want.tofile(bad)
    assert run.returncode == 1
    assert json.loads(run.stdout)["max_rel_error"] > 1e-4


def test_avx512_export_compiles(tmp_path) -> None:
    """Every template under the AVX-512 prelude builds; on an AVX-512 machine the package also
    runs and matches PyTorch (the host export above uses 8-lane vectors: its shapes were chosen
    so that every kernel family appears)."""
    model, masks, x = _model_and_masks()
    out = _export_mixed(tmp_path, "avx512", threads=2)
    if detect_isa().name == "avx512":
        result = _build_and_run(out.directory, find_compiler(), [])
        assert result["max_rel_error"] < 1e-4
        _check_output(out.directory, model, masks, x)
        return
    make = subprocess.run(["make", "-s", "-C", str(out.directory), f"CC={find_compiler()}"],
                          capture_output=True, text=True, timeout=300)
    assert make.returncode == 0, make.stderr
    assert (out.directory / "npas_model").exists()


def test_generic_isa_export_matches_torch(tmp_path, compiler_cache) -> None:
    out = _export_mixed(tmp_path, "generic", threads=2)
    assert _build_and_run(out.directory, find_compiler(), [])["max_rel_error"] < 1e-4
    assert "isa generic" in (out.directory / "npas_model.c").read_text()


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")),
                    reason="needs gcc-aarch64-linux-gnu and qemu-user")
@pytest.mark.parametrize("threads", [1, 2])
def test_neon_export_runs_under_qemu(threads: int, tmp_path) -> None:
    model, masks, x = _model_and_masks()
    out = _export_mixed(tmp_path, "neon", threads=threads)
    assert "vfmaq_f32" in (out.directory / "npas_model.c").read_text()
    _assert_all_families(out.directory)
    result = _build_and_run(out.directory, "aarch64-linux-gnu-gcc", ["qemu-aarch64"],
                            "LDFLAGS=-static")
    assert result["max_rel_error"] < 1e-4 and result["threads"] == threads
    _check_output(out.directory, model, masks, x)


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")),
                    reason="needs gcc-aarch64-linux-gnu and qemu-user")
def test_neon_export_runs_quads_and_sweeps_under_qemu(tmp_path) -> None:
    """Pattern-pruned convs on a 2x2 map: a quad kernel, then a sweep with a fused residual."""
    torch.manual_seed(0)
    model = TwoByTwo().eval()
    masks = {n: prune_mask(getattr(model, n).weight, "pattern", 3.0, (4, 4)) for n in ("a", "b")}
    configs = {"a": KernelConfig("quads", 1, 1, 1), "b": KernelConfig("sweep", 1, 2, 1)}
    x = torch.randn(1, 24, 2, 2)
    out = export_c(model, x, tmp_path, masks, isa="neon", configs=configs)
    source = (out.directory / "npas_model.c").read_text()
    assert "void quads_v" in source and "void sw_" in source
    result = _build_and_run(out.directory, "aarch64-linux-gnu-gcc", ["qemu-aarch64"],
                            "LDFLAGS=-static")
    assert result["max_rel_error"] < 1e-4
    _check_output(out.directory, model, masks, x)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("target", ["host", "neon"])
def test_fused_expand_export_matches_torch(target: str, stride: int, tmp_path) -> None:
    """An inverted residual block whose expand conv runs inside its depthwise conv (``exdw``),
    exported with 8 lanes (run here) and NEON's 4 (run under qemu), 2 threads; at stride 2 its
    project conv (on 4x8) runs split-K (``split_k``)."""
    if target == "neon" and not (shutil.which("aarch64-linux-gnu-gcc")
                                 and shutil.which("qemu-aarch64")):
        pytest.skip("needs gcc-aarch64-linux-gnu and qemu-user")
    model = inverted_block(res=stride == 1, stride=stride)
    masks = sparse_expand_masks(model, 3)
    x = torch.randn(1, 3, 8, 16)
    out = export_c(model, x, tmp_path, masks, isa=EIGHT_LANES if target == "host" else "neon",
                   threads=2)
    source = (out.directory / "npas_model.c").read_text()
    assert "void exdw_" in source
    assert ("_sum(" in source) == (stride == 2)
    cc, runner, extra = ((find_compiler(), [], ()) if target == "host" else
                         ("aarch64-linux-gnu-gcc", ["qemu-aarch64"], ("LDFLAGS=-static",)))
    assert _build_and_run(out.directory, cc, runner, *extra)["max_rel_error"] < 1e-4
    _check_output(out.directory, model, masks, x)


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * torch.sigmoid(y.mean((2, 3), keepdim=True))


def test_export_refuses_ops_that_need_pytorch(tmp_path) -> None:
    with pytest.raises(BackendError, match="run through PyTorch"):
        export_c(Gated().eval(), torch.randn(1, 3, 8, 8), tmp_path)
    assert not (tmp_path / "npas_model.c").exists()


def test_cli_export_writes_a_package_that_checks_a_real_sample(tmp_path, capsys,
                                                                compiler_cache) -> None:
    from npas_env.cli import main

    out = tmp_path / "pkg"
    assert main(["compile", "--model", "small_cnn", "--random-weights", "--isa", "generic",
                 "--export", str(out)]) == 0
    assert '"isa": "generic"' in capsys.readouterr().out
    assert np.abs(np.fromfile(out / "input.bin", "<f4")).max() > 0  # a dataset sample, not zeros
    assert _build_and_run(out, find_compiler(), [])["max_rel_error"] < 1e-4


def test_aarch64_hosts_detect_neon(monkeypatch) -> None:
    from compiler_backend import isa

    monkeypatch.setattr(isa.platform, "machine", lambda: "aarch64")
    isa.detect_isa.cache_clear()
    try:
        assert isa.detect_isa() == isa.ISAS["neon"]
    finally:
        isa.detect_isa.cache_clear()
