"""Masked-row kernels: block-sparse 3x3 convs on 8-wide maps, real pixels only (AVX-512).

A spatial tile on a padded 8x8 map computes wide rows of 10 pixels, two of them junk: a
fifth of its FMAs and stores are thrown away. Here the map stays plain (``C x 8 x 8``) and a
vector holds two whole rows, 16 real pixels. Each kept entry (input channel, tap) loads its
pixel vectors at the tap's offset with a *zero-masking* load: the lanes whose input pixel
falls outside the map (the padding) read nothing and hold zero, so no padded copy and no junk
column is needed. The mask depends only on the tap and on which rows the vector holds, so one
16-bit mask per (tap, vector) is precomputed (``lane_masks``); on AVX-512 a masked load is
one load micro-op, like a plain one.

Tiles are ``P`` rows of a row block x ``V`` vectors, as in the spatial family: per entry
``V`` masked pixel loads, ``P`` broadcast weights and ``P * V`` FMAs. The output and the
residual are plain, so stores need no mask either.

Measured (kernel alone, AVX-512 host, 1 thread, block 8x16 at 8x, 64 channels): 4.4 us as
8 rows x 2 vectors with a residual and ReLU fused, against 5.0 us for the spatial kernel's
4 x 5 on the padded map without them. On 16-wide maps (junk 11 %) it did not pay (4.6 against
4.4 us), so only maps of half a vector's width take it.

Pattern-pruned convs on such maps (rows sharing no entries) run the sweep family's loop nest
instead, each tap's pixel vectors loaded with the same masks (``sweep_template(masked=True)``,
``codegen._Builder.masked_conv`` with one-row tiles): 4 vectors per 8x8 map instead of 5 wide ones.
ResNet-20 / VGG-16 pattern 8x end to end, 1 thread, AMD Zen 4: 230.5 -> 218.5 us and
2278 -> 2141 us (same-process A/B, two copies each).
"""

from __future__ import annotations

import math

import numpy as np

from compiler_backend.ir import ConvOp
from compiler_backend.kernels import NOINLINE

#: Vector width (lanes) the family needs: zero-masking loads by a 16-bit mask (AVX-512).
MASKED_LANES = 16
#: Largest input (bytes) a tile sweeps whole for every row block (the family has no
#: input-channel chunks): ResNet-20's 64-channel 8x8 maps take 16 KB, VGG-16's 256-channel
#: ones 64 KB (from L2, and still faster: block 8x, 1 thread, its three 8x8 layers ran 45 /
#: 92 / 92 -> 38 / 74 / 74 us; dense 287 / 573 / 572 -> 286 / 569 / 569 us).
MAX_INPUT_BYTES = 64 * 1024


def plain_rows_3x3(op: ConvOp, lanes: int) -> bool:
    """``op`` is a 3x3 / stride-1 / pad-1 conv keeping its map size, on a map of an even
    number of rows, each half a vector of ``lanes`` wide: two rows per vector."""
    if op.is_linear or len(op.in_shape) != 3 or op.stride != 1:
        return False
    _, h, w = op.in_shape
    _, oh, ow = op.out_shape
    return (tuple(op.weight.shape[2:]) == (3, 3) and tuple(op.padding) == (1, 1)
            and (h, w) == (oh, ow) and 2 * ow == lanes and oh % 2 == 0)


def masked_eligible(op: ConvOp, lanes: int) -> bool:
    """The family can run ``op``: a conv of one group on such a map of ``MASKED_LANES``
    (``plain_rows_3x3``) whose input is at most ``MAX_INPUT_BYTES``."""
    return (lanes == MASKED_LANES and plain_rows_3x3(op, lanes) and op.groups == 1
            and 4 * math.prod(op.in_shape) <= MAX_INPUT_BYTES)


def lane_masks(op: ConvOp, lanes: int) -> np.ndarray:
    """[9 taps, vectors] bit ``l`` set where lane ``l`` of the vector reads a pixel of the map
    (not the padding) for that tap."""
    _, oh, ow = op.out_shape
    nv = oh * ow // lanes
    p = np.arange(nv * lanes).reshape(nv, lanes)
    y, x = np.divmod(p, ow)
    bits = 1 << np.arange(lanes)
    out = np.zeros((9, nv), np.int64)
    for tap in range(9):
        dy, dx = divmod(tap, 3)
        inside = (y + dy - 1 >= 0) & (y + dy - 1 < oh) & (x + dx - 1 >= 0) & (x + dx - 1 < ow)
        out[tap] = (inside * bits).sum(1)
    return out


def entry_offsets(cols: np.ndarray, op: ConvOp) -> tuple[np.ndarray, np.ndarray]:
    """(input offset relative to the output pixel, tap) of each entry ``ci * 9 + tap``."""
    _, h, w = op.in_shape
    ci, tap = np.divmod(cols, 9)
    dy, dx = np.divmod(tap, 3)
    return ci * h * w + (dy - 1) * w + (dx - 1), tap


def masked_template(key: str, p: int, v: int) -> str:
    """The kernel ``key``: tiles of ``p`` rows x ``v`` vectors over a plain map.

    Parameter array ``k`` (I arena unless noted): rows, eptr, offsets, taps x vectors of each
    entry (``tap * nv``), weights (W), bias (W), x, y, res (A), nblk, npx, act, has_res, lane
    masks, vectors per map.
    """
    acc = [f"a{r}_{u}" for r in range(p) for u in range(v)]
    init = " ".join(f"{{ const vf b = VSET1(bias[rw[{r}]]); "
                    + " ".join(f"a{r}_{u} = b;" for u in range(v)) + " }" for r in range(p))
    loads = " ".join(f"const vf x{u} = VLOADZ(xp + {u} * VL, m[{u}]);" for u in range(v))
    fmas = "\n".join(f"        {{ const vf w = VSET1(wp[{r}]); "
                     + " ".join(f"a{r}_{u} = VFMA(w, x{u}, a{r}_{u});" for u in range(v)) + " }"
                     for r in range(p))
    stores = "\n".join(
        f"      {{ float* yp = Y + (long)rw[{r}] * npx + t; const float* rp = R + (long)rw[{r}] * npx + t; "
        + " ".join(f"{{ vf y = a{r}_{u}; if (hr) y = VADD(y, VLOAD(rp + {u} * VL)); "
                   f"VSTORE(yp + {u} * VL, v_act(y, act)); }}" for u in range(v)) + " }"
        for r in range(p))
    return f"""
static {NOINLINE} void {key}(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* rows = I + k[0]; const int* eptr = I + k[1]; const int* off = I + k[2];
  const int* mo = I + k[3]; const float* wt = W + k[4]; const float* bias = W + k[5];
  const float* X = A + k[6]; float* Y = A + k[7]; const float* R = A + k[8]; (void)R;
  const int nblk = k[9], npx = k[10], act = k[11], hr = k[12]; const int* masks = I + k[13];
  const int ntile = k[14] / {v};
  PART(nblk * ntile)
  for (int it = lo; it < hi; ++it) {{
    const int b = it / ntile, j0 = it % ntile * {v}, t = j0 * VL;
    const int* rw = rows + b * {p};
    {' '.join(f'vf {a};' for a in acc)}
    {init}
    const float* wp = wt + (long)eptr[b] * {p};
    _Pragma("GCC unroll 4") for (int e = eptr[b]; e < eptr[b + 1]; ++e, wp += {p}) {{
      const float* xp = X + off[e] + t; const int* m = masks + mo[e] + j0;
      {loads}
{fmas}
    }}
{stores}
  }}
}}
"""
