"""Depthwise 3x3 at stride 1 in bands of output rows (``DWBAND_TEMPLATE``).

``kernels.dw9_template`` computes each output vector from nine pixel loads, one per tap. Here
a tile is up to ``BAND`` output rows x one vector: each of the ``BAND + 2`` input rows of a
kernel column is loaded once and feeds every tap of that column whose output row is in the
band (18 loads for 36 FMAs instead of 36 for 36). The nine weights stay in registers for the
whole channel. Tiles cover the ``ow`` real columns of each row (a last partial tile is stored
masked); the wide-row junk columns are never written, so a padded destination's zero border
needs no re-zeroing pass (``BORDER_TEMPLATE``) after this kernel.

Kernel step, MobileNetV2's 144-channel 32x32 depthwise layer after a 1x1 conv, 1 thread:
65 us with ``dw9``, 37 us with bands of 4 rows.

On maps whose rows are half a vector wide (8x8 with 16 lanes) the map stays plain and
``masked_dw_template`` loads each pair of input rows once per kernel column with the padding
masked off, as the masked family does (``compiler_backend.masked``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compiler_backend.ir import ConvOp
from compiler_backend.kernels import NOINLINE, dw9_head
from compiler_backend.masked import plain_rows_3x3

#: Output rows per band: 4 accumulators + 9 weights + 1 pixel vector + bias fit 16 registers.
BAND = 4


def _plane_taps(offsets: np.ndarray, wq: int) -> bool:
    """Every row's nine tap offsets are ``o0 + i * wq + j`` (stride 1, one input plane)."""
    o = offsets.reshape(-1, 9)
    taps = np.array([i * wq + j for i in range(3) for j in range(3)])
    return bool(np.all(o - o[:, :1] == taps))


def use_bands(offsets: np.ndarray, wq: int, ow: int, lanes: int) -> bool:
    """Bands pay when the taps read one plane (``_plane_taps``) and a row fills more than half
    a vector: MobileNetV2's 4x4 maps (960 channels) ran 30-31 us in bands against 28-29 us
    with ``dw9``, whose wide-row vectors span rows."""
    return 2 * ow > lanes and _plane_taps(offsets, wq)


def dw9_packs(geo: dict[str, Any], lanes: int) -> bool:
    """A depthwise layer on this geometry steps its rows a vector at a time (``dw9_template``:
    not bands, not the 4x4 plane kernel), which can pack a plain output
    (``dw9_template(pack=...)``)."""
    return 2 * geo["ow"] <= lanes and (geo["T"], geo["wq"], geo["ow"]) != (24, 6, 4)


def plane4_writes_plain(op: ConvOp, lanes: int) -> bool:
    """A dense depthwise 3x3 / stride-1 / pad-1 conv on a 4x4 map with 16-lane vectors:
    ``PLANE4_TEMPLATE`` serves it from a padded source and stores a plain output as it
    computes it (no crop)."""
    return (lanes == 16 and op.groups > 1 and op.groups == op.in_shape[0] == op.out_shape[0]
            and tuple(op.out_shape[1:]) == (4, 4) and tuple(op.weight.shape[2:]) == (3, 3)
            and op.stride == 1 and tuple(op.padding) == (1, 1) and bool(op.kept.all()))


def use_plane4(offsets: np.ndarray, T: int, wq: int, ow: int, isa_name: str) -> bool:
    """``PLANE4_TEMPLATE`` serves this layer: AVX-512, a 4x4 output in wide rows of 6 (a padded
    source), taps reading one plane."""
    return isa_name == "avx512" and (T, wq, ow) == (24, 6, 4) and _plane_taps(offsets, wq)


