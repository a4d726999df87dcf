"""Expand + depthwise fusion: a pointwise conv whose output only a depthwise 3x3 conv reads.

MobileNetV2's expand convs write 96-192 channels of 32x32 or 16x16 (up to 627 KB with the
padding) that the depthwise conv reads right back: at 32x32, with the depthwise conv's own
output, more than a 1 MB L2. Block-pruned at 8x, an expand conv keeps 2-3 weights per row and
costs far more than its FMAs: 36 us for 24 -> 144 channels at 32x32, where they take about 8
(AMD Zen 4, 1 thread).

``exdw_template`` runs the pair ``GROUP`` expanded channels at a time (channels keeping the
same input channels, as block pruning leaves them): their planes are computed into
zero-bordered buffers on the stack (26 KB at 32x32 with 16 lanes), then the depthwise conv's
bands of rows (``depthwise.band_statements``) read each from there and store the output in the
destination's layout. The expanded tensor is never written. The pair's kernel configs (tuned
or not) are not used.

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

import numpy as np

from compiler_backend.depthwise import BAND, band_statements
from compiler_backend.heuristics import is_pointwise
from compiler_backend.ir import ConvOp, Graph
from compiler_backend.kernels import NOINLINE
from compiler_backend.layout import edges

#: Most stack bytes of a group's expanded planes (they should stay in L1 / L2 anyway).
MAX_BUFFER_BYTES = 64 * 1024
#: Most kept weights per expand row: fused, each group of ``GROUP`` channels reads its
#: input planes once, from L2; dense rows do better in the unfused kernel's tiles.
MAX_ENTRIES = 8
#: Expanded channels computed together (they must keep the same input channels).
GROUP = 4


def fusable(expand: ConvOp, dw: ConvOp, lanes: int) -> bool:
    """``expand`` (a pointwise conv keeping few weights per row, the same in each group of
    ``GROUP`` rows; no residual) feeds ``dw`` (a dense depthwise 3x3 / pad-1 conv at stride 1,
    or 2 on an even map, no residual) on a map whose rows are whole vectors (at stride 2,
    whole pairs of vectors or one vector)."""
    if not (is_pointwise(expand) and expand.groups == 1 and expand.res is None
            and dw.res is None and dw.src == expand.dst and not dw.is_linear
            and len(dw.in_shape) == 3):
        return False
    c, h, w = dw.in_shape
    s = dw.stride
    return (dw.groups == c == dw.out_shape[0] and tuple(dw.weight.shape[2:]) == (3, 3)
            and s in (1, 2) and tuple(dw.padding) == (1, 1) and h % s == 0
            and tuple(dw.out_shape[1:]) == (h // s, w // s) and bool(dw.kept.all())
            and (w % (s * lanes) == 0 or w == lanes)
            and 4 * GROUP * plane_floats(h, w, lanes) <= MAX_BUFFER_BYTES
            and c % GROUP == 0 and _grouped(expand.kept.reshape(c, -1)))


def plane_floats(h: int, w: int, lanes: int) -> int:
    """Floats of one expanded plane on the stack: ``h + 2`` rows ``w + lanes`` apart, the
    interior starting a vector in (aligned stores), then one vector for the last row's right
    border."""
    return (h + 2) * (w + lanes) + lanes


def _grouped(kept: np.ndarray) -> bool:
    """Every ``GROUP`` consecutive rows keep the same, at most ``MAX_ENTRIES``, columns."""
    g = kept.reshape(-1, GROUP, kept.shape[1])
    return bool((g == g[:, :1]).all()) and int(kept.sum(1).max()) <= MAX_ENTRIES


def plan_fusion(graph: Graph, lanes: int, masked: set[str]) -> dict[str, ConvOp]:
    """Expand convs fused into the depthwise conv reading their output (``fusable``; not one
    taking the masked family): ``{expand name: depthwise op}``."""
    _, readers = edges(graph)
    plan = {}
    for op in graph.ops:
        if not isinstance(op, ConvOp) or op.dst == graph.output:
            continue
        rs = readers.get(op.dst, [])
        if (len(rs) == 1 and rs[0][1] == "src" and isinstance(rs[0][0], ConvOp)
                and rs[0][0].name not in masked and fusable(op, rs[0][0], lanes)):
            plan[op.name] = rs[0][0]
    return plan


def expand_groups(expand: ConvOp, channel_stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The expand conv's kept weights by groups of ``GROUP`` channels sharing their input
    channels: entry pointers per group, input plane offset (floats) per entry, ``GROUP``
    weights per entry."""
    kept = expand.kept.reshape(expand.out_shape[0], -1)
    weight = expand.weight.reshape(kept.shape)
    gptr, offs, ws = [0], [], []
    for c0 in range(0, kept.shape[0], GROUP):
        cols = np.nonzero(kept[c0])[0]
        offs.append(cols * channel_stride)
        ws.append(weight[c0:c0 + GROUP, cols].T)
        gptr.append(gptr[-1] + cols.size)
    return np.array(gptr), np.concatenate(offs), np.concatenate(ws)


