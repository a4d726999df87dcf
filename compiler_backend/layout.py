"""Buffer layouts: which activations live in a zero-padded plane so no conv copies its input.

A buffer ``(C, h, w)`` is *padded* when it is stored as ``C x (h + 2) x (w + 2)`` with a zero
border. Its producer conv then writes straight into the interior (a wide-row 3x3 / stride-1 /
pad-1 conv stores its rows shifted by ``wq + 1`` and zeroes the two junk columns per row;
other convs write through their crop epilogue), and every stride-1 / pad-1 consumer conv reads
it in place instead of copying it into a padded scratch buffer.

A buffer is padded only if every reader understands the layout: stride-1 / pad-(1, 1) convs,
pointwise (1x1 / stride-1) convs and the stride-2 depthwise kernel (any layout) reading it as
input, convs with a wide-row output reading it as residual, and max / average pools (which
also write either layout: VGG-16's conv -> pool -> conv then needs neither a crop nor a pad
copy), and global average pooling. Graph inputs and outputs, aliases, fallbacks, other
adaptive pooling, eltwise and concat readers keep the plain CHW layout. Pointwise
convs run over the padded rows of a padded input (``conv_geometry(op, padded_src=True)``),
junk columns included, so a MobileNet chain 1x1 -> depthwise 3x3 -> 1x1 can stay padded end
to end with no copy or crop; on small maps, where the junk columns cost more (8x8: 25 %), the
buffers only pointwise convs read stay plain and the expand convs store their rows straight
into the depthwise conv's padded input (``_worth_padding``).

A third layout, *phase-split* (``plan_split2``), serves buffers read only by stride-2 convs.
The maps of convs taking the masked family (``plan_masked``) stay plain: their tiles read the
padding as masked-off lanes. With AVX-512 that includes MobileNetV2's 8x8 depthwise convs
(``depthwise.masked_dw_template``), so its 8x8 blocks run plain end to end (block 8x, 1
thread, AMD Zen 4: 763 -> 666 us for the model, same-process A/B).
"""

from __future__ import annotations

import math
from typing import Any

from compiler_backend.depthwise import plane4_writes_plain
from compiler_backend.heuristics import (
    conv_geometry,
    gathers_taps,
    is_depthwise_s2,
    is_pointwise,
    split2_geometry,
    suits_masked,
    takes_winograd,
)
from compiler_backend.ir import ConvOp, Graph, PoolOp
from compiler_backend.lowering import op_inputs


def _pad1(op: ConvOp) -> bool:
    return (not op.is_linear and op.stride == 1 and tuple(op.padding) == (1, 1)
            and len(op.in_shape) == 3)


def reads_padded(op: ConvOp) -> bool:
    """``op`` can read its input from a padded buffer in place."""
    return _pad1(op) or is_pointwise(op) or is_depthwise_s2(op)


def writes_wide_padded(op: ConvOp, src_padded: bool = False, src_split: bool = False) -> bool:
    """``op``'s wide output rows are ``ow + 2`` wide, so they map 1:1 onto a padded output plane.

    True for stride-1 / pad-1 convs that keep the map size, for pointwise convs whose input
    is padded (they run over the padded rows) and for stride-2 convs reading a phase-split
    input; the two junk columns per row land on the zero border (``BORDER_TEMPLATE``).
    """
    if op.is_linear or len(op.in_shape) != 3:
        return False
    geo = conv_geometry(op, src_padded, src_split)
    oh, ow = op.out_shape[1:]
    return geo["wq"] == ow + 2 and geo["T"] == oh * geo["wq"]


def _strided_pool(op: Any) -> bool:
    """A max / average pool: it reads and writes either layout (``simple_ops.emit_pool``)."""
    return isinstance(op, PoolOp) and op.op in ("max", "avg")


def _reads_any_layout(op: Any, graph: Graph) -> bool:
    """A pool that reads either layout: max / average, or global average (to ``[C, 1, 1]`` or
    ``[C]``), whose sum over a padded plane counts its zero border for nothing."""
    if _strided_pool(op):
        return True
    out = graph.buffers[op.dst].shape if isinstance(op, PoolOp) else ()
    return op.op == "adaptive_avg" and math.prod(out) == out[0] if out else False