#: Depthwise 3x3 / stride 1 on 4x4 maps, AVX-512: the 16 output pixels are one vector. The
#: channel's padded 6x6 plane is loaded once as four vectors (floats 0-31 and 12-43 from its
#: first tap), and tap ``q`` of every pixel is one two-source permute of them (pixel ``(i, j)``
#: of the tap at plane offset ``d`` is float ``d + 6 i + j``). The sum is spread back to the two
#: wide-row vectors of the ``dw9`` layout (junk lanes zero) for the residual, activation, junk
#: mask and stores, or with ``k[14]`` set stored as it is into a plain output (residual plain
#: too; a crop pass took 12 us for MobileNetV2's 960 channels). ``dw9_v2`` ran each channel as
#: two 9-FMA chains over 24 wide-row pixels from 18 unaligned loads. Parameter array ``k``: as
#: ``kernels.dw9_template``, then the plain flag.
PLANE4_TEMPLATE = dw9_head("dw9_plane4") + """
  const __m512i p0 = _mm512_setr_epi32(0, 1, 2, 3, 6, 7, 8, 9, 12, 13, 14, 15, 18, 19, 20, 21);
  const __m512i p1 = _mm512_add_epi32(p0, _mm512_set1_epi32(1));
  const __m512i p2 = _mm512_add_epi32(p0, _mm512_set1_epi32(2));
  const __m512i p6 = _mm512_add_epi32(p0, _mm512_set1_epi32(6));
  const __m512i p7 = _mm512_add_epi32(p0, _mm512_set1_epi32(7));
  const __m512i p8 = _mm512_add_epi32(p0, _mm512_set1_epi32(8));
  const __m512i wide0 = _mm512_setr_epi32(0, 1, 2, 3, 0, 0, 4, 5, 6, 7, 0, 0, 8, 9, 10, 11);
  const __m512i wide1 = _mm512_setr_epi32(0, 0, 12, 13, 14, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const int plain = k[14];
  PART(k[7])
  for (int b = lo; b < hi; ++b) {
    const int r = rows[b]; const float* w9 = wt + 9 * b; const float* x = X + offs[9 * b];
    const vf u0 = VLOAD(x), u1 = VLOAD(x + 16), u2 = VLOAD(x + 12), u3 = VLOAD(x + 28);
    vf a = VMUL(VSET1(w9[0]), _mm512_permutex2var_ps(u0, p0, u1));
    vf c = VMUL(VSET1(w9[1]), _mm512_permutex2var_ps(u0, p1, u1));
    a = VFMA(VSET1(w9[2]), _mm512_permutex2var_ps(u0, p2, u1), a);
    c = VFMA(VSET1(w9[3]), _mm512_permutex2var_ps(u0, p6, u1), c);
    a = VFMA(VSET1(w9[4]), _mm512_permutex2var_ps(u0, p7, u1), a);
    c = VFMA(VSET1(w9[5]), _mm512_permutex2var_ps(u0, p8, u1), c);
    a = VFMA(VSET1(w9[6]), _mm512_permutex2var_ps(u2, p0, u3), a);
    c = VFMA(VSET1(w9[7]), _mm512_permutex2var_ps(u2, p1, u3), c);
    a = VFMA(VSET1(w9[8]), _mm512_permutex2var_ps(u2, p2, u3), a);
    a = VADD(VADD(a, c), VSET1(bias[r]));
    float* y = Y + (long)r * ys + yo; const float* rp = R + (long)r * ys + yo;
    if (plain) { VSTORE(y, v_act(hr ? VADD(a, VLOAD(rp)) : a, act)); continue; }
    vf z0 = _mm512_maskz_permutexvar_ps((__mmask16)0xF3CF, wide0, a);
    vf z1 = _mm512_maskz_permutexvar_ps((__mmask16)0x003C, wide1, a);
    if (hr) { z0 = VADD(z0, VLOAD(rp)); z1 = VADD(z1, VLOADM(rp + 16, 8)); }
    z0 = v_act(z0, act); z1 = v_act(z1, act);
    if (jm) { z0 = VAND(z0, VLOAD(jm)); z1 = VAND(z1, VLOAD(jm + 16)); }
    VSTORE(y, z0); VSTOREM(y + 16, z1, 8);
  }
}
"""


