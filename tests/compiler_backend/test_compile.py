"""End-to-end compile of small models, artifact cache, error reporting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_backend import compile_model
from compiler_backend.codegen import generate
from compiler_backend.compile import lower_model, resolve_isa
from compiler_backend.layout import plan_padded
from compiler_backend.toolchain import compile_source
from npas_env.errors import BackendError

from .source import kernel_source


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.sc = (nn.Sequential() if stride == 1 and cin == cout else
                   nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(out)) + self.sc(x))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * w


class SmallNet(nn.Module):
    """Residual blocks, an SE gate (sigmoid -> PyTorch fallback), depthwise, grouped, concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 13, 3, 1, 1), nn.BatchNorm2d(13), nn.ReLU6())
        self.l1, self.l2 = Block(13, 13, 1), Block(13, 24, 2)
        self.se = SqueezeExcite(24)
        self.dw = nn.Conv2d(24, 24, 5, 1, 2, groups=24)
        self.g = nn.Conv2d(24, 24, 3, 2, 1, groups=3)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.avg = nn.AvgPool2d(2, 1, 1, count_include_pad=False)
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.l2(self.l1(self.stem(x))))
        y = self.g(F.hardswish(self.dw(x)))
        x = torch.cat([y, self.pool(x)], 1)
        x = self.avg(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = SmallNet().eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-1, 1)
            mod.running_var.uniform_(0.5, 2)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return m


