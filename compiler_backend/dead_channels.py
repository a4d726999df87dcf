"""Dead-channel elimination: channels that no layer reads are never computed.

A block-pruned conv often keeps no weight at all on some of its input channels (MobileNetV2's
projection convs at block 8x16 8x: 98 of 144 in ``features.5``). Those channels of its input
are dead, and so are the producer's filters that compute them, and, through a depthwise conv
(channel c from channel c), the channels of the depthwise conv's own input. This pass finds
every buffer's live channels, backwards to a fixpoint, and cuts the buffers and the convs that
write and read them to those channels: the generated code never sees the dead ones, and the
output is unchanged (the dead channels met only pruned weights).

A buffer is cut only where every op that touches it can follow: it is written by a conv with
no fused residual and read only as the input of convs (so never by a residual add, a concat,
pooling, a fallback op, an alias, or as the model's output).
"""

from __future__ import annotations

import numpy as np

from compiler_backend.ir import ConvOp, Graph
from compiler_backend.layout import aliased, edges


def eliminate_dead_channels(graph: Graph) -> dict[str, tuple[int, int]]:
    """Cut the graph's buffers to their live channels (in place).

    Returns:
        Per conv whose output was cut: (output channels computed, the model's output channels).
    """
    live = live_channels(graph)
    cut = {b: np.flatnonzero(m) for b, m in live.items() if not m.all()}
    shrunk: dict[str, tuple[int, int]] = {}
    for op in graph.ops:
        if not isinstance(op, ConvOp):
            continue
        if op.dst in cut:
            rows = cut[op.dst]
            shrunk[op.name] = (len(rows), op.out_shape[0])
            op.weight, op.bias, op.kept = op.weight[rows], op.bias[rows], op.kept[rows]
            op.out_shape = (len(rows), *op.out_shape[1:])
        if op.src in cut:
            cols = cut[op.src]
            if op.groups == 1:
                op.weight, op.kept = op.weight[:, cols], op.kept[:, cols]
            else:  # depthwise: its rows were cut to the same channels above
                op.groups = len(cols)
            op.in_shape = (len(cols), *op.in_shape[1:])
    for b, chans in cut.items():
        buf = graph.buffers[b]
        buf.shape = (len(chans), *buf.shape[1:])
        buf.numel = int(np.prod(buf.shape))
    return shrunk


def live_channels(graph: Graph) -> dict[int, np.ndarray]:
    """Per buffer that may be cut, the bool mask of its channels some op needs (at least one:
    no buffer is left empty)."""
    need = {b: np.zeros(graph.buffers[b].shape[0], bool) for b in _cuttable(graph)}
    while True:
        _propagate(graph, need)
        empty = [b for b, m in need.items() if not m.any()]
        if not empty:
            return need
        for b in empty:
            need[b][0] = True


def _propagate(graph: Graph, need: dict[int, np.ndarray]) -> None:
    """Grow ``need`` backwards through the convs until nothing changes."""

    def take(b: int, mask: np.ndarray) -> bool:
        if b not in need:
            return False
        grown = need[b] | mask
        changed = bool((grown != need[b]).any())
        need[b] = grown
        return changed

    changed = True
    while changed:
        changed = False
        for op in reversed(graph.ops):
            if not isinstance(op, ConvOp):
                continue
            cout = op.out_shape[0]
            out = need.get(op.dst, np.ones(cout, bool))
            if op.groups == 1:
                reads = np.asarray(op.kept[out].any(axis=0)).reshape(op.in_shape[0], -1)
                changed |= take(op.src, np.asarray(reads.any(axis=1)))
            elif _depthwise(op) and op.src in need and op.dst in need:
                both = need[op.src] | out
                changed |= take(op.src, both) | take(op.dst, both)
            else:  # a grouped conv, or a depthwise one beside a buffer that stays whole
                changed |= take(op.src, np.ones(op.in_shape[0], bool))
                changed |= take(op.dst, np.ones(cout, bool))


def _cuttable(graph: Graph) -> set[int]:
    """Buffers written by a conv without residual and read only as convs' inputs."""
    _, readers = edges(graph)
    views = aliased(graph)
    return {op.dst for op in graph.ops
            if isinstance(op, ConvOp) and op.res is None and not op.is_linear
            and len(graph.buffers[op.dst].shape) == 3 and op.dst not in views
            and op.dst not in (graph.input, graph.output)
            and all(role == "src" for _, role in readers.get(op.dst, []))}


def _depthwise(op: ConvOp) -> bool:
    return op.groups == op.in_shape[0] == op.out_shape[0]