def masked_dw_eligible(op: ConvOp, lanes: int) -> bool:
    """``masked_dw_template`` can run ``op``: a dense depthwise conv (one channel per group)
    on a map of two rows per vector (``masked.plain_rows_3x3``)."""
    return (plain_rows_3x3(op, lanes) and op.groups == op.in_shape[0] == op.out_shape[0]
            and bool(op.kept.all()))


def masked_dw_template(nv: int, lanes: int) -> str:
    """C text of ``mdw_v{nv}``: depthwise 3x3 over a plain map of ``nv`` vectors, two rows of
    ``lanes / 2`` pixels per vector (8x8 maps on AVX-512, 4x4 ones on AVX2).

    Output vector ``v`` holds rows ``2v, 2v + 1``; with rows ``w = lanes / 2`` wide, its tap
    ``(i, j)`` reads the vector at plain offset ``w (2v + i - 1) + j - 1``, lanes off the map
    masked to zero (column ``j - 1 + x`` outside the row, or row -1 / ``2 nv``). The vector of
    input rows ``r, r + 1`` at kernel column ``j`` is loaded once and feeds every output
    vector that reads it (two for odd ``r``): ``3 (2 nv + 1)`` masked loads and ``9 nv`` FMAs
    per channel, against ``dw9``'s ``9 (nv + nv / 4)`` loads and FMAs on a padded map's wide
    rows. The nine weights stay in registers per channel. MobileNetV2's 384-channel 8x8 layer
    (AVX-512), kernel alone, AMD Zen 4, 1 thread: 6.4 us against 12.8 us (``dw9`` on wide
    rows of 10); its 960-channel 4x4 layers (AVX2): 8 us against 24 (``dw9`` and a crop).

    Parameter array ``k``: weights (9 per channel), bias (W arena), x, y, res (A arena),
    channels, act, has_res.

    On AVX2 (MobileNetV2's 4x4 maps) the layer, its expand conv's output and its own stay
    plain (``layout.plan_masked``): no wide rows and no crop pass.
    """
    ow = lanes // 2
    cols = [sum(1 << lane for lane in range(lanes) if 0 <= lane % ow + j - 1 < ow)
            for j in range(3)]
    top, bottom = (1 << lanes) - (1 << ow), (1 << ow) - 1
    loads = []
    for r in range(-1, 2 * nv):
        rows = top if r == -1 else bottom if r == 2 * nv - 1 else (1 << lanes) - 1
        hits = [(i, v) for i in range(3) for v in range(nv) if 2 * v + i - 1 == r]
        for j in range(3):
            loads.append(f"{{ const vf l = VLOADZ(x + {ow * r + j - 1}, {cols[j] & rows:#x}); "
                         + " ".join(f"a{v} = VFMA(w{3 * i + j}, l, a{v});" for i, v in hits) + " }")
    weights = " ".join(f"const vf w{q} = VSET1(w9[{q}]);" for q in range(9))
    accs = ", ".join(f"a{v} = b" for v in range(nv))
    stores = " ".join(f"{{ vf z = a{v}; if (hr) z = VADD(z, VLOAD(rp + {v} * VL)); "
                      f"VSTORE(y + {v} * VL, v_act(z, act)); }}" for v in range(nv))
    body = "\n    ".join(loads)
    return f"""static {NOINLINE} void mdw_v{nv}(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  (void)I;
  const float* wt = W + k[0]; const float* bias = W + k[1];
  const float* X = A + k[2]; float* Y = A + k[3]; const float* R = A + k[4]; (void)R;
  const int act = k[6], hr = k[7];
  PART(k[5])
  for (int c = lo; c < hi; ++c) {{
    const float* w9 = wt + 9L * c; const float* x = X + (long)c * {nv * lanes};
    float* y = Y + (long)c * {nv * lanes}; const float* rp = R + (long)c * {nv * lanes}; (void)rp;
    {weights}
    const vf b = VSET1(bias[c]); vf {accs};
    {body}
    {stores}
  }}
}}
"""


