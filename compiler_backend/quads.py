"""Quad kernels: one-row (pattern-like) convs on maps of at most one vector of pixels.

On a 4x4 or 2x2 map a one-row spatial tile holds 16 or 4 real pixels, and every kept tap
costs a pixel load, a weight broadcast and an FMA on a mostly idle vector (VGG-16's 512-channel
4x4 / 2x2 layers at pattern 8x: 23 and 8 GFLOP/s). Here the kept taps of each kernel (output
channel, input channel) are cut into *quads* of up to four (a pattern's four taps: one quad),
and a vector holds ``lanes / 4`` pixels x the four taps of a quad, pixel-major. A prologue
gathers, per input channel and tap quad (*key*) that some kernel uses, that layout from the
channel's pixels (``gather_template``); a row then runs one FMA per quad and vector with the
quad's four weights broadcast to every group of four lanes (``VBCAST4``), and sums each group
of four lanes in its epilogue (``quads_template``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from compiler_backend.kernels import NOINLINE, _vsum
from compiler_backend.sparsity import run_starts

#: Taps per quad (a pattern keeps 4 of a 3x3 kernel's 9).
QUAD = 4


@dataclass(frozen=True)
class QuadPlan:
    """One conv's quads.

    Attributes:
        taps: [patterns, 4] flat tap index (``i * kw + j``) of each slot, -1 for an empty one.
        chan_keys: [cin + 1] start of each input channel's keys (keys are ordered by channel).
        key_pattern: [keys] pattern of each key.
        row_ptr: [cout + 1] start of each output channel's quads.
        quad_key: [quads] key of each quad.
        weights: [quads, 4] float32, zero in empty slots.
    """

    taps: np.ndarray
    chan_keys: np.ndarray
    key_pattern: np.ndarray
    row_ptr: np.ndarray
    quad_key: np.ndarray
    weights: np.ndarray


def quad_vectors(npx: int, lanes: int) -> int:
    """Vectors per quad on a map of ``npx`` pixels."""
    return math.ceil(QUAD * npx / lanes)


def quad_count(kept: np.ndarray) -> int:
    """Quads of a [cout, cin, kh, kw] mask: per kernel, its kept taps in fours."""
    n = kept.reshape(kept.shape[0] * kept.shape[1], -1).sum(1)
    return int((-(-n // QUAD)).sum())


def plan_quads(weight: np.ndarray, kept: np.ndarray) -> QuadPlan:
    """Cut every kernel's kept taps (in tap order) into quads and index their keys."""
    cout, cin = kept.shape[:2]
    kf = kept.reshape(cout, cin, -1)
    o, c, t = np.nonzero(kf)
    kernel = o * cin + c
    starts = run_starts(kernel)
    rank = np.arange(kernel.size) - np.repeat(starts, np.diff(np.r_[starts, kernel.size]))
    new_quad = rank % QUAD == 0
    quad = np.cumsum(new_quad) - 1
    nq = int(new_quad.sum())
    slots = np.full((nq, QUAD), -1, np.int64)
    slots[quad, rank % QUAD] = t
    weights = np.zeros((nq, QUAD), np.float32)
    weights[quad, rank % QUAD] = weight.reshape(cout, cin, -1)[o, c, t]
    q_row, q_chan = o[new_quad], c[new_quad]
    taps, pattern = np.unique(slots, axis=0, return_inverse=True) if nq else \
        (np.zeros((0, QUAD), np.int64), np.zeros(0, np.int64))
    pattern = pattern.ravel()
    keys, quad_key = np.unique(q_chan * max(len(taps), 1) + pattern, return_inverse=True)
    key_chan, key_pattern = np.divmod(keys, max(len(taps), 1))
    return QuadPlan(taps, np.searchsorted(key_chan, np.arange(cin + 1)),
                    key_pattern, np.searchsorted(q_row, np.arange(cout + 1)),
                    quad_key.ravel(), weights)


