"""Sweep kernels: one-row (pattern-like) convs, input-stationary.

The spatial kernel's one-row tiles and the tap-column kernel walk each output channel's
entries and load input pixels for every kept tap: with no rows sharing entries there is
little to reuse. Here the loop nest is turned around. For a block of ``v`` vectors of output
pixels, the kernel loads each input channel's tap vectors once (the union of the taps its
kernels keep: 9 x ``v`` registers for 3x3 kernels) and then sweeps them over every output
channel with a kernel on that input channel, adding into that channel's accumulators in a
stack buffer (L1). Kernels are grouped by input channel and *pattern* (the set of kept taps),
and every pattern runs its own branch-free loop with its taps fixed at compile time: the
papers' "kernels grouped by pattern", with each loaded pixel vector serving dozens of kernels.
Per kernel and vector: one accumulator load and store, one broadcast weight per tap.

Threads split the rows into slices of about equal entry counts, each with its own groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler_backend.kernels import NOINLINE
from compiler_backend.sparsity import Segment, run_starts

#: Most patterns per layer (each one is a loop of its own in the generated code).
MAX_PATTERNS = 32


@dataclass(frozen=True)
class SweepPlan:
    """One segment's kernels, ordered by (slice, input channel, pattern, row).

    Attributes:
        patterns: per pattern its taps (flat ``i * kw + j``, ascending).
        tap_offsets: [taps] input offset of each tap relative to its channel's pixel ``t``.
        group_ptr: [slices * cin * patterns + 1] first kernel of each (slice, channel, pattern).
        weight_ptr: [slices * cin * patterns] first weight of each group.
        acc_row: [kernels] row of each kernel in its slice (0 = the slice's first row).
        weights: [kept entries] float32, kernel by kernel in tap order.
        row_ptr: [slices + 1] first block (row) of each slice.
    """

    patterns: list[tuple[int, ...]]
    tap_offsets: np.ndarray
    group_ptr: np.ndarray
    weight_ptr: np.ndarray
    acc_row: np.ndarray
    weights: np.ndarray
    row_ptr: np.ndarray


def tap_offsets(cols: np.ndarray, offsets: np.ndarray, ntaps: int, cs: int) -> np.ndarray | None:
    """[ntaps] offset of each tap from its channel's start (``cs`` floats per channel), or
    None when the entries' input offsets are not of that form."""
    c, tap = np.divmod(cols, ntaps)
    rel = offsets - c * cs
    out = np.zeros(ntaps, np.int64)
    out[tap] = rel
    return out if np.array_equal(out[tap], rel) else None


def pattern_count(kept: np.ndarray) -> int:
    """Distinct kept-tap sets among the non-empty kernels of a [cout, cin, kh, kw] mask."""
    kf = kept.reshape(kept.shape[0] * kept.shape[1], -1)
    if kf.shape[1] > 62:  # no int64 code per kernel
        kf = kf[kf.any(1)]
        return len(np.unique(np.packbits(kf, axis=1), axis=0)) if len(kf) else 0
    codes = kf.astype(np.int64) @ (np.int64(1) << np.arange(kf.shape[1], dtype=np.int64))
    return int(np.unique(codes[codes != 0]).size)


def plan_sweep(seg: Segment, ntaps: int, cin: int, toff: np.ndarray, slices: int) -> SweepPlan:
    """Group a one-row-per-block segment's kernels by slice, input channel and pattern."""
    n = np.diff(seg.eptr)
    blk = np.repeat(np.arange(seg.nblk), n)
    c, tap = np.divmod(seg.cols, ntaps)
    order = np.lexsort((tap, c, blk))
    blk, c, tap, w = blk[order], c[order], tap[order], seg.weights[order, 0]
    kernel = blk * cin + c
    first = run_starts(kernel)
    mask = np.bitwise_or.reduceat(np.int64(1) << tap, first) if first.size else first
    codes, pattern = np.unique(mask, return_inverse=True)
    pattern = pattern.ravel()
    npat = len(codes)
    cum = np.r_[0, np.cumsum(n)]
    row_ptr = np.searchsorted(cum[1:], cum[-1] * np.arange(1, slices) / slices, side="right")
    row_ptr = np.r_[0, np.minimum(row_ptr, seg.nblk), seg.nblk]
    kblk, kc = blk[first], c[first]
    kslice = np.searchsorted(row_ptr, kblk, side="right") - 1
    group = (kslice * cin + kc) * npat + pattern
    korder = np.lexsort((kblk, group))
    counts = np.diff(np.r_[first, kernel.size])
    kn = counts[korder]
    entries = np.repeat(first[korder] - np.cumsum(np.r_[0, kn[:-1]]), kn) + np.arange(int(kn.sum()))
    ngroups = slices * cin * npat
    group_ptr = np.r_[0, np.cumsum(np.bincount(group, minlength=ngroups))]
    weight_ptr = np.r_[0, np.cumsum(np.bincount(group, weights=counts, minlength=ngroups))][:-1]
    patterns = [tuple(int(t) for t in range(ntaps) if code >> t & 1) for code in codes]
    return SweepPlan(patterns, toff, group_ptr.astype(np.int64), weight_ptr.astype(np.int64),
                     (kblk - row_ptr[kslice])[korder].astype(np.int64),
                     w[entries].astype(np.float32), row_ptr.astype(np.int64))


def sweep_template(key: str, v: int, patterns: list[tuple[int, ...]], toff: np.ndarray,
                   max_rows: int, pieces: int = 0, masked: bool = False) -> str:
    """C text of the sweep kernel for blocks of ``v`` vectors of output pixels.

    Parameter array ``k``: group_ptr, weight_ptr, acc_row (I arena), weights, bias (W arena),
    x, y, res (A arena), rows, row_ptr (I arena), slices, pixel blocks, T, cin, channel stride
    of x, ys (channel stride of y and res), yo (store shift), act, has_res, junk mask (-1 or
    an I offset), first pixel, piece table (I offset), lane masks (I offset), vectors per map.

    ``pieces`` > 0: each output vector is stored as up to that many runs of lanes, each at an
    offset of its own in the output channel (``store_pieces``): rows of a plain or padded
    output, with no crop pass. Work items are (slice, pixel block); a thread takes a contiguous range.

    ``masked``: the input is a plain map and each tap's vectors are zero-masking loads
    (``VLOADZ``) by a [taps, vectors] table of lane masks (``masked.lane_masks``) at I offset
    ``k[22]``, ``k[23]`` vectors per map: the padding reads as masked-off lanes.
    """
    npat = len(patterns)
    used = sorted({t for p in patterns for t in p})
    load = "VLOADZ(xc + {o} + {u} * VL, m{t}_{u})" if masked else "VLOAD(xc + {o} + {u} * VL)"
    loads = " ".join(f"vf x{t}_{u} = {load.format(o=int(toff[t]), u=u, t=t)}; VREG(x{t}_{u});"
                     for t in used for u in range(v))
    lane_masks = " ".join(f"const int m{t}_{u} = mj[{t} * nvm + {u}];"
                          for t in used for u in range(v)) if masked else ""
    loops = []
    for p, taps in enumerate(patterns):
        body = [f"vf s{u} = VLOAD(a + {u} * VL);" for u in range(v)]
        body += [f"s{u} = VFMA(VSET1(w[{q}]), x{t}_{u}, s{u});" for q, t in enumerate(taps)
                 for u in range(v)]
        body += [f"VSTORE(a + {u} * VL, s{u});" for u in range(v)]
        loops.append(f"      {{ const float* w = wt + gw[{p}];\n"
                     f"        for (int e = g[{p}]; e < g[{p + 1}]; ++e, w += {len(taps)}) {{\n"
                     f"          float* a = acc + ar[e] * {v} * VL; " + " ".join(body)
                     + "\n        } }")
    init = " ".join(f"VSTORE(a + {u} * VL, b);" for u in range(v))
    if pieces:
        out = "\n".join(
            f"      {{ const vf y = v_act(VLOAD(a + {u} * VL), act);"
            f" const int* q = pt + (t / VL + {u}) * {3 * pieces};"
            + " ".join(f" if (q[{3 * i + 2}] > 0) VSTOREM_AT(y0 + q[{3 * i}] - q[{3 * i + 1}], y, "
                       f"q[{3 * i + 1}], q[{3 * i + 2}]);" for i in range(pieces)) + " }"
            for u in range(v))
    else:
        out = "\n".join(
            f"      {{ const int n = T - t - {u} * VL; if (n > 0) {{ vf y = VLOAD(a + {u} * VL);"
            f" if (hr) {{ if (n >= VL) y = VADD(y, VLOAD(rq + {u} * VL));"
            f" else y = VADD(y, VLOADM(rq + {u} * VL, n)); }}"
            f" y = v_act(y, act); if (jm) y = VAND(y, VLOAD(jm + t + {u} * VL));"
            f" if (n >= VL) VSTORE(yp + {u} * VL, y); else VSTOREM(yp + {u} * VL, y, n); }} }}"
            for u in range(v))
    return f"""static {NOINLINE} void {key}(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* gp = I + k[0]; const int* gwp = I + k[1]; const int* ar = I + k[2];
  const float* wt = W + k[3]; const float* bias = W + k[4];
  const float* X = A + k[5]; float* Y = A + k[6]; const float* R = A + k[7]; (void)R;
  const int* rows = I + k[8]; const int* rp = I + k[9];
  const int nb = k[11], T = k[12], cin = k[13], cs = k[14], ys = k[15], yo = k[16];
  const int act = k[17], hr = k[18];
  const float* jm = k[19] >= 0 ? (const float*)(I + k[19]) : 0;
  const int* pt = I + k[21]; (void)pt;
  const int* mk = I + k[22]; const int nvm = k[23]; (void)mk; (void)nvm;
  float acc[{max_rows} * {v} * VL] __attribute__((aligned(64)));
  PART(k[10] * nb)
  for (int it = lo; it < hi; ++it) {{
    const int s = it / nb, t = k[20] + (it % nb) * {v} * VL;
    const int r0 = rp[s], nr = rp[s + 1] - r0;
    const int* mj = mk + t / VL; (void)mj; {lane_masks}
    for (int r = 0; r < nr; ++r) {{
      float* a = acc + r * {v} * VL; const vf b = VSET1(bias[rows[r0 + r]]); {init}
    }}
    const int* g = gp + (long)s * cin * {npat}; const int* gw = gwp + (long)s * cin * {npat};
    for (int c = 0; c < cin; ++c, g += {npat}, gw += {npat}) {{
      if (g[0] == g[{npat}]) continue;
      const float* xc = X + (long)c * cs + t;
      {loads}
{chr(10).join(loops)}
    }}
    for (int r = 0; r < nr; ++r) {{
      const int o = rows[r0 + r]; const float* a = acc + r * {v} * VL;
      float* yp = Y + (long)o * ys + yo + t; const float* rq = R + (long)o * ys + yo + t; (void)rq;
      float* y0 = Y + (long)o * ys; (void)y0; (void)yp;
{out}
    }}
  }}
}}
"""


def store_pieces(T: int, wq: int, ow: int, lanes: int, row_stride: int, origin: int) -> np.ndarray:
    """[vectors, pieces, 3] per output vector the runs of its lanes that are real pixels of one
    row (pixel ``t`` is ``(t // wq, t % wq)``, real below ``ow``): (offset of the run's first
    pixel in an output channel of ``row_stride`` and ``origin``, first lane, lanes)."""
    nvec = -(-T // lanes)
    t = np.arange(nvec * lanes)
    y, x = np.divmod(t, wq)
    real = (t < T) & (x < ow)
    runs: list[list[tuple[int, int, int]]] = [[] for _ in range(nvec)]
    for j in range(nvec):
        for lane in range(lanes):
            i = j * lanes + lane
            if not real[i]:
                continue
            run = runs[j]
            if run and run[-1][1] + run[-1][2] == lane and x[i] > 0:
                run[-1] = (run[-1][0], run[-1][1], run[-1][2] + 1)
            else:
                run.append((origin + int(y[i]) * row_stride + int(x[i]), lane, 1))
    width = max(1, max(len(r) for r in runs))
    table = np.zeros((nvec, width, 3), np.int64)
    for j, run in enumerate(runs):
        if run:
            table[j, :len(run)] = run
    return table