def band_statements(h: int, masked: bool, yq: str = "wq", stride: int = 1,
                    taps: tuple[str, str, str] = ("0", "1", "2"), init: str = "bb") -> str:
    """Statements of a band of ``h`` rows: FMAs, then full (or masked: ``n`` lanes) stores of
    output rows ``yq`` apart (C names: input rows ``wq`` apart from ``xc``, output and
    residual from ``yp`` / ``rp``; accumulators start at ``init``). Output row ``r`` reads
    input rows ``stride * r`` to ``stride * r + 2``; kernel column ``j`` at ``xc + taps[j]``
    in each."""
    fmas = []
    for j in range(3):
        for m in range(stride * (h - 1) + 3):
            hits = [((m - i) // stride, i) for i in range(3)
                    if (m - i) % stride == 0 and 0 <= (m - i) // stride < h]
            fmas.append(f"{{ vf x = VLOAD(xc + {m} * wq + {taps[j]}); VREG(x); "
                        + " ".join(f"a{r} = VFMA(w{3 * i + j}, x, a{r});" for r, i in hits) + " }")
    load, store = ("VLOADM(rp + {o}, n)", "VSTOREM(yp + {o}, v_act(y, act), n)") if masked else \
        ("VLOAD(rp + {o})", "VSTORE(yp + {o}, v_act(y, act))")
    out = " ".join(f"{{ vf y = a{r}; if (hr) y = VADD(y, {load.format(o=f'{r} * {yq}')}); "
                   f"{store.format(o=f'{r} * {yq}')}; }}" for r in range(h))
    return "\n".join([" ".join(f"vf a{r} = {init};" for r in range(h)), *fmas, out])


def dwband_template() -> str:
    """C text of ``dwband``. Parameter array ``k``: rows, offsets (9 per row; I arena), weights
    (9 per row), bias (W arena), x, y, res (A arena), nrows, T, ys, yo, act, has_res, wq, ow.

    Whole bands first, then the ``oh % BAND`` last rows one at a time, in separate loops: one
    loop switching between band heights made gcc spill the weights (52 against 37 us)."""
    pad = "\n" + " " * 8
    weights = " ".join(f"const vf w{q} = VSET1(w9[{q}]);" for q in range(9))
    loop = """      int c0 = 0;
      for (; c0 + VL <= ow; c0 += VL) {{
        const long at = (long)r0 * wq + c0;
        const float* xc = x0 + at; float* yp = y + at; const float* rp = rq + at; (void)rp;
        {full}
      }}
      if (c0 < ow) {{  /* the last, partial tile of each row */
        const int n = ow - c0; const long at = (long)r0 * wq + c0;
        const float* xc = x0 + at; float* yp = y + at; const float* rp = rq + at; (void)rp;
        {part}
      }}"""

    def rows(h: int) -> str:
        return loop.format(full=band_statements(h, False).replace(chr(10), pad),
                           part=band_statements(h, True).replace(chr(10), pad))

    return f"""static {NOINLINE} void dwband(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* rows = I + k[0]; const int* offs = I + k[1];
  const float* wt = W + k[2]; const float* bias = W + k[3];
  const float* X = A + k[4]; float* Y = A + k[5]; const float* R = A + k[6]; (void)R;
  const int T = k[8], ys = k[9], yo = k[10], act = k[11], hr = k[12], wq = k[13], ow = k[14];
  const int oh = T / wq;
  PART(k[7])
  for (int b = lo; b < hi; ++b) {{
    const int r = rows[b]; const float* w9 = wt + 9 * b;
    {weights}
    const vf bb = VSET1(bias[r]);
    const float* x0 = X + offs[9 * b];
    float* y = Y + (long)r * ys + yo; const float* rq = R + (long)r * ys + yo;
    int r0 = 0;
    for (; r0 + {BAND} <= oh; r0 += {BAND}) {{
{rows(BAND)}
    }}
    for (; r0 < oh; ++r0) {{
{rows(1)}
    }}
  }}
}}
"""


def use_s2_plane4(in_shape: tuple[int, ...], src: tuple[int, int, int],
                  dst: tuple[int, int, int], res: tuple[int, int, int] | None,
                  isa_name: str) -> bool:
    """``S2_PLANE4_TEMPLATE`` serves a stride-2 depthwise layer (``heuristics.is_depthwise_s2``):
    AVX-512, an 8x8 input in a padded layout (``src``: channel / row stride, offset of pixel
    (0, 0)), a plain 4x4 output and residual (``dst``, ``res``)."""
    return (isa_name == "avx512" and tuple(in_shape[1:]) == (8, 8) and src == (100, 10, 11)
            and dst == (16, 4, 0) and res in (None, (16, 4, 0)))


#: Depthwise 3x3 / stride 2 from an 8x8 map in a padded 10x10 plane to a plain 4x4 output,
#: AVX-512: the 16 output pixels are one vector. Output row ``y`` reads padded rows ``2y + ky``;
#: per tap row ``ky`` two vector pairs hold rows ``ky, ky + 2`` (output rows 0-1) and ``ky + 4,
#: ky + 6`` (rows 2-3) at offsets 0 and 20, and tap ``(ky, kx)`` of pixel ``(y, x)`` is float
#: ``20 (y % 2) + 2x + kx`` of its pair: one two-source permute per half, summed into two
#: accumulators blended at the end. ``dws2`` split each channel's rows into an on-stack buffer
#: first and then ran 4 output rows of 4 lanes each (MobileNetV2's 576 channels: 19.5 us).
#: Parameter array ``k``: as ``kernels.DWS2_TEMPLATE``.
S2_PLANE4_TEMPLATE = f"""static {NOINLINE} void dws2_plane4(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* rows = I + k[0]; const int* chans = I + k[1];
  const float* wt = W + k[2]; const float* bias = W + k[3];
  const float* X = A + k[4]; float* Y = A + k[5]; const float* R = A + k[6]; (void)R;
  const int dp = k[12], rp = k[15], act = k[18], hr = k[19], xcs = k[20];
  const __m512i i0 = _mm512_setr_epi32(0, 2, 4, 6, 20, 22, 24, 26, 0, 2, 4, 6, 20, 22, 24, 26);
  const __m512i i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(1));
  const __m512i i2 = _mm512_add_epi32(i0, _mm512_set1_epi32(2));
  PART(k[7])
  for (int b = lo; b < hi; ++b) {{
    const int r = rows[b]; const float* w9 = wt + 9 * b;
    const float* p = X + (long)chans[b] * xcs;  /* the padded plane, border included */
    vf top = VZERO(), bot = VZERO();
    for (int ky = 0; ky < 3; ++ky) {{
      const float* q = p + 10 * ky;
      const vf a0 = VLOAD(q), a1 = VLOAD(q + 16), b0 = VLOAD(q + 40), b1 = VLOAD(q + 56);
      const vf w0 = VSET1(w9[3 * ky]), w1 = VSET1(w9[3 * ky + 1]), w2 = VSET1(w9[3 * ky + 2]);
      top = VFMA(w0, _mm512_permutex2var_ps(a0, i0, a1), top);
      bot = VFMA(w0, _mm512_permutex2var_ps(b0, i0, b1), bot);
      top = VFMA(w1, _mm512_permutex2var_ps(a0, i1, a1), top);
      bot = VFMA(w1, _mm512_permutex2var_ps(b0, i1, b1), bot);
      top = VFMA(w2, _mm512_permutex2var_ps(a0, i2, a1), top);
      bot = VFMA(w2, _mm512_permutex2var_ps(b0, i2, b1), bot);
    }}
    vf z = VADD(_mm512_mask_blend_ps((__mmask16)0xFF00, top, bot), VSET1(bias[r]));
    if (hr) z = VADD(z, VLOAD(R + (long)r * rp));
    VSTORE(Y + (long)r * dp, v_act(z, act));
  }}
}}
"""