def pattern_indices(taps: np.ndarray, out_hw: tuple[int, int], kw: int, stride: int,
                    padding: tuple[int, int], in_hw: tuple[int, int], row_stride: int,
                    origin: int, nv: int, lanes: int, zero: int) -> np.ndarray:
    """[patterns, nv * lanes] index of each lane's input float in its channel's stored plane
    (``row_stride``, pixel (0, 0) at ``origin``); ``zero`` where the lane reads padding, an
    empty slot or a pixel past the map."""
    (oh, ow), (h, w) = out_hw, in_hw
    lane = np.arange(nv * lanes)
    px, slot = np.divmod(lane, QUAD)
    y, x = np.divmod(np.minimum(px, oh * ow - 1), ow)
    tap = taps[:, slot]
    i, j = np.divmod(np.maximum(tap, 0), kw)
    sy, sx = stride * y + i - padding[0], stride * x + j - padding[1]
    ok = (tap >= 0) & (px < oh * ow) & (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
    return np.where(ok, origin + sy * row_stride + sx, zero)


def gather_template(key: str, n: int, nv: int, permute: bool = False) -> str:
    """Prologue: the vectors of every key, by gathers from a stack copy of the channel's ``n``
    stored floats (slot ``n``: a zero), or with ``permute`` (AVX-512, ``n < 32``) by one
    two-vector permute each (VGG-16's 512-channel 2x2 layers at pattern 8x: 15 -> 7 us).
    Parameter array ``k``: src, dst (A arena), chan_keys, key_pattern, pattern indices (I
    arena), cin, source channel stride."""
    size = 32 if permute else n + 1
    pick = ("_mm512_permutex2var_ps(lo, _mm512_loadu_si512((const void*)(ix + j * VL)), hi)"
            if permute else "VGATHER(loc, ix + j * VL)")
    regs = "const vf lo = VLOAD(loc), hi = VLOAD(loc + VL);" if permute else ""
    return f"""static {NOINLINE} void {key}(int tid, int nt, const int* restrict I, float* restrict A,
    const int* k) {{
  const float* X = A + k[0]; float* Q = A + k[1];
  const int* ck = I + k[2]; const int* kp = I + k[3]; const int* pidx = I + k[4];
  const int cin = k[5], cs = k[6];
  float loc[{size}]; memset(loc, 0, sizeof loc);
  PART(cin)
  for (int c = lo; c < hi; ++c) {{
    if (ck[c] == ck[c + 1]) continue;
    memcpy(loc, X + (long)c * cs, {n} * sizeof(float));
    {regs}
    for (int q = ck[c]; q < ck[c + 1]; ++q) {{
      const int* ix = pidx + kp[q] * {nv} * VL; float* d = Q + (long)q * {nv} * VL;
      for (int j = 0; j < {nv}; ++j) VSTORE(d + j * VL, {pick});
    }}
  }}
}}
"""


def quads_template(key: str, nv: int, split: int, npx: int) -> str:
    """The row kernel: ``split`` sets of ``nv`` accumulators over a row's quads (consecutive
    quads go to different sets: one chain of dependent FMAs otherwise), then per pixel the sum
    of its four lanes + bias (+ residual), the activation and a scalar store at its offset.

    Parameter array ``k``: row_ptr, key offsets of the quads (I arena), weights, bias (W
    arena), keys' vectors, y, res (A arena), destination and residual offsets of each pixel
    (I arena), channel strides of y and res, act, has_res, cout.
    """
    sets = range(split)
    vecs = range(nv)
    zero = " ".join(f"vf a{g}_{u} = VZERO();" for g in sets for u in vecs)

    def step(g: int) -> str:
        return (f"{{ const float* x = Q + qo[e + {g}]; const vf w = VBCAST4(wp + {QUAD * g}); "
                + " ".join(f"a{g}_{u} = VFMA(w, VLOAD(x + {u} * VL), a{g}_{u});" for u in vecs)
                + " }")

    tail = step(0).replace("e + 0", "e").replace("wp + 0", "wp")
    sums = " ".join("a0_{u} = {s};".format(u=u, s=_vsum([f"a{g}_{u}" for g in sets]))
                    for u in vecs) if split > 1 else ""
    stores = " ".join(f"VSTORE(t + {u} * VL, a0_{u});" for u in vecs)
    return f"""static {NOINLINE} void {key}(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* qp = I + k[0]; const int* qo = I + k[1];
  const float* wt = W + k[2]; const float* bias = W + k[3];
  const float* Q = A + k[4]; float* Y = A + k[5]; const float* R = A + k[6]; (void)R;
  const int* dofs = I + k[7]; const int* rofs = I + k[8];
  const int ys = k[9], rs = k[10], act = k[11], hr = k[12];
  PART(k[13])
  for (int r = lo; r < hi; ++r) {{
    __asm__ volatile("" ::: "memory");
    {zero}
    int e = qp[r]; const int e1 = qp[r + 1];
    const float* wp = wt + (long){QUAD} * e;
    for (; e + {split} <= e1; e += {split}, wp += {QUAD * split}) {{
      {" ".join(step(g) for g in sets)}
    }}
    for (; e < e1; ++e, wp += {QUAD}) {tail}
    {sums}
    float t[{nv} * VL]; {stores}
    const float b = bias[r]; float* y = Y + (long)r * ys; const float* rp = R + (long)r * rs;
    for (int q = 0; q < {npx}; ++q) {{
      float s = b + ((t[4 * q] + t[4 * q + 1]) + (t[4 * q + 2] + t[4 * q + 3]));
      if (hr) s += rp[rofs[q]];
      y[dofs[q]] = s_act(s, act);
    }}
  }}
}}
"""