#: Multiply-adds of a pointwise conv's junk columns that cost about as much as one row of a crop
#: pass (``_worth_padding``). AVX-512 host, 1 thread: a crop pass takes about 3 ns a row for
#: rows of 4 to 16 floats (MobileNetV2: 960 x 4 rows of 4 in 12.4 us, 192 x 16 rows of 16 in
#: 9.0 us), pointwise tiles run about 50 G multiply-adds/s.
JUNK_MACS_PER_CROP_ROW = 150
#: What one more step costs with worker threads, in crop rows: the threads meet after every
#: step (about 1.2 us; MobileNetV2 block 4x at 2 threads ran 0.737 -> 0.764 ms when seven
#: blocks each gained a crop step for fewer junk columns).
STEP_ROWS = 400


def _junk_rows(op: ConvOp) -> float:
    """What a pointwise conv's two junk columns per row cost it on a padded input, in crop
    rows: its kept weights x ``2 * oh`` junk pixels (an 8x8 map: 25 % more work)."""
    return float(op.kept.sum()) * 2 * op.out_shape[1] / JUNK_MACS_PER_CROP_ROW


def _gathers(op: ConvOp, lanes: int) -> bool:
    """A pointwise conv that copies a padded input into per-tap planes (``gathers_taps``: a
    4x4 map with 16 lanes) rather than running over its padded rows."""
    return is_pointwise(op) and gathers_taps(op, lanes, padded_src=True)


def _row_stores(op: ConvOp, lanes: int) -> bool:
    """A pointwise conv on a plain input can write a padded output: its rows divide a vector
    (``spatial_template(row_store=...)``) and it has no residual."""
    return op.res is None and lanes % op.out_shape[2] == 0


def _worth_padding(prod: ConvOp | PoolOp, readers: list[tuple[Any, str]], padded: set[int],
                   lanes: int, threads: int) -> bool:
    """Whether a padded buffer saves more than it costs (counted in rows of crop passes).

    Read by pools only, it pays where its producer writes wide rows and would crop them
    otherwise (not a pointwise conv: MobileNetV2's last one lost 4 us over 36 instead of 16
    pixels per channel, and its pool 1.4 us more). A pool producer pays where a reader reads
    it in place. A pointwise producer writes it in place from a padded input, or from a plain
    one when its rows divide a vector (``spatial_template(row_store=...)``). Where only
    pointwise convs read it, it stays padded only if what it costs them (their junk columns,
    ``_junk_rows``, and the crops of those that then write a plain output) is at most what it
    saves: the crop its producer (a wide-row writer) would need to write it plain, and those of
    residual readers that write a padded output from wide rows (MobileNetV2 unpruned, 1 thread:
    1.87 -> 1.75 ms once its 8x8 1x1 convs stopped doing 25 % junk work to spare smaller crops).
    A pointwise reader that gathers a padded 4x4 input into per-tap planes (``_gathers``) pays
    a copy pass instead of junk columns, and a crop of the padded output it would otherwise
    store by rows (MobileNetV2's 4x4 blocks at 2 threads, block 8x: their depthwise and block
    outputs had kept each other padded, a copy and a crop per block; model 0.91-0.95 of the
    time, pattern 8x 0.93-0.94).
    """
    if all(role == "other" for _, role in readers):  # pools only: it can only save a crop
        return (isinstance(prod, ConvOp) and not is_pointwise(prod)
                and writes_wide_padded(prod, prod.src in padded))
    if isinstance(prod, PoolOp):
        return any(role != "src" or not is_pointwise(r) for r, role in readers)
    _, oh, ow = prod.out_shape
    if is_pointwise(prod) and prod.src not in padded and not _row_stores(prod, lanes):
        return False
    # a conv reader needs the layout, reads a padded residual for free, or writes its padded
    # output only from a padded input (pools read either layout)
    if any(isinstance(r, ConvOp) and (not is_pointwise(r) or role == "src" and r.dst in padded
                                      and not _row_stores(r, lanes))
           for r, role in readers):
        return True
    step = STEP_ROWS if threads > 1 else 0

    def crops(convs: list[ConvOp]) -> float:
        return sum(oh * c.out_shape[0] + step for c in convs)

    src = [r for r, role in readers if role == "src"]
    res = [r for r, role in readers if role == "res"]
    # a gathering reader pays a copy pass over the map (as many rows as a crop of it), and a
    # crop of a padded output it would otherwise store by rows
    gather: list[ConvOp] = []
    wide_src: list[ConvOp] = []
    for r in src:
        (gather if _gathers(r, lanes) else wide_src).append(r)
    cost = sum(oh * r.in_shape[0] + step for r in gather) + crops(
        [r for r in gather if r.dst in padded and _row_stores(r, lanes)])
    cost += sum(map(_junk_rows, wide_src)) + crops(
        [r for r in wide_src if r.dst not in padded and (r.res is None or r.res not in padded)])
    saved = crops([r for r in res if r.src in padded and r.dst in padded])
    # (a stride-2 reader of phase planes writes wide rows whether or not its input is stored
    # phase-split: ``plan_split2`` comes later, a copy makes the phases otherwise)
    wide = writes_wide_padded(prod, prod.src in padded, reads_split2(prod))
    if wide and not plane4_writes_plain(prod, lanes):
        saved += crops([prod])
    return cost <= saved