def test_small_net_end_to_end_and_cache_hit(compiler_cache) -> None:
    model = _model()
    x = torch.randn(2, 3, 16, 16)
    first = compile_model(model, x, cache_dir=compiler_cache)
    ref = model(x)
    assert float((first.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4
    report = first.report
    assert [f.name for f in report.fallbacks] == ["sigmoid"]
    assert 0.0 < report.fallbacks[0].share < 1.0
    assert {layer.name for layer in report.layers} >= {"l1.c2", "se.fc1", "fc"}
    kinds = [op.kind for op in first.graph.ops]
    assert "affine" not in kinds  # every BN folded
    second = compile_model(model, x, cache_dir=compiler_cache)
    assert second.cache_hit and second.artifact.path == first.artifact.path
    timing = second.benchmark(warmup=2, repeats=5)
    assert timing.runs >= 5 and timing.median_ms > 0


def test_two_threads_end_to_end(compiler_cache) -> None:
    model = _model()
    x = torch.randn(1, 3, 16, 16)
    cm = compile_model(model, x, threads=2, cache_dir=compiler_cache)
    ref = model(x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


def test_compile_failure_names_the_layer(compiler_cache) -> None:
    graph = lower_model(_model(), torch.randn(1, 3, 16, 16))
    program = generate(graph, resolve_isa(), 1, inject_error="l1.c2")
    with pytest.raises(BackendError, match="l1.c2"):
        compile_source(program.source, program.line_map, cache=compiler_cache)


def test_missing_compiler_is_a_clear_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(BackendError, match="apt-get install gcc"):
        compile_model(_model(), torch.randn(1, 3, 16, 16), cache_dir=tmp_path)


class _SizeByKeyword(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        return self.fc(y.reshape(y.size(0), y.size(dim=1) * y.size(dim=2) * y.size(3)))


def test_size_with_a_keyword_dim_is_one_dimension(compiler_cache) -> None:
    torch.manual_seed(0)
    model = _SizeByKeyword().eval()
    x = torch.randn(1, 3, 8, 8)
    cm = compile_model(model, x, cache_dir=compiler_cache)
    ref = model(x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


def test_adaptive_threads_run_both_counts_with_equal_outputs(compiler_cache) -> None:
    model = _model()
    x = torch.randn(1, 3, 16, 16)
    cm = compile_model(model, x, threads=2, cache_dir=compiler_cache, adaptive_threads=True)
    ref = model(x)
    for _ in range(12):  # the first calls try 1 and 2 threads twice each
        assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4
    counts = cm.thread_policy.counts
    assert counts[1] >= 2 and counts[2] >= 2 and sum(counts.values()) == 12


@pytest.mark.parametrize(("hw", "ceil_mode"), [((35, 70), False), ((9, 33), False),
                                               ((4, 26), False), ((2, 3), False),
                                               ((9, 9), True)])
def test_two_by_two_max_pool_matches_torch(hw: tuple[int, int], ceil_mode: bool,
                                           compiler_cache) -> None:
    """The vectorised 2x2 / stride-2 max pool (whole vectors, scalar tails, odd sizes) and
    the general loop it leaves ceil-mode windows to."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, 1, 1), nn.MaxPool2d(2, ceil_mode=ceil_mode)).eval()
    x = torch.randn(2, 3, *hw)
    cm = compile_model(model, x, cache_dir=compiler_cache)
    fast = "r0 + 2 * ox" in kernel_source(cm)
    assert fast is not ceil_mode
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(cm.run(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pool", [nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), nn.MaxPool2d(2, ceil_mode=True),
                                  nn.AvgPool2d(2), nn.AvgPool2d(3, 1, 1, count_include_pad=False),
                                  nn.AvgPool2d(3, 2, 1), nn.AvgPool2d(2, divisor_override=3)])
@pytest.mark.parametrize("threads", [1, 2])
def test_pools_read_and_write_padded_layouts(pool: nn.Module, threads: int,
                                             compiler_cache) -> None:
    """conv -> pool -> conv -> pool -> conv: each pool reads its producer's padded output in
    place and writes the next conv's padded input, on odd map sizes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, 1, 1), nn.ReLU(), pool, nn.Conv2d(6, 7, 3, 1, 1),
                          pool, nn.Conv2d(7, 5, 3, 1, 1)).eval()
    x = torch.randn(2, 3, 19, 37)
    graph = lower_model(model, x[:1])
    cm = compile_model(model, x, threads=threads, cache_dir=compiler_cache)
    pools = [op for op in cm.graph.ops if op.kind == "pool"]
    padded = plan_padded(graph, resolve_isa().lanes, threads)
    assert all(op.src in padded and op.dst in padded for op in pools)
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(cm.run(x), ref, rtol=1e-4, atol=1e-5)


class _PoolThenConv(nn.Module):
    """A map read by a pool first, then by a 3x3 conv (a padded-layout candidate)."""

    def __init__(self) -> None:
        super().__init__()
        self.c0, self.c1 = nn.Conv2d(3, 16, 3, 1, 1), nn.Conv2d(16, 16, 3, 1, 1)
        self.c2, self.pool = nn.Conv2d(16, 16, 3, 2, 1), nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.c0(x))
        p = self.pool(y)
        return self.c2(self.c1(y)) + p


def test_a_map_read_by_a_pool_before_a_conv_compiles(compiler_cache) -> None:
    """The padded-layout cost model met the pool first among the readers and asked whether
    it was a pointwise conv (an AttributeError before generator v39)."""
    torch.manual_seed(0)
    model = _PoolThenConv().eval()
    x = torch.randn(1, 3, 16, 16)
    cm = compile_model(model, x, cache_dir=compiler_cache)
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(cm.run(x), ref, rtol=1e-4, atol=1e-5)


class _GlobalPoolNet(nn.Module):
    def __init__(self, mean: bool) -> None:
        super().__init__()
        self.mean = mean
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 8, 3, 1, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.c1(x))
        b = F.relu(self.c2(a) + a)
        return self.fc(b.mean((2, 3)) if self.mean else torch.flatten(F.adaptive_avg_pool2d(b, 1), 1))


@pytest.mark.parametrize("mean", [False, True])
def test_global_average_pool_sums_a_padded_plane(mean: bool, compiler_cache) -> None:
    """The last conv writes its wide rows straight into a padded plane (no crop); the pool's
    sum over it counts the zero border for nothing."""
    torch.manual_seed(0)
    model = _GlobalPoolNet(mean).eval()
    x = torch.randn(2, 3, 11, 13)
    graph = lower_model(model, x[:1])
    [pool] = [op for op in graph.ops if op.kind == "pool"]
    assert pool.src in plan_padded(graph, resolve_isa().lanes, 1)
    cm = compile_model(model, x, cache_dir=compiler_cache)
    assert "crop(tid" not in kernel_source(cm)
    with torch.no_grad():
        ref = model(x)
    assert torch.allclose(cm.run(x), ref, rtol=1e-4, atol=1e-5)


class _AffineAdd(nn.Module):
    """A BatchNorm after an activation (an affine op: it cannot fold into the conv) and an add
    of two non-conv results (an eltwise op), both with the activation ``act``."""

    def __init__(self, act: str) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16)
        self.act = {"relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish}[act]
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.2, 2)
            self.bn.weight.uniform_(-3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.conv(x))
        b = self.act(self.bn(a))
        return self.act(b + 2 * a)


@pytest.mark.parametrize("act", ["relu", "relu6", "hardswish"])
@pytest.mark.parametrize("threads", [1, 2])
def test_affine_and_eltwise_activations_match_torch(act: str, threads: int,
                                                    compiler_cache) -> None:
    """Values on both sides of every clamp (inputs x 4: past 6 and below -3)."""
    torch.manual_seed(0)
    model = _AffineAdd(act).eval()
    x = 4 * torch.randn(1, 3, 64, 64)
    cm = compile_model(model, x, threads=threads, cache_dir=compiler_cache)
    assert {"affine", "eltwise"} <= {op.kind for op in cm.graph.ops}
    with torch.no_grad():
        ref = model(x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


def _skipped_block(cin: int, cout: int, stride: int, *skip: str) -> nn.Sequential:
    """A stem conv, then a ``Block`` whose convs ``skip`` are identities (as a plan's skip
    leaves them), its BatchNorms with random statistics."""
    torch.manual_seed(0)
    block = Block(cin, cout, stride)
    for name in skip:
        setattr(block, name, nn.Identity())
    for bn in block.modules():
        if isinstance(bn, nn.BatchNorm2d):
            with torch.no_grad():
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.2, 2)
                bn.weight.uniform_(-2, 2)
                bn.bias.uniform_(-1, 1)
    return nn.Sequential(nn.Conv2d(3, cin, 3, 1, 1), nn.ReLU(), block).eval()


def _assert_matches(model: nn.Module, threads: int, cache) -> None:
    x = 4 * torch.randn(1, 3, 16, 16)
    cm = compile_model(model, x, threads=threads, cache_dir=cache)
    with torch.no_grad():
        ref = model(x)
    assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4


@pytest.mark.parametrize("threads", [1, 2])
def test_batchnorms_and_add_of_a_skipped_block_run_as_one_affine_op(threads: int,
                                                                   compiler_cache) -> None:
    """Both convs skipped: BatchNorm, ReLU, BatchNorm, add and ReLU are one pass."""
    model = _skipped_block(16, 16, 1, "c1", "c2")
    graph = lower_model(model, torch.zeros(1, 3, 16, 16))
    [affine] = [op for op in graph.ops if op.kind == "affine"]
    assert not [op for op in graph.ops if op.kind == "eltwise"]
    assert len(affine.pre) == 1 and affine.pre[0].act == "relu"
    assert affine.res is not None and affine.act == "relu"
    _assert_matches(model, threads, compiler_cache)


def test_an_add_beside_a_conv_output_stays_in_the_conv_epilogue(compiler_cache) -> None:
    """``c2`` skipped in a downsampling block: the shortcut conv takes the add, as before
    affine ops could."""
    model = _skipped_block(16, 32, 2, "c2")
    graph = lower_model(model, torch.zeros(1, 3, 16, 16))
    [affine] = [op for op in graph.ops if op.kind == "affine"]
    assert affine.res is None and not affine.pre
    assert any(op.kind == "conv" and op.res is not None for op in graph.ops)
    _assert_matches(model, 1, compiler_cache)


def test_slices_of_every_step_in_order_compute_the_model(compiler_cache) -> None:
    """``seg_0_slice`` run over every step's slices on one thread is the model: the table
    ``benchmarks/bench_thread_sharing.py`` drives two threads with; ``seg_0_step_op`` names
    each step's op."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(16, 32, 1), nn.Flatten(), nn.Linear(32 * 8 * 8, 10)).eval()
    x = torch.randn(1, 3, 16, 16)
    cm = compile_model(model, x, threads=2, cache_dir=compiler_cache)
    lib, n = cm._lib, cm._lib.seg_0_nsteps()
    slices = [lib.seg_0_slices(s) for s in range(n)]
    assert max(slices) == 2 and lib.seg_0_slices(n) == 0
    owners = [lib.seg_0_step_op(s) for s in range(n)]  # each step's op, in program order
    assert owners == sorted(owners) and lib.seg_0_step_op(n) == -1
    assert {cm.program.op_kinds[k] for k in owners} >= {"conv", "pool"}
    assert cm.program.op_names[owners[-1]] == cm.program.op_names[-1]  # the Linear
    cm.view(cm.graph.input).copy_(x)
    out = cm.view(cm.graph.output)
    out.fill_(float("nan"))
    for s in range(n):
        for g in range(slices[s] if s < n - 1 else 1):
            lib.seg_0_slice(s, g, *cm._ptrs)
    assert slices[-1] == 2 and out.isnan().any()  # the Linear's second slice is still to run
    lib.seg_0_slice(n - 1, 1, *cm._ptrs)
    ref = model(x).reshape(-1)
    assert float((out.reshape(-1) - ref).abs().max() / ref.abs().max()) < 1e-4
