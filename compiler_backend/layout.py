"""Buffer layouts: which activations live in a zero-padded plane so no conv copies its input.

A buffer ``(C, h, w)`` is *padded* when it is stored as ``C x (h + 2) x (w + 2)`` with a zero
border. Its producer conv then writes straight into the interior (a wide-row 3x3 / stride-1 /
pad-1 conv stores its rows shifted by ``wq + 1`` and zeroes the two junk columns per row;
other convs write through their crop epilogue), and every stride-1 / pad-1 consumer conv reads
it in place instead of copying it into a padded scratch buffer.

A buffer is padded only if every reader understands the layout: stride-1 / pad-(1, 1) convs
reading it as input, and convs with a wide-row output reading it as residual. Graph inputs and
outputs, aliases, fallbacks, pooling, eltwise and concat readers keep the plain CHW layout.
"""

from __future__ import annotations

from typing import Any

from compiler_backend.heuristics import conv_geometry
from compiler_backend.ir import ConvOp, Graph
from compiler_backend.lowering import op_inputs


def reads_padded(op: ConvOp) -> bool:
    """``op`` can read its input from a padded buffer in place."""
    return (not op.is_linear and op.stride == 1 and tuple(op.padding) == (1, 1)
            and len(op.in_shape) == 3)


def writes_wide_padded(op: ConvOp) -> bool:
    """``op``'s wide rows (width ``w + 2``) map 1:1 onto a padded output plane."""
    return reads_padded(op) and op.out_shape[1:] == op.in_shape[1:]


def plan_padded(graph: Graph) -> set[int]:
    """Ids of the buffers stored padded (see the module docstring); sets their ``numel``."""
    producers: dict[int, Any] = {}
    for op in graph.ops:
        dst = getattr(op, "dst", None)
        if dst is not None:
            producers[dst] = op
    readers: dict[int, list[tuple[Any, str]]] = {}
    for op in graph.ops:
        if isinstance(op, ConvOp):
            readers.setdefault(op.src, []).append((op, "src"))
            if op.res is not None:
                readers.setdefault(op.res, []).append((op, "res"))
        else:
            for b in op_inputs(op):
                readers.setdefault(b, []).append((op, "other"))
    blocked = {graph.input, graph.output}
    blocked.update(b.alias_of for b in graph.buffers if b.alias_of is not None)
    padded: set[int] = set()
    for buf, prod in producers.items():
        if buf in blocked or not isinstance(prod, ConvOp) or prod.is_linear:
            continue
        if len(graph.buffers[buf].shape) != 3 or conv_geometry(prod)["direct"]:
            continue
        ok = bool(readers.get(buf))
        for reader, role in readers.get(buf, []):
            if role == "src":
                ok &= reads_padded(reader)
            elif role == "res":
                ok &= not conv_geometry(reader)["direct"]
            else:
                ok = False
        if ok:
            padded.add(buf)
    for buf in padded:
        c, h, w = graph.buffers[buf].shape
        graph.buffers[buf].numel = c * (h + 2) * (w + 2)
    return padded


def strides(graph: Graph, buf: int, padded: set[int]) -> tuple[int, int, int]:
    """(channel stride, row stride, offset of pixel (0, 0)) of buffer ``buf``."""
    c, h, w = graph.buffers[buf].shape
    if buf in padded:
        return (h + 2) * (w + 2), w + 2, w + 3
    return h * w, w, 0
