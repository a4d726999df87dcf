"""Expand + depthwise fusion: a pointwise conv whose output only a depthwise 3x3 conv reads.

MobileNetV2's expand convs write 96-192 channels of 32x32 or 16x16 (up to 627 KB with the
padding) that the depthwise conv reads right back: at 32x32, with the depthwise conv's own
output, more than a 1 MB L2. Block-pruned at 8x, an expand conv keeps 2-3 weights per row and
costs far more than its FMAs: 36 us for 24 -> 144 channels at 32x32, where they take about 8
(AMD Zen 4, 1 thread).

``exdw_template`` runs the pair ``GROUP`` expanded channels at a time (``group_channels``:
channels keeping the same or nearly the same input channels; block pruning leaves groups of
identical rows, dead-channel cuts break them up): their planes are computed into
zero-bordered planes (26 KB at 32x32 with 16 lanes; each thread has its own in the arena),
then the depthwise conv's bands of rows (``depthwise.band_statements``) read each from there
and store the output in the destination's layout. The expanded tensor is never written. The
pair's kernel configs (tuned or not) are not used.

MobileNetV2 end to end, same-process A/B against the unfused kernels, AMD Zen 4: block 8x
655 -> 625 us (1 thread), 507 -> 466 us (2 threads); block 4x 1084 -> 1051 us, 763 -> 648 us.
A stride-2 depthwise conv fused too (its expanded rows stored split into odd and even
columns), MobileNetV2 block 8x, same host: 554 -> 519 us (1 thread), 438 -> 422 us (2
threads); its 16x16 -> 8x8 block (rows of one vector; per-op profile) 13.4 -> 11.3 us.
Rows starting on a vector boundary (aligned stores) against rows ``w + 2`` wide: no
difference (block 8x 0.99, 4x 1.01); nor storing the depthwise outputs plain instead of
padded (1.006).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler_backend.depthwise import BAND, band_statements
from compiler_backend.heuristics import is_pointwise
from compiler_backend.ir import ConvOp, Graph
from compiler_backend.kernels import NOINLINE
from compiler_backend.layout import aliased, edges

#: Most bytes of a group's expanded planes (they should stay in L1 / L2).
MAX_BUFFER_BYTES = 64 * 1024
#: Most input channels a group of ``GROUP`` expand rows may keep between them, by vector
#: width. Fused, each group reads its input planes once, from L2. AVX-512 keeps the first
#: version's limit (denser rows were left to the unfused kernel's tiles). With 8 lanes
#: (AVX2) every expand conv fuses: MobileNetV2 at 1 thread (2), same process against a limit
#: of 8, AMD Zen 4: block 8x 489 -> 449 us (378 -> 349), 4x 875 -> 809 (644 -> 579), dense
#: 2647 -> 2531 (1568 -> 1459).
MAX_ENTRIES = {16: 8}
#: Expanded channels computed together (over the union of the input channels they keep).
GROUP = 4
#: Depthwise band height with 16 vector registers: 9 weights, the activation's 2 constants, a
#: row vector and ``BAND`` = 4 accumulators left gcc one short (a weight read from the stack).
#: MobileNetV2 at 1 thread, AVX2, same process, 3 against 4 rows (the last ``oh % 3`` rows as
#: one band): block 8x 441 / 437 and 446 / 440 us, 4x 795 / 786 and 792 / 802; with those rows
#: one at a time: 8x 447 / 446, 4x 805 / 791 and 817 / 809, dense 2490 / 2475.
SMALL_BAND = 3


def fusable(expand: ConvOp, dw: ConvOp, lanes: int) -> bool:
    """``expand`` (a pointwise conv, no residual; where ``MAX_ENTRIES`` sets a limit for
    ``lanes``, its channels group by ``GROUP`` within it, ``group_channels``) feeds ``dw``
    (a dense depthwise 3x3 / pad-1 conv at stride 1, or 2 on an even map, no residual) on a map
    whose rows are whole vectors (at stride 2, whole pairs of vectors or one vector)."""
    if not (is_pointwise(expand) and expand.groups == 1 and expand.res is None
            and dw.res is None and dw.src == expand.dst and not dw.is_linear
            and len(dw.in_shape) == 3):
        return False
    c, h, w = dw.in_shape
    s = dw.stride
    if not (dw.groups == c == dw.out_shape[0] and tuple(dw.weight.shape[2:]) == (3, 3)
            and s in (1, 2) and tuple(dw.padding) == (1, 1) and h % s == 0
            and tuple(dw.out_shape[1:]) == (h // s, w // s) and bool(dw.kept.all())
            and (w % (s * lanes) == 0 or w == lanes)
            and 4 * GROUP * plane_floats(h, w, lanes) <= MAX_BUFFER_BYTES):
        return False
    limit = MAX_ENTRIES.get(lanes)
    if limit is None:
        return True
    kept = _kept_rows(expand)
    if int(kept.sum(1).max(initial=0)) > limit:  # cheap: no group can do better
        return False
    return all(kept[g].any(0).sum() <= limit for g in group_channels(kept))


def scratch_floats(h: int, w: int, lanes: int) -> int:
    """Floats of one thread's ``GROUP`` planes and a vector of slack, rounded to 64 bytes so
    every thread's planes start aligned."""
    return -(-(GROUP * plane_floats(h, w, lanes) + lanes) // 16) * 16


def plane_floats(h: int, w: int, lanes: int) -> int:
    """Floats of one expanded plane: ``h + 2`` rows ``w + lanes`` apart, the
    interior starting a vector in (aligned stores), then one vector for the last row's right
    border."""
    return (h + 2) * (w + lanes) + lanes


def _kept_rows(expand: ConvOp) -> np.ndarray:
    return expand.kept.reshape(expand.out_shape[0], -1).astype(bool)


def group_channels(kept: np.ndarray) -> list[np.ndarray]:
    """The expand conv's channels (rows of ``kept``, [channels, input channels]) in groups of
    ``GROUP`` (the last one may be short) that keep few input channels between them: each group
    starts from the row keeping the most, then adds the rows that grow its union least, of those
    the one keeping the most (rows keeping the same channels, as block pruning leaves them, land
    together)."""
    left = np.arange(kept.shape[0])
    counts = kept.sum(1)
    groups = []
    while left.size:
        pick = [int(np.argmax(counts[left]))]
        union = kept[left[pick[0]]].copy()
        while len(pick) < min(GROUP, left.size):
            # least growth first; of those, the row keeping the most (it fills the union)
            cost = (kept[left] & ~union).sum(1) * (kept.shape[1] + 1) - counts[left]
            cost[pick] = np.iinfo(cost.dtype).max
            pick.append(int(np.argmin(cost)))
            union |= kept[left[pick[-1]]]
        groups.append(left[pick])
        left = np.delete(left, pick)
    return groups


def plan_fusion(graph: Graph, lanes: int, masked: set[str]) -> dict[str, ConvOp]:
    """Expand convs fused into the depthwise conv reading their output (``fusable``; not one
    taking the masked family; not when a view shares the expanded tensor): ``{expand name:
    depthwise op}``."""
    _, readers = edges(graph)
    views = aliased(graph)
    plan = {}
    for op in graph.ops:
        if not isinstance(op, ConvOp) or op.dst == graph.output or op.dst in views:
            continue
        rs = readers.get(op.dst, [])
        if (len(rs) == 1 and rs[0][1] == "src" and isinstance(rs[0][0], ConvOp)
                and rs[0][0].name not in masked and fusable(op, rs[0][0], lanes)):
            plan[op.name] = rs[0][0]
    return plan


@dataclass(frozen=True)
class ExpandGroups:
    """The expand conv's kept weights by groups of ``GROUP`` channels (``group_channels``).

    Attributes:
        gptr: [groups + 1] entry pointers.
        offsets: [entries] input plane offset (floats) per entry: the union of the input
            channels the group's rows keep.
        weights: [entries, GROUP] each row's weight per entry (0 where it keeps none, and in the
            slots after the last channel).
        channels: [groups * GROUP] the channel of each slot (-1: none, the last group's tail).
        bias: [groups * GROUP] the expand bias of each slot.
    """

    gptr: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray
    channels: np.ndarray
    bias: np.ndarray


def expand_groups(expand: ConvOp, channel_stride: int) -> ExpandGroups:
    """Pack ``expand``'s weights by ``group_channels`` for ``exdw``, input channels
    ``channel_stride`` floats apart."""
    kept = _kept_rows(expand)
    weight = expand.weight.reshape(kept.shape) * kept
    groups = group_channels(kept)
    channels = np.full((len(groups), GROUP), -1, np.int64)
    gptr, offs, ws = [0], [], []
    for g, rows in enumerate(groups):
        channels[g, :rows.size] = rows
        cols = np.flatnonzero(kept[rows].any(0))
        w = np.zeros((cols.size, GROUP), np.float32)
        w[:, :rows.size] = weight[rows][:, cols].T
        offs.append(cols * channel_stride)
        ws.append(w)
        gptr.append(gptr[-1] + cols.size)
    flat = channels.ravel()
    bias = np.where(flat >= 0, expand.bias[np.clip(flat, 0, None)], 0.0).astype(np.float32)
    return ExpandGroups(np.array(gptr), np.concatenate(offs), np.concatenate(ws), flat, bias)


def exdw_template(h: int, w: int, lanes: int, stride: int = 1, registers: int = 32) -> str:
    """C text of ``exdw_{h}x{w}`` (``exdw_s2_{h}x{w}`` at stride 2): per group of ``GROUP``
    expanded channels, their ``h x w`` planes into the thread's planes in the arena
    (``scratch_floats``; one set per map size and stride, zeroed once: nothing writes a float
    the layout reads as a border), then the depthwise conv over each. Each row's interior
    starts on a vector boundary, its left border the float before it, its right border the
    next row's first float: the expand part's stores are aligned.

    At stride 2 each row is stored split: its odd columns, then its even ones
    (``VODD`` / ``VEVEN`` of each pair of vectors, or of a one-vector row with itself, whose
    outputs are then half a vector, stored masked). An output vector's three kernel columns
    are then whole vectors: the odd columns shifted by one (the left border first), the even
    ones, the odd ones.

    The expand part runs ``R`` rows x ``V`` vectors x ``GROUP`` channels per pass over the
    group's input channels, each pixel vector loaded once for the group: ``R * V`` is at most
    4 with 32 vector ``registers``, else 2 (``GROUP`` accumulators each), a row wider than that
    in chunks of ``V`` vectors that divide it (at stride 2, whole pairs). Parameter array ``k``
    (``ExpandGroups``): group entry pointers, input offsets (I arena), expand weights
    (``GROUP`` per entry), expand bias per slot, depthwise weights (9 per channel), depthwise
    bias (W arena), x, y (A arena), source row stride, source origin, destination channel
    stride, row stride, origin, expand activation, depthwise activation, groups, channel per
    slot (I arena), planes (A arena), floats per thread.
    """
    v = w // lanes
    tile = 4 if registers >= 32 else 2  # vectors per pass: GROUP accumulators each
    # a chunk of the row: divides it, and at stride 2 holds whole pairs of vectors
    vc = max(c for c in range(1, min(v, tile) + 1)
             if v % c == 0 and (stride == 1 or v == 1 or c % 2 == 0))
    r = max(1, tile // vc)
    while h % r:
        r //= 2
    wq = w + lanes
    plane = plane_floats(h, w, lanes)
    px = [(i, u) for i in range(r) for u in range(vc)]
    init = " ".join(f"vf e{g}_{i}_{u} = VSET1(eb[c0 + {g}]);" for g in range(GROUP) for i, u in px)
    loads = " ".join(f"const vf x{i}_{u} = VLOAD(xe + {i} * xs + {u} * VL);" for i, u in px)
    fmas = " ".join(f"{{ const vf we = VSET1(wg[{g}]); "
                    + " ".join(f"e{g}_{i}_{u} = VFMA(we, x{i}_{u}, e{g}_{i}_{u});" for i, u in px)
                    + " }" for g in range(GROUP))
    if stride == 1:
        stores = " ".join(f"VSTORE(br + {g * plane} + {i} * {wq} + {u} * VL, v_act(e{g}_{i}_{u}, eact));"
                          for g in range(GROUP) for i, u in px)
    elif v == 1:  # the odd half then the even one; the even one's copy lands on unread floats
        stores = " ".join(f"{{ const vf a = v_act(e{g}_{i}_0, eact); "
                          f"VSTORE(br + {g * plane + i * wq}, VODD(a, a)); "
                          f"VSTORE(br + {g * plane + i * wq + w // 2}, VEVEN(a, a)); }}"
                          for g in range(GROUP) for i in range(r))
    else:
        stores = " ".join(f"{{ const vf a = v_act(e{g}_{i}_{u}, eact), b = v_act(e{g}_{i}_{u + 1}, eact); "
                          f"VSTORE(br + {g * plane + i * wq + u // 2 * lanes}, VODD(a, b)); "
                          f"VSTORE(br + {g * plane + i * wq + w // 2 + u // 2 * lanes}, VEVEN(a, b)); }}"
                          for g in range(GROUP) for i, u in px if u % 2 == 0)
    oh, ow = h // stride, w // stride
    taps = ("0", "1", "2") if stride == 1 else ("0", f"{w // 2 + 1}", "1")
    weights = " ".join(f"const vf w{q} = VSET1(w9[{q}]);" for q in range(9))
    band_rows = BAND if registers >= 32 else SMALL_BAND
    pad = "\n" + " " * 8

    def band(rows: int) -> str:
        # the bias broadcast per band, not held in a register (``SMALL_BAND``)
        return band_statements(rows, ow % lanes > 0, "yr", stride, taps,
                               "VSET1(db[c])").replace("\n", pad)

    tail = "" if not oh % band_rows else f"""for (int c1 = 0; c1 < {ow}; c1 += VL) {{  /* the last rows, one band */
        const float* xc = xq + (long){stride} * r0 * wq + c1; float* yp = y + (long)r0 * yr + c1;
        const float* rp = 0; (void)rp;
        {band(oh % band_rows)}
      }}"""
    name = f"exdw_{h}x{w}" if stride == 1 else f"exdw_s2_{h}x{w}"
    return f"""static {NOINLINE} void {name}(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* gptr = I + k[0]; const int* eoff = I + k[1];
  const float* ew = W + k[2]; const float* eb = W + k[3];
  const float* dwt = W + k[4]; const float* db = W + k[5];
  const float* X = A + k[6]; float* Y = A + k[7]; const int* chans = I + k[16];
  const int xs = k[8], x0 = k[9], ys = k[10], yr = k[11], yo = k[12], eact = k[13], act = k[14];
  const int wq = {wq}, hr = 0, n = {ow % lanes}; (void)n;
  float* buf = A + k[17] + (long)tid * k[18];  /* zero borders: only interiors are written */
  PART(k[15])
  for (int g = lo; g < hi; ++g) {{
    const int c0 = {GROUP} * g;
    for (int i0 = 0; i0 < {h}; i0 += {r})
      for (int u0 = 0; u0 < {v}; u0 += {vc}) {{
        {init}
        const float* xr = X + x0 + (long)i0 * xs + u0 * VL;
        for (int e = gptr[g]; e < gptr[g + 1]; ++e) {{
          const float* xe = xr + eoff[e]; const float* wg = ew + {GROUP} * e;
          {loads}
          {fmas}
        }}
        float* br = buf + (i0 + 1) * {wq} + VL + u0 / {stride} * VL;
        {stores}
      }}
    for (int q = 0; q < {GROUP}; ++q) {{
      const int c = chans[c0 + q];
      if (c < 0) break;  /* the last group's tail */
      const float* w9 = dwt + 9 * c;
      {weights}
      const float* xq = buf + q * {plane} + VL - 1; float* y = Y + (long)c * ys + yo;
      int r0 = 0;
      for (; r0 + {band_rows} <= {oh}; r0 += {band_rows})
        for (int c1 = 0; c1 < {ow}; c1 += VL) {{
          const float* xc = xq + (long){stride} * r0 * wq + c1; float* yp = y + (long)r0 * yr + c1;
          const float* rp = 0; (void)rp;
          {band(band_rows)}
        }}
      {tail}
    }}
  }}
}}
"""
