"""Tap-column kernels: sparse 3x3-class convs at stride 1 (the layers of pattern pruning).

The spatial kernel's one-row tiles (``P = 1``, rows that share no kept entries, as in pattern
and unstructured pruning) load a pixel vector for every kept tap. Here a tile is ``R`` output
rows x ``V`` vectors of one output channel (a *band*). The kept taps of one (input channel,
kernel column) form a *column group* with a row mask (bit ``i``: tap row ``i`` kept); each
input row the group touches is loaded once, held in a register, and serves every kept tap of
the column that lands in the band. A 4-tap pattern then issues about 0.6 pixel loads per FMA
instead of 1. The groups of a row block and input-channel chunk are stored mask by mask, and
each mask runs its own fully unrolled, branch-free loop (the papers' "kernels grouped by
pattern", at column granularity so any kernel sparsity fits).

Measured against the ``P = 1`` spatial kernel (kernel step alone, 1 thread, 8x pattern +
connectivity): 3x3 128@28 690 -> 570 us, 64@56 690 -> 556 us, 512@7 690-830 -> 545 us.
Unstructured masks keep fewer taps per column: at 4x (1.30 per column) 1442 -> 1267 us, at
2x (1.71) 2451 -> 2487, at 10x (1.11) 548 -> 620, so the untuned choice
(``heuristics.default_config``) needs 1.2 taps per column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler_backend.heuristics import _L1_BYTES, _MIN_CHUNK_ENTRIES
from compiler_backend.kernels import NOINLINE
from compiler_backend.sparsity import Segment, run_starts

#: Tallest band: registers hold ``R * V`` accumulators, ``V`` pixel vectors and up to three
#: broadcast weights (16 on AVX2).
_MAX_BAND_ROWS = 8


def band_rows(oh: int, v: int) -> int:
    """Rows per band: as tall as the registers allow, bands of equal height where possible."""
    top = _MAX_BAND_ROWS if v == 1 else max(1, min(_MAX_BAND_ROWS, 10 // v))
    return math.ceil(oh / math.ceil(oh / top))


def chunk_channels(cin: int, rows: int, geo: dict[str, Any], ow: int, v: int, lanes: int,
                   entries_per_block: int) -> int:
    """Input channels per chunk: an L1-sized slice per band, unless a band is one tile wide.

    A one-tile band reads its input once per row block whatever the chunking, and each chunk
    costs every mask loop and accumulator round trip once more: 512@7 (pattern 8x) ran 706 us
    with 32-channel chunks, 545 us unchunked; 128@28 570 us chunked, 875 us unchunked.
    """
    if ow <= v * lanes:
        return cin
    span = 4 * (rows + geo["kh"] - 1) * geo["wq"]
    ncc = min(math.ceil(cin / max(1, _L1_BYTES // span)),
              max(1, entries_per_block // _MIN_CHUNK_ENTRIES))
    return math.ceil(cin / ncc)


@dataclass(frozen=True)
class ColumnGroups:
    """One segment's column groups, ordered by (block, channel chunk, row mask).

    Attributes:
        ptr: [nblk * ncc * nmask + 1] start of each (block, chunk, mask) list of groups.
        wstart: [nblk * ncc] first weight of each (block, chunk): the lists follow in order,
            each group holding one weight per kept tap row (top row first).
        offsets: [groups] input offset of each group's column (``ci * plane + j``).
        weights: [kept entries] float32.
        spans: [nblk, 2] first and last channel chunk with groups, per block.
    """

    ptr: np.ndarray
    wstart: np.ndarray
    offsets: np.ndarray
    weights: np.ndarray
    spans: np.ndarray


def column_groups(seg: Segment, kh: int, kw: int, plane: int, ccs: int, ncc: int) -> ColumnGroups:
    """Pack the kept entries of a one-row-per-block segment as column groups."""
    nblk, nmask = seg.nblk, (1 << kh) - 1
    blk = np.repeat(np.arange(nblk), np.diff(seg.eptr))
    ci, r = np.divmod(seg.cols, kh * kw)
    i, j = np.divmod(r, kw)
    key = (blk * (int(ci.max(initial=0)) + 1) + ci) * kw + j
    order = np.lexsort((i, key))
    first = run_starts(key[order])
    count = np.diff(np.r_[first, order.size])
    mask = np.bitwise_or.reduceat(1 << i[order], first) if order.size else first
    gblk, gci, gj = blk[order][first], ci[order][first], j[order][first]
    gcc = gci // ccs
    g = np.lexsort((gj, gci, mask, gcc, gblk))
    start, n = first[g], count[g]
    entries = np.repeat(start - np.cumsum(np.r_[0, n[:-1]]), n) + np.arange(int(n.sum()))
    lists = (gblk[g] * ncc + gcc[g]) * nmask + mask[g] - 1
    ptr = np.r_[0, np.cumsum(np.bincount(lists, minlength=nblk * ncc * nmask))]
    per_chunk = np.bincount(gblk[g] * ncc + gcc[g], weights=n, minlength=nblk * ncc)
    busy = per_chunk.reshape(nblk, ncc) > 0
    spans = np.stack([busy.argmax(1), ncc - 1 - busy[:, ::-1].argmax(1)], 1)
    return ColumnGroups(ptr.astype(np.int64), np.r_[0, np.cumsum(per_chunk)][:-1].astype(np.int64),
                        (gci[g] * plane + gj[g]).astype(np.int64),
                        seg.weights[order][entries, 0].astype(np.float32), spans)


def _mask_loop(mask: int, rows: int, v: int, nmask: int) -> str:
    """The unrolled loop over the groups of one row mask."""
    taps = [i for i in range(nmask.bit_length()) if mask >> i & 1]
    lines = [f"for (int g = q[{mask - 1}]; g < q[{mask}]; ++g, wp += {len(taps)}) {{",
             "  const float* xb = xt + goff[g];",
             "  " + " ".join(f"const vf w{i} = VSET1(wp[{n}]);" for n, i in enumerate(taps))]
    for m in range(taps[0], taps[-1] + rows):
        hits = [(m - i, i) for i in taps if 0 <= m - i < rows]
        lines.append("  { " + " ".join(f"vf x{u} = VLOAD(xb + {m} * wq + {u} * VL); VREG(x{u});"
                                       for u in range(v)))
        lines += ["    " + " ".join(f"a{r}_{u} = VFMA(w{i}, x{u}, a{r}_{u});" for u in range(v))
                  for r, i in hits]
        lines.append("  }")
    lines.append("}")
    return "\n".join("          " + s for s in lines)


def taps_template(key: str, rows: int, v: int, kh: int, split: bool = False) -> str:
    """C text of the tap-column kernel for bands of ``rows`` output rows x ``v`` vectors.

    Parameter array ``k``: ptr, wstart, offsets (I arena), weights, bias (W arena), x, y, res
    (A arena), nblk, out rows, spans (I arena), first band row, bands, wq (row stride of input
    and output), ow, ys (channel stride of output and residual), yo (store shift), ncc, act,
    has_res. Work items are band-major (band, row block); a thread takes a contiguous range.

    ``split``: the output is stored phase-split (``layout.plan_split2``), as the crop epilogue
    ``kernels.CROP_SPLIT2_TEMPLATE`` would (rows of whole vectors, one input-channel chunk):
    ``k[20..25]`` phase plane size, phase row width, phase stride, then the residual's channel
    stride, row stride and offset. ResNet-20's last blocks of a stage then need no crop pass.
    """
    nmask = (1 << kh) - 1
    tiles = [(r, u) for r in range(rows) for u in range(v)]
    acc = " ".join(f"vf a{r}_{u};" for r, u in tiles)
    counts = " ".join(f"const int n{u} = n - {u} * VL < VL ? n - {u} * VL : VL;" for u in range(v))

    def each(stmt: Any, masked: bool) -> str:
        """``stmt(r, u, at)`` for every accumulator; ``at``: its offset from the tile."""
        out = [stmt(r, u, f"{r} * wq + {u} * VL") for r, u in tiles]
        if masked:
            out = [f"if (n{u} > 0) {{ {c} }}" for (_, u), c in zip(tiles, out, strict=True)]
        return " ".join(out)

    def final(masked: bool) -> str:
        def stmt(r: int, u: int, at: str) -> str:
            res = f"VLOADM(rt + {at}, n{u})" if masked else f"VLOAD(rt + {at})"
            put = f"VSTOREM(yt + {at}, y, n{u});" if masked else f"VSTORE(yt + {at}, y);"
            if split:  # row r's even / odd columns to the phase planes of its parity
                res = f"VLOAD(rt + {r} * rr + {u} * VL)"
                put = (f"{{ float* d = yt + ((y0 + {r} + 1) & 1) * 2 * phase + ((y0 + {r} + 1) >> 1)"
                       f" * dwq + {u} * VL / 2; VSTORE_EO(d + phase, d + 1, y); }}")
            return f"{{ vf y = a{r}_{u}; if (hr) y = VADD(y, {res}); y = v_act(y, act); {put} }}"
        return each(stmt, masked)

    bias = each(lambda r, u, at: f"a{r}_{u} = bv;", False)
    reload = each(lambda r, u, at: f"a{r}_{u} = VLOAD(yt + {at});", False)
    reload_m = each(lambda r, u, at: f"a{r}_{u} = n{u} > 0 ? VLOADM(yt + {at}, n{u}) : VZERO();",
                    False)
    fin, fin_m = final(False), final(True)
    part = each(lambda r, u, at: f"VSTORE(yt + {at}, a{r}_{u});", False)
    part_m = each(lambda r, u, at: f"VSTOREM(yt + {at}, a{r}_{u}, n{u});", True)
    loops = "\n".join(_mask_loop(m, rows, v, nmask) for m in range(1, nmask + 1))
    split_args = ""
    if split:
        split_args = ("\n  const int plane = k[20], dwq = k[21]; const long phase = k[22];"
                      "\n  const int rp = k[23], rr = k[24], ro = k[25];")
        bases = (f"        const int y0 = band0 + bd * {rows};\n"
                 "        float* yb = Y + (long)rows[b] * plane;\n"
                 "        const float* rb = R + (long)rows[b] * rp + ro + (long)y0 * rr;")
    else:
        bases = ("        float* yb = Y + (long)rows[b] * ys + yo + tb;\n"
                 "        const float* rb = R + (long)rows[b] * ys + yo + tb; (void)rb;")
    xs = "c0 / 2" if split else "c0"
    return f"""static {NOINLINE} void {key}(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* gp = I + k[0]; const int* ws = I + k[1]; const int* goff = I + k[2];
  const float* wt = W + k[3]; const float* bias = W + k[4];
  const float* X = A + k[5]; float* Y = A + k[6]; const float* R = A + k[7]; (void)R;
  const int nblk = k[8]; const int* rows = I + k[9]; const int* fl = I + k[10];
  const int band0 = k[11], nb = k[12], wq = k[13], ow = k[14], ys = k[15], yo = k[16];
  const int ncc = k[17], act = k[18], hr = k[19];{split_args}
  PART(nb * nblk)
  for (int it = lo; it < hi;) {{
    const int bd = it / nblk, b0 = it % nblk;
    const int b1 = b0 + (hi - it) < nblk ? b0 + (hi - it) : nblk;
    it += b1 - b0;
    const long tb = (long)(band0 + bd * {rows}) * wq;
    for (int cc = 0; cc < ncc; ++cc) {{
      for (int b = b0; b < b1; ++b) {{
        const int cf = fl[2 * b], cl = fl[2 * b + 1];
        const int* q = gp + (long)(b * ncc + cc) * {nmask};
        if (cc < cf || cc > cl || (q[0] == q[{nmask}] && cc != cf && cc != cl)) continue;
        const int first = cc == cf, last = cc == cl;
        const float* w0 = wt + ws[b * ncc + cc];
{bases}
        for (int c0 = 0; c0 < ow; c0 += {v} * VL) {{
          __asm__ volatile("" ::: "memory");  /* keep bias broadcasts out of the hot loop */
          const float* xt = X + tb + c0; float* yt = yb + {xs}; const float* rt = rb + c0; (void)rt;
          const int n = ow - c0; {counts}
          {acc}
          if (first) {{ const vf bv = VSET1(bias[rows[b]]); {bias} }}
          else if (n >= {v} * VL) {{ {reload} }} else {{ {reload_m} }}
          const float* wp = w0;
{loops}
          if (n >= {v} * VL) {{
            if (last) {{ {fin} }} else {{ {part} }}
          }} else {{
            if (last) {{ {fin_m} }} else {{ {part_m} }}
          }}
        }}
      }}
    }}
  }}
}}
"""