def exdw_template(h: int, w: int, lanes: int, stride: int = 1) -> str:
    """C text of ``exdw_{h}x{w}`` (``exdw_s2_{h}x{w}`` at stride 2): per group of ``GROUP``
    expanded channels, their ``h x w`` planes into zero-bordered stack buffers
    (``plane_floats``), then the depthwise conv over each. Each row's interior starts on a
    vector boundary, its left border the float before it, its right border the next row's
    first float: the expand part's stores are aligned.

    At stride 2 each row is stored split: its odd columns, then its even ones
    (``VODD`` / ``VEVEN`` of each pair of vectors, or of a one-vector row with itself, whose
    outputs are then half a vector, stored masked). An output vector's three kernel columns
    are then whole vectors: the odd columns shifted by one (the left border first), the even
    ones, the odd ones.

    The expand part runs ``R`` rows x ``V`` vectors x ``GROUP`` channels per pass over the
    group's input channels (``V = w / VL``; ``R * V`` is 4 with 32 vector registers, else 2),
    each pixel vector loaded once for the group. Parameter array ``k``: group entry pointers,
    input offsets (I arena), expand weights (``GROUP`` per entry), expand bias, depthwise
    weights (9 per channel), depthwise bias (W arena), x, y (A arena), source row stride,
    source origin, destination channel stride, row stride, origin, expand activation,
    depthwise activation, groups.
    """
    v = w // lanes
    r = max(1, (4 if lanes == 16 else 2) // v)
    while h % r:
        r //= 2
    wq = w + lanes
    plane = plane_floats(h, w, lanes)
    px = [(i, u) for i in range(r) for u in range(v)]
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
    pad = "\n" + " " * 8

    def band(rows: int) -> str:
        return band_statements(rows, ow % lanes > 0, "yr", stride, taps).replace("\n", pad)

    name = f"exdw_{h}x{w}" if stride == 1 else f"exdw_s2_{h}x{w}"
    return f"""static {NOINLINE} void {name}(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* gptr = I + k[0]; const int* eoff = I + k[1];
  const float* ew = W + k[2]; const float* eb = W + k[3];
  const float* dwt = W + k[4]; const float* db = W + k[5];
  const float* X = A + k[6]; float* Y = A + k[7];
  const int xs = k[8], x0 = k[9], ys = k[10], yr = k[11], yo = k[12], eact = k[13], act = k[14];
  const int wq = {wq}, hr = 0, n = {ow % lanes}; (void)n;
  float buf[{GROUP * plane} + VL] __attribute__((aligned(64)));
  memset(buf, 0, sizeof buf);  /* the borders stay zero: each group writes the interiors */
  PART(k[15])
  for (int g = lo; g < hi; ++g) {{
    const int c0 = {GROUP} * g;
    for (int i0 = 0; i0 < {h}; i0 += {r}) {{
      {init}
      const float* xr = X + x0 + (long)i0 * xs;
      for (int e = gptr[g]; e < gptr[g + 1]; ++e) {{
        const float* xe = xr + eoff[e]; const float* wg = ew + {GROUP} * e;
        {loads}
        {fmas}
      }}
      float* br = buf + (i0 + 1) * {wq} + VL;
      {stores}
    }}
    for (int q = 0; q < {GROUP}; ++q) {{
      const int c = c0 + q; const float* w9 = dwt + 9 * c;
      {weights}
      const vf bb = VSET1(db[c]);
      const float* xq = buf + q * {plane} + VL - 1; float* y = Y + (long)c * ys + yo;
      int r0 = 0;
      for (; r0 + {BAND} <= {oh}; r0 += {BAND})
        for (int c1 = 0; c1 < {ow}; c1 += VL) {{
          const float* xc = xq + (long){stride} * r0 * wq + c1; float* yp = y + (long)r0 * yr + c1;
          const float* rp = 0; (void)rp;
          {band(BAND)}
        }}
      for (; r0 < {oh}; ++r0)
        for (int c1 = 0; c1 < {ow}; c1 += VL) {{
          const float* xc = xq + (long){stride} * r0 * wq + c1; float* yp = y + (long)r0 * yr + c1;
          const float* rp = 0; (void)rp;
          {band(1)}
        }}
    }}
  }}
}}
"""
