"""Banded execution: two threads, each running the convolutional trunk on its own half of the rows.

The usual 2-thread program splits every layer between the threads. A thread's share of each
map then sits between the other's shares, plane after plane, and every layer moves lines
between the cores: the halo rows, and the lines the hardware prefetchers fetch past each share
(``benchmarks/bench_thread_sharing.py``: ResNet-20 block 8x lost 27 % of its 2-thread time to
that on AMD Zen 4). Here each thread owns a *band*: the top or bottom half of every map of
the trunk, stored as a map of its own in an arena of its own. The trunk is compiled once at
band height for one thread; both threads run it, each on its arena. After every op whose
output a 3x3 conv reads, each band copies the one row the other band needs into a mailbox,
and the reader copies it into its map's border row (the *halo*, which the padded and
phase-split layouts already keep around every map) before its 3x3 conv. The global average
pool ends the trunk: its two band means are averaged, and the rest (the classifier) runs on
thread 0.

A graph runs banded when its trunk is convs (kernel 1 or 3), pools whose windows do not
overlap, element-wise and affine ops and concats, up to one global average pool that every
later op depends on only through its output; the band height must divide by every stride,
and each map a 3x3 conv reads must be one the band layouts can give a border row.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from compiler_backend.heuristics import split2_geometry
from compiler_backend.ir import AffineOp, ConcatOp, ConvOp, EltwiseOp, Graph, PoolOp
from compiler_backend.layout import edges, reads_padded_as, writes_padded
from compiler_backend.lowering import op_inputs
from npas_env.errors import InvalidConfig

#: Threads (and bands) of a banded program.
BANDS = 2
#: Floats between the two band arenas (eight lines): the prefetchers of one band's last lines
#: stop short of the other's first ones.
BAND_GAP = 128
#: Floats between the two directions' mailboxes (a 4 KB page).
MAIL_GAP = 1024


@dataclass(frozen=True)
class BandPlan:
    """How ``graph`` (lowered at band height) runs banded.

    Attributes:
        rows: input rows per band.
        head: ops ``[0, head)`` run on each band; op ``head - 1`` is the global average pool.
        band_input: the band's own copy of its input rows (halo rows included), stored padded.
        full_input: the whole input image, ``graph.input`` (read by both bands).
    """

    rows: int
    head: int
    band_input: int
    full_input: int


def _global_pool(op: object, graph: Graph) -> bool:
    if not isinstance(op, PoolOp) or op.op not in ("avg", "adaptive_avg"):
        return False
    src, dst = graph.buffers[op.src].shape, graph.buffers[op.dst].shape
    return len(src) == 3 and math.prod(dst) == src[0]


def _trunk_problem(op: object, graph: Graph) -> str | None:
    """Why ``op`` cannot run on a band, or None."""
    if isinstance(op, ConvOp):
        if op.is_linear or len(op.in_shape) != 3:
            return "a linear layer before the global average pool"
        kh = op.weight.shape[2]
        if kh not in (1, 3) or op.padding[0] != (kh - 1) // 2:
            return f"a conv with kernel height {kh} and padding {op.padding[0]}"
        if op.in_shape[1] % op.stride:
            return f"a stride-{op.stride} conv on a band of {op.in_shape[1]} rows"
        return None
    if isinstance(op, PoolOp):
        if op.op not in ("max", "avg") or op.kernel != op.stride or op.padding != (0, 0):
            return f"a {op.op} pool whose windows overlap or are padded"
        if graph.buffers[op.src].shape[1] % op.stride[0]:
            return f"a stride-{op.stride[0]} pool on a band of odd rows"
        return None
    if isinstance(op, (EltwiseOp, AffineOp, ConcatOp)):
        return None
    return f"a {getattr(op, 'kind', type(op).__name__)} op (it may run through PyTorch)"


def plan_bands(graph: Graph, full_shape: tuple[int, int, int]) -> BandPlan:
    """Check that ``graph`` (lowered at band height) runs banded; add the whole-image input.

    Raises:
        InvalidConfig: naming the op or map that does not fit, and what would.
    """
    c, h, w = full_shape
    rows = h // BANDS
    if graph.buffers[graph.input].shape != (c, rows, w) or h % BANDS:
        raise InvalidConfig(f"banded execution splits the input rows in {BANDS}: an input of "
                            f"{h} rows needs a graph lowered at {rows} rows")
    pools = [k for k, op in enumerate(graph.ops) if _global_pool(op, graph)]
    if not pools:
        raise InvalidConfig("banded execution needs a global average pool ending the "
                            "convolutional trunk; compile this model without bands")
    head = pools[0] + 1
    for op in graph.ops[:head - 1]:
        if (problem := _trunk_problem(op, graph)) is not None:
            raise InvalidConfig(f"banded execution cannot run {getattr(op, 'name', op)}: "
                                f"{problem}; compile this model without bands")
    trunk = {b for op in graph.ops[:head - 1] for b in (*op_inputs(op), op.dst)}
    for op in graph.ops[head:]:
        if set(op_inputs(op)) & trunk:
            raise InvalidConfig(f"banded execution: {getattr(op, 'name', op)} reads a map of the "
                                "trunk after the global average pool; compile without bands")
    band_input = graph.input
    graph.input = graph.new_buffer(full_shape)
    return BandPlan(rows, head, band_input, graph.input)


def halo_buffers(graph: Graph, plan: BandPlan) -> set[int]:
    """Maps of the trunk a 3x3 conv reads: each band needs the other's edge row of them."""
    return {op.src for op in graph.ops[:plan.head] if isinstance(op, ConvOp)
            and op.weight.shape[2] == 3}


