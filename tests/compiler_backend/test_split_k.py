"""Split-K pointwise convs at two threads (``compiler_backend.split_k``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from compiler_backend import compile_model, split_k
from compiler_backend.ir import ConvOp
from compiler_backend.threads import FixedThreads

from .test_fastpaths import _ref
from .test_fusion import inverted_block, sparse_expand_masks


def _families(cm) -> dict[str, str]:
    return {layer.name: layer.family for layer in cm.report.layers}


def _check(cm, model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor) -> None:
    """Equal to the masked model in PyTorch, on both threads and on one (the 2-thread
    library's slices in sequence)."""
    ref = _ref(model, masks, x)
    for threads in (2, 1):
        cm.thread_policy = FixedThreads(threads)
        assert float((cm.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4, threads


@pytest.mark.parametrize(("h", "w", "res"), [(8, 8, True), (8, 8, False), (5, 8, True)])
def test_project_conv_after_a_fused_pair_splits_by_input_channels(h: int, w: int, res: bool,
                                                                  compiler_cache) -> None:
    """At two threads the project conv after ``exdw`` runs as two partial convs over the
    channels each thread's groups wrote, then a sum; with and without the residual, on a
    padded or plain output."""
    model = inverted_block(res)
    masks = sparse_expand_masks(model, 3)
    x = torch.randn(2, 3, h, w)
    cm = compile_model(model, x, masks, threads=2, cache_dir=compiler_cache)
    families = _families(cm)
    assert families["dw"] == "exdw"
    assert families["project"].endswith("split-k")
    _check(cm, model, masks, x)


class MaskedTail(nn.Module):
    """Expand, depthwise and project on a 4x4 map (the depthwise conv takes the masked
    kernel: its rows are shorter than a vector)."""

    def __init__(self, c: int = 16, e: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 1, 1)
        self.expand = nn.Conv2d(c, c * e, 1)
        self.dw = nn.Conv2d(c * e, c * e, 3, 1, 1, groups=c * e)
        self.project = nn.Conv2d(c * e, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.stem(x))
        return self.project(torch.relu(self.dw(torch.relu(self.expand(a))))) + a


def test_project_conv_after_the_masked_depthwise_kernel_splits(compiler_cache) -> None:
    torch.manual_seed(0)
    model = MaskedTail().eval()
    x = torch.randn(2, 3, 4, 4)
    cm = compile_model(model, x, threads=2, cache_dir=compiler_cache)
    families = _families(cm)
    if families["dw"] != "masked":
        pytest.skip(f"the depthwise conv takes {families['dw']} on this ISA")
    assert families["project"].endswith("split-k")
    _check(cm, model, {}, x)


@pytest.mark.parametrize("case", ["one thread", "large map", "activation"])
def test_split_k_applies_only_where_it_pays_and_is_exact(case: str, compiler_cache) -> None:
    """Not split: at one thread, on maps of more than ``MAX_PIXELS`` pixels, or with an
    activation after the conv (the partial sums would not add up)."""
    model = inverted_block(True)
    masks = sparse_expand_masks(model, 3)
    x = torch.randn(1, 3, 16 if case == "large map" else 8, 8)
    if case == "activation":
        model.project = nn.Sequential(model.project, nn.ReLU())
        masks = {"project.0" if k == "project" else k: v for k, v in masks.items()}
    cm = compile_model(model, x, masks, threads=1 if case == "one thread" else 2,
                       cache_dir=compiler_cache)
    name = "project.0" if case == "activation" else "project"
    assert not _families(cm)[name].endswith("split-k")


def _pointwise(kept: np.ndarray, act: str | None = None) -> ConvOp:
    cout, cin = kept.shape[:2]
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal(kept.shape) * kept).astype(np.float32)
    return ConvOp("p", 0, 1, weight, rng.standard_normal(cout).astype(np.float32), kept,
                  (cin, 8, 8), (cout, 8, 8), act=act, res=2)


def test_halves_add_up_to_the_conv() -> None:
    """Thread 0's half keeps the bias and the residual, thread 1's writes the scratch; their
    weights split the conv's kept entries between them."""
    rng = np.random.default_rng(1)
    op = _pointwise(rng.random((6, 10, 1, 1)) < 0.6)
    first = split_k.first_of_channels(10)
    a, b = split_k.halves(op, first, scratch=7)
    assert not (a.kept & b.kept).any() and ((a.kept | b.kept) == op.kept).all()
    np.testing.assert_array_equal(a.weight + b.weight, op.weight)
    assert not a.kept[:, ~first].any() and not b.kept[:, first].any()
    assert (a.dst, a.res, b.dst, b.res) == (op.dst, op.res, 7, None)
    np.testing.assert_array_equal(a.bias, op.bias)
    assert not b.bias.any()


def test_eligibility() -> None:
    kept = np.ones((6, 10, 1, 1), bool)
    first = split_k.first_of_channels(10)
    op = _pointwise(kept)
    assert split_k.eligible(op, first)
    assert not split_k.eligible(op, None)  # nobody recorded who wrote the input
    assert not split_k.eligible(_pointwise(kept, act="relu"), first)
    only_first = kept & first[None, :, None, None]
    assert not split_k.eligible(_pointwise(only_first), first)  # one thread's half is empty
    big = dataclasses.replace(op, in_shape=(10, 16, 8), out_shape=(6, 16, 8))
    assert not split_k.eligible(big, first)


def test_first_of_groups_takes_the_first_half_of_the_groups() -> None:
    """Slot channels of 3 groups of 4 (-1 in the last group's tail): slice 0 of 2 gets group 0."""
    channels = np.array([5, 0, 7, 2, 1, 3, 8, 4, 6, 9, -1, -1])
    first = split_k.first_of_groups(channels, 4, 10)
    assert np.flatnonzero(first).tolist() == [0, 2, 5, 7]
