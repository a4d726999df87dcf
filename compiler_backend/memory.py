"""Activation arena planning: buffers whose lifetimes do not overlap share storage.

Giving every activation its own region made MobileNetV2's arena about 20 MB, so each layer
wrote to memory no cache held and the whole run thrashed L3. Here buffers are packed by
liveness (first to last op that touches them or an alias), the usual interval colouring.

Two buffers may share a slot only if their layouts agree on which floats are never written:
the zero borders of a padded plane (``layout.plan_padded``) and of the phase planes of a
phase-split buffer (``layout.plan_split2``) are written once (the arena starts zeroed) and
every producer writes only the interiors. So padded buffers share only with padded buffers of
the same plane size, phase-split ones only with the same channel count and plane, plain ones
with plain ones. The graph input and output, ``pinned`` buffers and buffers a PyTorch fallback
may return a view of keep a region of their own; buffers no op touches get none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compiler_backend.ir import FallbackOp, Graph
from compiler_backend.lowering import op_inputs

#: Floats after every region: wide-row and full-tile over-reads stay inside the arena.
SLACK = 256
_FOREVER = 1 << 62


def op_buffers(op: Any) -> list[int]:
    """Every buffer id ``op`` reads or writes."""
    dst = getattr(op, "dst", None)
    return op_inputs(op) + ([dst] if dst is not None else [])


def region_floats(numel: int) -> int:
    """Floats one region of ``numel`` takes (slack included, 64-byte multiple)."""
    return -(-(numel + SLACK) // 16) * 16


def plan_arena(graph: Graph, padded: set[int], split: set[int],
               also_reads: Mapping[int, set[int]] | None = None,
               private: bool = False) -> tuple[list[int], int]:
    """(offset of every buffer in floats, arena size in floats); ``also_reads``: op index ->
    buffers it reads besides its own (a fused kernel reading its producer's input);
    ``private``: every buffer a region of its own (``plan_threaded_arena``)."""
    bufs = graph.buffers

    def root(i: int) -> int:
        while (parent := bufs[i].alias_of) is not None:
            i = parent
        return i

    first: dict[int, int] = {}
    last: dict[int, int] = {}
    own = {root(graph.input), root(graph.output)} | {b.idx for b in bufs if b.pinned}
    for k, op in enumerate(graph.ops):
        ids = {root(i) for i in (*op_buffers(op), *(also_reads or {}).get(k, ()))}
        if isinstance(op, FallbackOp) and op.dst is None:
            own |= ids  # its result may be a view of them, used by later fallbacks
        for r in ids:
            first.setdefault(r, k)
            last[r] = k
    roots = [b.idx for b in bufs if b.alias_of is None and (b.idx in first or b.idx in own)]
    for r in roots:
        if r in own:
            first[r], last[r] = -1, _FOREVER

    def layout(r: int) -> tuple[Any, ...]:
        shape = bufs[r].shape
        if r in split:
            return ("split", *shape)
        if r in padded:
            return ("padded", *shape[1:])
        return ("plain",)

    slots: list[dict[str, Any]] = []  # key, size, free_after, members
    for r in sorted(roots, key=lambda r: (first[r], r)):
        need, key = region_floats(bufs[r].numel), layout(r)
        free = [] if private else [s for s in slots
                                   if s["key"] == key and s["free_after"] < first[r]]
        # the most recently freed slot: its lines are the likeliest to be in cache (MobileNetV2
        # at 4x ran 5 % faster than with the best-fitting slot, for a 6 % bigger arena)
        slot = max(free, key=lambda s: s["free_after"], default=None)
        if slot is None:
            slot = {"key": key, "size": 0, "free_after": -1, "members": []}
            slots.append(slot)
        slot["size"] = max(slot["size"], need)
        slot["free_after"] = last[r]
        slot["members"].append(r)
    offsets = [0] * len(bufs)  # buffers no op touches (folded away by lowering) take no room
    pos = 0
    for slot in slots:
        for r in slot["members"]:
            offsets[r] = pos
        pos += slot["size"]
    for b in bufs:
        offsets[b.idx] = offsets[root(b.idx)]
    return offsets, pos


#: Largest arena of private regions ``plan_threaded_arena`` takes (floats; 32 MB, the L3 here).
PRIVATE_ARENA_FLOATS = 8 << 20


def plan_threaded_arena(graph: Graph, padded: set[int], split: set[int],
                        also_reads: Mapping[int, set[int]] | None = None,
                        threads: int = 1) -> tuple[list[int], int]:
    """``plan_arena`` for ``threads``: with more than one, every buffer a region of its own
    while that arena stays under ``PRIVATE_ARENA_FLOATS``.

    A shared slot's lines were last written by whichever thread wrote its previous buffer, and
    a line the other core holds modified costs a cross-core transfer to write. With private
    regions every line is written by the same thread on every run. AMD Zen 4, 2 threads,
    same-process A/B: MobileNetV2 block 4x 0.893 of the time (its depthwise convs of
    ``features.4`` / ``.8`` had run slower at 2 threads than at 1: 13.5 -> 6.1 and 11.0 ->
    4.5 us), block 8x 0.964; ResNet-20 block 4x 0.936, 8x 0.931, pattern 8x 0.943; VGG-16
    block 8x 1.013. At 1 thread sharing stays (MobileNetV2 block 4x ran 1.026 with private
    regions: the slot just freed is the likeliest in cache).
    """
    if threads > 1:
        offsets, size = plan_arena(graph, padded, split, also_reads, private=True)
        if size <= PRIVATE_ARENA_FLOATS:
            return offsets, size
    return plan_arena(graph, padded, split, also_reads)