def halo_problem(graph: Graph, buf: int, laid_out: bool) -> str | None:
    """Why map ``buf``, which a 3x3 conv reads, cannot carry a halo row, or None.

    It must be stored padded or phase-split (``laid_out``), or else be one that can be stored
    padded (``layout.writes_padded``, ``layout.reads_padded_as``); every conv reads a padded
    input, in place or through a prologue that copies the border too. (The global average
    pool, which sums a padded plane border and all, never reads one: it ends the trunk, so a
    3x3 conv reading the same map would have no reader.)
    """
    if laid_out:
        return None
    producers, readers = edges(graph)
    prod = producers.get(buf)
    if prod is not None and not writes_padded(prod):
        return f"its producer {prod.name} writes plain maps only"
    for reader, role in readers.get(buf, []):
        if role != "src" and not reads_padded_as(reader, role, graph):
            return f"{reader.name} reads it and needs it plain"
    return None


@dataclass(frozen=True)
class Push:
    """Rows band ``band`` hands to the other band after writing them: ``channels`` runs of
    ``floats`` floats, ``stride`` apart, from ``offset + src`` in its arena to ``offset + dst``
    in the other's, through the mailbox at arena offset ``mail`` (``plan_mailboxes``)."""

    band: int
    offset: int
    channels: int
    stride: int
    floats: int
    src: int
    dst: int
    mail: int = -1