def edges(graph: Graph) -> tuple[dict[int, Any], dict[int, list[tuple[Any, str]]]]:
    """Producer op of every buffer, and its readers with their role (src / res / other)."""
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
    return producers, readers


def aliased(graph: Graph) -> set[int]:
    """Buffers that are views of another buffer (a flatten, a concat's part), and the buffers
    they view."""
    views = {b.idx for b in graph.buffers if b.alias_of is not None}
    return views | {b.alias_of for b in graph.buffers if b.alias_of is not None}


def _blocked(graph: Graph) -> set[int]:
    blocked = {graph.input, graph.output}
    blocked.update(b.alias_of for b in graph.buffers if b.alias_of is not None)
    return blocked


def writes_padded(prod: Any) -> bool:
    """``prod`` can write its output padded: a conv (not a linear, not a direct one) or a max /
    average pool."""
    return _strided_pool(prod) or (isinstance(prod, ConvOp) and not prod.is_linear
                                   and (not conv_geometry(prod)["direct"] or is_pointwise(prod)))


def reads_padded_as(reader: Any, role: str, graph: Graph) -> bool:
    """``reader`` reads a padded buffer in the ``role`` "res" (a conv writing through wide rows
    or a pointwise one) or "other" (pools: ``_reads_any_layout``). For "src" see
    ``reads_padded``."""
    if role == "res":
        return is_pointwise(reader) or not conv_geometry(reader)["direct"]
    return _reads_any_layout(reader, graph)


def plan_masked(graph: Graph, lanes: int, threads: int = 1) -> set[str]:
    """Names of the convs that take the masked family (``compiler_backend.masked``), whose
    input, residual and output then stay plain.

    A conv suited to it (``heuristics.suits_masked``) and not taking Winograd at ``threads``
    (``heuristics.takes_winograd``) takes it only if every other conv
    reading one of its maps takes it too, or reads its input in any layout (pointwise convs,
    the stride-2 depthwise kernel): a conv needing one of them padded or phase-split would
    otherwise pay a copy (VGG-16 block 4x, when only its first 8x8 layer could take it:
    83 -> 73 us for that layer, 162 -> 179 us for the next one behind a pad copy).
    MobileNetV2's 8x8 blocks (pointwise, masked depthwise, pointwise) so run plain: four
    vectors per map instead of five wide ones.
    """
    _, readers = edges(graph)
    convs = [op for op in graph.ops if isinstance(op, ConvOp)]
    chosen = {op.name for op in convs
              if suits_masked(op, lanes) and not takes_winograd(op, lanes, threads)}
    changed = True
    while changed:
        drop = {op.name for op in convs if op.name in chosen and any(
            isinstance(r, ConvOp) and r.name not in chosen
            and not (role == "src" and (is_pointwise(r) or is_depthwise_s2(r)))
            for buf in (op.src, op.res, op.dst) if buf is not None
            for r, role in readers.get(buf, []))}
        chosen -= drop
        changed = bool(drop)
    return chosen


