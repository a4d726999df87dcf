"""Arena planning: buffers share storage only when their lifetimes and layouts allow it."""

from __future__ import annotations

import itertools

import pytest
import torch

from compiler_backend import compile_model, memory
from compiler_backend.codegen import _private_copy
from compiler_backend.compile import lower_model, resolve_isa
from compiler_backend.layout import plan_padded, plan_split2
from compiler_backend.memory import op_buffers, plan_arena, region_floats
from npas_env.zoo import build_model


def _plan(name: str) -> tuple:
    model = build_model(name).eval()
    graph = _private_copy(lower_model(model, torch.randn(1, 3, 32, 32)))
    padded = plan_padded(graph, resolve_isa().lanes, 1)
    split = plan_split2(graph, padded)
    offsets, size = plan_arena(graph, padded, split)
    return graph, padded, split, offsets, size


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "vgg16"])
def test_live_buffers_never_overlap_and_layouts_never_mix(name: str) -> None:
    graph, padded, split, offsets, size = _plan(name)
    bufs = graph.buffers
    span: dict[int, list[int]] = {}
    for k, op in enumerate(graph.ops):
        for i in op_buffers(op):
            span.setdefault(i, [k, k])[1] = k
    for i in (graph.input, graph.output):
        span[i] = [-1, len(graph.ops)]
    used = sorted(span)
    for a in used:
        for b in used:
            if a >= b or bufs[a].alias_of is not None or bufs[b].alias_of is not None:
                continue
            lo_a, hi_a = offsets[a], offsets[a] + region_floats(bufs[a].numel)
            lo_b, hi_b = offsets[b], offsets[b] + region_floats(bufs[b].numel)
            if lo_a < hi_b and lo_b < hi_a:  # storage overlaps
                assert span[a][1] < span[b][0] or span[b][1] < span[a][0], (a, b)
                assert (a in split) == (b in split) and (a in padded) == (b in padded)
                if a in padded:
                    assert bufs[a].shape[1:] == bufs[b].shape[1:] and lo_a == lo_b
                assert graph.input not in (a, b) and graph.output not in (a, b)
            assert hi_a <= size and hi_b <= size
    roots = [b for b in bufs if b.alias_of is None and b.idx in span]
    assert size < sum(region_floats(b.numel) for b in roots)  # something is shared


def test_mobilenet_arena_is_a_fraction_of_its_activations() -> None:
    graph, *_, size = _plan("mobilenetv2")
    total = sum(region_floats(b.numel) for b in graph.buffers if b.alias_of is None)
    assert size < total / 4


def test_repeated_runs_of_a_shared_arena_agree() -> None:
    """The input keeps its own region, so timing loops rerun on the same input."""
    model = build_model("mobilenetv2").eval()
    x = torch.randn(1, 3, 32, 32)
    cm = compile_model(model, x, {})
    with torch.no_grad():
        ref = model(x)
    first = cm.run(x)
    cm._run_sample()
    again = cm.view(cm.graph.output).clone().reshape(first.shape)
    assert torch.allclose(first, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(first, again)


def test_threaded_arena_gives_each_buffer_its_own_region(monkeypatch) -> None:
    """At 2 threads no two buffers share storage (a shared slot's lines were last written by
    either core); at 1 thread, or past the size cap, they share as before."""
    graph, padded, split, shared_offsets, shared_size = _plan("resnet20")
    offsets, size = memory.plan_threaded_arena(graph, padded, split, threads=2)
    used = {i for op in graph.ops for i in op_buffers(op)}
    spans = sorted((offsets[i], offsets[i] + region_floats(graph.buffers[i].numel))
                   for i in used if graph.buffers[i].alias_of is None)
    assert all(hi <= lo for (_, hi), (lo, _) in itertools.pairwise(spans))
    assert size > shared_size
    assert memory.plan_threaded_arena(graph, padded, split, threads=1) == (shared_offsets,
                                                                          shared_size)
    monkeypatch.setattr(memory, "PRIVATE_ARENA_FLOATS", size - 1)
    assert memory.plan_threaded_arena(graph, padded, split, threads=2) == (shared_offsets,
                                                                          shared_size)