def pushes(graph: Graph, buf: int, offset: int, split: bool) -> list[Push]:
    """The halo pushes of ``buf`` at arena ``offset``: padded, each band's edge row into the
    other's border row (its ``w`` real pixels: the border columns stay zero, and leaving them
    out touches fewer lines: ResNet-20 block 8x 102.5-103.0 against 103.2-105.0 us, 153.8
    against 160.7 placed far); phase-split (read by stride-2 convs, which need only the row
    above a band), band 0's last row into band 1's top border row, in both column phases."""
    c, h, w = graph.buffers[buf].shape
    if split:
        hq, wq = split2_geometry(h, w)
        plane = hq * wq
        return [Push(0, offset + b * c * plane, c, plane, wq, (h // 2) * wq, 0) for b in (0, 1)]
    row = w + 2
    plane = (h + 2) * row
    return [Push(0, offset, c, plane, w, h * row + 1, 1),
            Push(1, offset, c, plane, w, row + 1, (h + 1) * row + 1)]


def plan_mailboxes(items: list[Push], start: int) -> tuple[list[Push], int]:
    """``items`` (in their order) with their mailboxes: each a line-aligned run of
    ``channels * floats`` floats from arena offset ``start`` (past both bands), band 0's first,
    band 1's ``MAIL_GAP`` floats after them. Returns them and the end of the mailboxes.

    A band used to write its rows straight into the other's border rows. Those share lines
    with the reader's own rows, which the reader may be writing at that moment, so the lines
    moved between the cores more than once. A mailbox's lines are only ever written by the
    writer and read by the reader. ResNet-20 at 2 threads, AMD Zen 4 under AVX2, same process,
    two rounds with ORT: block 8x 103.2 -> 98.9 and 104.7 -> 100.2 us, block 4x 176.9 -> 170.3
    and 184.2 -> 171.9, dense 472 -> 476.
    """
    out, at = list(items), start
    for band in (0, 1):
        for i, p in enumerate(items):
            if p.band == band:
                out[i] = dataclasses.replace(p, mail=at)
                at += -(-p.channels * p.floats // 16) * 16
        at += MAIL_GAP
    return out, at


def push_source(name: str, band_floats: int, items: list[Push]) -> str:
    """C function ``name(b, A)``: band ``b`` copies its rows of ``items`` into their mailboxes."""
    lines = [f"  if (b == {p.band}) for (int c = 0; c < {p.channels}; ++c) "
             f"memcpy(A + {p.mail} + c * {p.floats}, "
             f"A + {p.band * band_floats + p.offset + p.src} + (long)c * {p.stride}, "
             f"{p.floats} * sizeof(float));" for p in items]
    return _band_function(name, lines)


def pull_source(name: str, band_floats: int, items: list[Push]) -> str:
    """C function ``name(b, A)``: band ``b`` copies the other band's rows of ``items`` from their
    mailboxes into its border rows."""
    lines = [f"  if (b == {1 - p.band}) for (int c = 0; c < {p.channels}; ++c) "
             f"memcpy(A + {(1 - p.band) * band_floats + p.offset + p.dst} + (long)c * {p.stride}, "
             f"A + {p.mail} + c * {p.floats}, {p.floats} * sizeof(float));" for p in items]
    return _band_function(name, lines)


def _band_function(name: str, lines: list[str]) -> str:
    return f"static void {name}(int b, float* restrict A) {{\n" + "\n".join(lines) + "\n}\n"


#: After each op of a band step: its time on the band thread 0 runs (``segments``' profile; the
#: segment adds the wait for the other band to the step's first op).
PROFILE = ("if (npas_prof_on && (G == 1 || b == 0)) {{ const double t1 = omp_get_wtime(); "
           "npas_prof[{k}] += t1 - npas_prof_t; npas_prof_t = t1; }}")


def band_step_source(name: str, calls: list[str], band_floats: int) -> str:
    """Step ``name(g, G, ...)``: slice ``g`` of ``G`` of the bands runs ``calls`` on each of its
    bands (C statements over ``b``, the band, and ``Ab``, its arena). A band's steps touch
    only its own arena, so several ops run in one band step: the threads need to meet only
    where a band reads rows the other pushed."""
    body = " ".join(calls)
    return (f"static void {name}(int g, int G, const float* restrict W, const int* restrict I, "
            f"float* restrict A) {{\n  for (int b = g * {BANDS} / G; b < (g + 1) * {BANDS} / G; ++b)"
            f" {{\n    float* restrict Ab = A + (long)b * {band_floats}; {body}\n  }}\n}}\n")


def input_source(name: str, plan: BandPlan, graph: Graph, offsets: list[int],
                 band_floats: int) -> str:
    """C function ``name(b, A)``: band ``b`` copies its rows of the image, and the row beyond
    each edge facing the other band, into its padded input."""
    c, h, w = graph.buffers[plan.full_input].shape
    r, row = plan.rows, w + 2
    src, dst = offsets[plan.full_input], offsets[plan.band_input]
    return (f"static void {name}(int b, float* restrict A) {{\n"
            f"  const int y0 = b * {r} > 0 ? b * {r} - 1 : 0;\n"
            f"  const int y1 = (b + 1) * {r} < {h} ? (b + 1) * {r} + 1 : {h};\n"
            f"  float* d = A + (long)b * {band_floats} + {dst};\n"
            f"  for (int c = 0; c < {c}; ++c) for (int y = y0; y < y1; ++y)\n"
            f"    memcpy(d + (long)c * {(r + 2) * row} + (y - b * {r} + 1) * {row} + 1, "
            f"A + {src} + ((long)c * {h} + y) * {w}, {w} * sizeof(float));\n}}\n")


def join_source(name: str, offset: int, floats: int, band_floats: int) -> str:
    """Step ``name``: the mean of the two bands' global average pools, into band 0's."""
    return (f"static void {name}(int g, int G, const float* restrict W, const int* restrict I, "
            f"float* restrict A) {{\n  (void)g; (void)G; (void)W; (void)I;\n"
            f"  for (int i = 0; i < {floats}; ++i) A[{offset} + i] = "
            f"0.5f * (A[{offset} + i] + A[{band_floats + offset} + i]);\n}}\n")


def band_arena(floats: int) -> int:
    """Floats of one band's arena with the gap after it (a 64-byte multiple)."""
    return -(-floats // 16) * 16 + BAND_GAP