def plan_padded(graph: Graph, lanes: int, threads: int,
                masked: set[str] | None = None) -> set[int]:
    """Ids of the buffers stored padded (see the module docstring) for vectors of ``lanes``
    floats and ``threads`` threads; sets their ``numel``. Maps of convs taking the masked
    family (``masked``, else ``plan_masked``) stay plain."""
    producers, readers = edges(graph)
    blocked = _blocked(graph)
    masked = plan_masked(graph, lanes, threads) if masked is None else masked
    padded: set[int] = set()
    for buf, prod in producers.items():
        if buf in blocked or len(graph.buffers[buf].shape) != 3:
            continue
        if not writes_padded(prod) or getattr(prod, "name", None) in masked:
            continue
        ok = bool(readers.get(buf))
        for reader, role in readers.get(buf, []):
            if isinstance(reader, ConvOp) and reader.name in masked:
                ok = False
            elif role == "src":
                ok &= reads_padded(reader)
            else:
                ok &= reads_padded_as(reader, role, graph)
        if ok:
            padded.add(buf)
    # drop layouts that cost more copies than they save, until none drops out
    changed = True
    while changed:
        drop = {buf for buf in padded
                if not _worth_padding(producers[buf], readers[buf], padded, lanes, threads)}
        padded -= drop
        changed = bool(drop)
    for buf in padded:
        c, h, w = graph.buffers[buf].shape
        graph.buffers[buf].numel = c * (h + 2) * (w + 2)
    return padded


def reads_split2(op: ConvOp) -> bool:
    """``op`` can read a phase-split buffer in place (3x3 / s2 / p1: all four phases; 1x1 / s2
    / p0: phase (1, 1), which holds the even rows and columns)."""
    if op.is_linear or len(op.in_shape) != 3 or op.stride != 2 or is_depthwise_s2(op):
        return False
    k, pad = tuple(op.weight.shape[2:]), tuple(op.padding)
    return (k, pad) in (((3, 3), (1, 1)), ((1, 1), (0, 0)))


def plan_split2(graph: Graph, padded: set[int]) -> set[int]:
    """Ids of the buffers stored *phase-split* for stride-2 readers; sets their ``numel``.

    A stride-2 / pad-1 conv reads its input as four phase planes (even / odd padded rows x
    even / odd padded columns), normally made by a copy (``pad_split2``). When every reader of
    a conv's output is such a conv (or a 1x1 stride-2 shortcut, which reads phase (1, 1)), the
    producer's crop epilogue writes the phases directly and no reader copies its input.
    """
    producers, readers = edges(graph)
    blocked = _blocked(graph) | padded
    split: set[int] = set()
    for buf, prod in producers.items():
        if buf in blocked or not isinstance(prod, ConvOp) or prod.is_linear:
            continue
        rd = readers.get(buf, [])
        if (len(graph.buffers[buf].shape) == 3 and rd
                and all(role == "src" and reads_split2(r) for r, role in rd)
                and any(tuple(r.weight.shape[2:]) == (3, 3) for r, _ in rd)):
            split.add(buf)
    for buf in split:
        c, h, w = graph.buffers[buf].shape
        hq, wq = split2_geometry(h, w)
        graph.buffers[buf].numel = 4 * c * hq * wq
    return split


def strides(graph: Graph, buf: int, padded: set[int]) -> tuple[int, int, int]:
    """(channel stride, row stride, offset of pixel (0, 0)) of buffer ``buf``."""
    c, h, w = graph.buffers[buf].shape
    if buf in padded:
        return (h + 2) * (w + 2), w + 2, w + 3
    return h * w, w, 0
