"""Winograd F(2x2, 3x3) for dense 3x3 / stride-1 / pad-1 convs.

A dense 3x3 conv computes each 2x2 output tile from a 4x4 input patch with 36 multiplies per
input channel and output channel; Winograd's minimal filtering (Lavin & Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016) needs 16: ``Y = A^T [(G g G^T) .
(B^T d B)] A``. The 16 products of one tile are 16 independent GEMMs over the channels, so
a layer becomes an input transform (adds), 16 small GEMMs (FMAs) and an output transform
(adds, then bias, residual and activation). Pruned layers keep the direct kernels: the
transform spreads a kernel's zeros over all 16 points.

``WINO_TEMPLATE`` vectorises along tiles: one work item is one vector of tiles (row-major
order), from one tile row (maps whose width is a multiple of ``2 * lanes``), from two (maps
exactly ``lanes`` wide), or from anywhere (other maps, as 8x8 or 14x14 with 16 lanes: gathered
through index tables, the last vector filled up with copies of the last tile). Row walks select a patch's columns from the
source rows by even / odd lanes; the source has a zero border (the padded layout, or a padded
copy). All input channels' transformed patches (``16 * cin`` vectors on the stack) feed the
16 GEMMs, 8 output channels and 2 points at a time (16 accumulators); the output transform
interleaves the 2x2 tiles back into rows, stores each of them into one of the four phase
planes of a phase-split destination, or scatters them. A map of fewer vectors of tiles than
threads has its output channels split between them (``Plan.parts``).

Measured against the direct kernels (AMD Zen 4): a 16 -> 16 channel 32x32 layer (ResNet-20's
first stage) 52 -> 33 us in a standalone C driver, 32 -> 32 at 16x16 45 -> 27 (1 thread).
Unpruned models end to end, same process, two copies each interleaved with ONNX Runtime:
ResNet-20 897 -> 588 us at 1 thread (0.96x -> 1.47x of ORT), 523 -> 411 us at 2 threads
(1.02x -> 1.29x); VGG-16 8.43 -> 6.70 ms (1.21x -> 1.53x) and 5.08 -> 4.55 ms (1.14x ->
1.27x). The Fig. 9 layers with a partly filled last vector, one layer interleaved with ORT:
3x3 128@28 2446 -> 1336 us at 1 thread (0.91x -> 1.67x of ORT), 1311 -> 758 at 2; 256@14
2348 -> 1443 us (0.96x -> 1.56x), 1313 -> 763 at 2. Not taken: 3-channel stems (ResNet-20 block 4x / 8x 1.000 / 1.005 of the direct
kernel's time at 1 thread, 1.022 at 2; MobileNetV2 block 8x 0.998 at 1 thread, 1.014 at 2),
and ResNet-20's 8x8 maps at 2 threads with the output channels split (unpruned model 0.992
of the time with the direct kernels there; 1.042 with each gathered plane prefetched).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from compiler_backend.ir import ConvOp
from compiler_backend.kernels import NOINLINE

#: Output channels per GEMM tile (the template's accumulator rows).
COUT_BLOCK = 8
#: Most input channels: the transformed patches of one work item live on the stack
#: (``16 * cin`` vectors: 256 KB at 256 channels with 16 lanes).
MAX_CIN = 256
#: Fewest input channels for which the untuned choice takes Winograd (``prefers``).
MIN_CIN = 8
#: Least share of the gathered walk's lanes holding tiles of their own (``lane_use``; 14x14
#: with 16 lanes: 49 tiles in 4 vectors, 0.77; 4x4: 0.25).
MIN_LANE_USE = 0.75

_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def rows_fit(h: int, w: int, lanes: int) -> bool:
    """A vector of tiles comes from whole input rows: a width of whole pairs of vectors, or
    of one vector (two tile rows per vector)."""
    return w % (2 * lanes) == 0 or (w == lanes and h % 4 == 0)


def eligible(op: ConvOp, lanes: int) -> bool:
    """``op`` is a dense 3x3 / stride-1 / pad-1 conv (one group) on an even map whose tiles
    fill whole vectors by rows (``rows_fit``) or, gathered, at least ``MIN_LANE_USE`` of
    their lanes, with output channels in whole ``COUT_BLOCK`` blocks."""
    if op.is_linear or len(op.in_shape) != 3:
        return False
    cin, h, w = op.in_shape
    cout = op.out_shape[0]
    return (tuple(op.weight.shape[2:]) == (3, 3) and op.stride == 1 and op.groups == 1
            and tuple(op.padding) == (1, 1) and tuple(op.out_shape[1:]) == (h, w)
            and h % 2 == 0 and w % 2 == 0
            and (rows_fit(h, w, lanes) or lane_use(h, w, lanes) >= MIN_LANE_USE)
            and cout % COUT_BLOCK == 0 and cin <= MAX_CIN and bool(op.kept.all()))


def prefers(op: ConvOp, lanes: int) -> bool:
    """The untuned choice: Winograd where it is eligible and the input transform is shared by
    enough channels (a 3-channel stem gains nothing)."""
    return eligible(op, lanes) and op.in_shape[0] >= MIN_CIN


def splits_tiles(op: ConvOp, lanes: int, threads: int) -> bool:
    """Every thread gets vectors of tiles of its own. Otherwise the output channels are split
    and each thread transforms the whole input, half of it written by the other core:
    ResNet-20's 8x8 layers (one vector of tiles) took 49 us at 2 threads against 34 at 1
    (per-op profile, AMD Zen 4); the direct kernels split them better, so the untuned choice
    keeps those at 2 threads."""
    _, h, w = op.in_shape
    return plan(h, w, op.out_shape[0], lanes, threads).vectors >= threads


def transformed_weights(op: ConvOp) -> np.ndarray:
    """``G g G^T`` of every kernel, packed for the template: point ``p`` (16), block of
    ``COUT_BLOCK`` output channels, input channel, then the block's channels."""
    cout, cin = op.weight.shape[:2]
    u = np.einsum("ik,ockl,jl->ijoc", _G, op.weight.astype(np.float64), _G)  # (4, 4, co, ci)
    u = u.reshape(16, cout // COUT_BLOCK, COUT_BLOCK, cin).transpose(0, 1, 3, 2)
    return np.ascontiguousarray(u, np.float32)


@dataclass(frozen=True)
class Plan:
    """How ``WINO_TEMPLATE`` walks one layer: ``vectors`` of tiles, ``per_row`` of them per
    tile row (rows mode), ``two`` tile rows per vector, ``gathered`` tiles (index tables) and
    the output channels cut into ``parts`` work items per vector (so that a map of one
    vector still feeds every thread)."""

    vectors: int
    per_row: int
    two: bool
    gathered: bool
    parts: int


def plan(h: int, w: int, cout: int, lanes: int, threads: int) -> Plan:
    """The walk of an ``h x w`` map (``eligible``) with ``threads`` threads."""
    if rows_fit(h, w, lanes):
        two = w == lanes
        per_row = 1 if two else w // (2 * lanes)
        vectors = h // 4 if two else h // 2 * per_row
        gathered = False
    else:
        vectors, per_row, two, gathered = _gathered_vectors(h, w, lanes), 1, False, True
    parts = min(threads, cout // COUT_BLOCK) if vectors < threads else 1
    return Plan(vectors, per_row, two, gathered, parts)


def _gathered_vectors(h: int, w: int, lanes: int) -> int:
    """Vectors of the gathered walk: the map's 2x2 tiles, the last vector filled up."""
    return -(-(h * w // 4) // lanes)


def lane_use(h: int, w: int, lanes: int) -> float:
    """Share of the gathered walk's lanes holding a tile of their own."""
    return h * w // 4 / (_gathered_vectors(h, w, lanes) * lanes)


def _tiles(h: int, w: int, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile row and column of every lane, per vector of tiles (row-major tile order: the
    order of both walks). Lanes past the last tile repeat it: they gather its patch and
    scatter its outputs again, the same values to the same places."""
    t = np.minimum(np.arange(_gathered_vectors(h, w, lanes) * lanes), h * w // 4 - 1)
    ty, tx = np.divmod(t, w // 2)
    return ty.reshape(-1, 1, lanes), tx.reshape(-1, 1, lanes)


def patch_table(h: int, w: int, lanes: int, xs: int) -> np.ndarray:
    """Gathered patches: per vector of tiles, the 16 patch points' offsets from input pixel
    (-1, -1) (rows ``xs`` apart); lanes innermost."""
    ty, tx = _tiles(h, w, lanes)
    r, c = np.divmod(np.arange(16), 4)
    return ((2 * ty + r[:, None]) * xs + 2 * tx + c[:, None]).ravel()


def output_table(h: int, w: int, lanes: int, where: Callable[[np.ndarray, np.ndarray],
                                                              np.ndarray]) -> np.ndarray:
    """Scattered outputs: per vector of tiles, the 2x2 outputs' offsets ``where(y, x)``."""
    ty, tx = _tiles(h, w, lanes)
    a, b = np.divmod(np.arange(4), 2)
    return where(2 * ty + a[:, None], 2 * tx + b[:, None]).ravel()


WINO_TEMPLATE = NOINLINE + r""" void wino(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {
  /* k: X (padded: pixel (-1, -1)), its row and channel strides, cin, U, bias, Y (pixel
     (0, 0)), its row and channel strides, cout, vectors per tile row, two tile rows per
     vector, work items, R (pixel (0, 0)), its row and channel strides, act, hr, then for
     gathered patches (gat) and scattered outputs (gout 1) the index tables of X, Y and R;
     parts of the output channels; outputs: rows (gout 0), scattered (1), phase planes (2,
     rows ys apart, phases pstride apart) */
  const float* X = A + k[0]; const int xs = k[1], xc = k[2], cin = k[3];
  const float* U = W + k[4]; const float* bias = W + k[5];
  float* Y = A + k[6]; const int ys = k[7], yc = k[8], cout = k[9];
  const int nv = k[10], two = k[11], nwork = k[12];
  const float* R = A + k[13]; const int rs = k[14], rc = k[15];
  const int act = k[16], hr = k[17]; (void)R; (void)rs; (void)rc;
  const int* xi = I + k[18]; const int* yi = I + k[19]; const int* ri = I + k[20];
  const int gat = k[21], nsplit = k[22], gout = k[23], pstride = k[24]; (void)ri; (void)pstride;
  /* a vector's second half of a row: the next VL floats, or the tile row below */
  const int xsec = two ? 2 * xs : VL, ysec = two ? 2 * ys : VL, rsec = two ? 2 * rs : VL;
  (void)rsec;
  vf V[16 * cin];  /* transformed patches: point, input channel */
  vf M[16 * 8];    /* GEMM results of 8 output channels: point, channel */
  PART(nwork)
  for (int wi = lo; wi < hi; ++wi) {
    const int tv = wi / nsplit, part = wi % nsplit;
    const int ty = two ? 2 * tv : tv / nv, j = two ? 0 : tv % nv;
    const float* x = X + 2 * ty * xs + 2 * VL * j;
    for (int ci = 0; ci < cin; ++ci, x += xc) {
      vf t[4][4];  /* B^T d: rows of the patch combined */
      for (int r = 0; r < 4; ++r) {
        vf d0, d1, d2, d3;
        if (gat) {
          const int* ix = xi + (tv * 16 + 4 * r) * VL; const float* xp = X + (long)ci * xc;
          d0 = VGATHER(xp, ix); d1 = VGATHER(xp, ix + VL);
          d2 = VGATHER(xp, ix + 2 * VL); d3 = VGATHER(xp, ix + 3 * VL);
        } else {
          const float* p = x + r * xs;
          const vf a = VLOAD(p), b = VLOAD(p + xsec), c = VLOAD(p + 2), e = VLOAD(p + 2 + xsec);
          d0 = VEVEN(a, b); d1 = VODD(a, b); d2 = VEVEN(c, e); d3 = VODD(c, e);
        }
        t[r][0] = VSUB(d0, d2); t[r][1] = VADD(d1, d2); t[r][2] = VSUB(d2, d1);
        t[r][3] = VSUB(d1, d3);
      }
      for (int c = 0; c < 4; ++c) {  /* (B^T d) B */
        V[c * cin + ci] = VSUB(t[0][c], t[2][c]);
        V[(4 + c) * cin + ci] = VADD(t[1][c], t[2][c]);
        V[(8 + c) * cin + ci] = VSUB(t[2][c], t[1][c]);
        V[(12 + c) * cin + ci] = VSUB(t[1][c], t[3][c]);
      }
    }
    const int nb = cout / 8, cb0 = nb * part / nsplit * 8, cb1 = nb * (part + 1) / nsplit * 8;
    for (int cb = cb0; cb < cb1; cb += 8) {
      for (int p = 0; p < 16; p += 2) {
        vf a0 = VZERO(), a1 = VZERO(), a2 = VZERO(), a3 = VZERO();
        vf a4 = VZERO(), a5 = VZERO(), a6 = VZERO(), a7 = VZERO();
        vf b0 = VZERO(), b1 = VZERO(), b2 = VZERO(), b3 = VZERO();
        vf b4 = VZERO(), b5 = VZERO(), b6 = VZERO(), b7 = VZERO();
        const vf* v0 = V + p * cin; const vf* v1 = v0 + cin;
        const float* u0 = U + ((long)p * cout + cb) * cin;
        const float* u1 = u0 + (long)cout * cin;
        for (int ci = 0; ci < cin; ++ci, u0 += 8, u1 += 8) {
          const vf x0 = v0[ci], x1 = v1[ci];
          a0 = VFMA(VSET1(u0[0]), x0, a0); a1 = VFMA(VSET1(u0[1]), x0, a1);
          a2 = VFMA(VSET1(u0[2]), x0, a2); a3 = VFMA(VSET1(u0[3]), x0, a3);
          a4 = VFMA(VSET1(u0[4]), x0, a4); a5 = VFMA(VSET1(u0[5]), x0, a5);
          a6 = VFMA(VSET1(u0[6]), x0, a6); a7 = VFMA(VSET1(u0[7]), x0, a7);
          b0 = VFMA(VSET1(u1[0]), x1, b0); b1 = VFMA(VSET1(u1[1]), x1, b1);
          b2 = VFMA(VSET1(u1[2]), x1, b2); b3 = VFMA(VSET1(u1[3]), x1, b3);
          b4 = VFMA(VSET1(u1[4]), x1, b4); b5 = VFMA(VSET1(u1[5]), x1, b5);
          b6 = VFMA(VSET1(u1[6]), x1, b6); b7 = VFMA(VSET1(u1[7]), x1, b7);
        }
        vf* mp = M + p * 8;
        mp[0] = a0; mp[1] = a1; mp[2] = a2; mp[3] = a3; mp[4] = a4; mp[5] = a5; mp[6] = a6;
        mp[7] = a7; mp[8] = b0; mp[9] = b1; mp[10] = b2; mp[11] = b3; mp[12] = b4; mp[13] = b5;
        mp[14] = b6; mp[15] = b7;
      }
      for (int i = 0; i < 8; ++i) {  /* A^T M A, bias, residual, activation */
        const int co = cb + i;
        const vf* m = M + i;
        vf s[4], q[4];
        for (int c = 0; c < 4; ++c) {
          const vf m1 = m[(4 + c) * 8], m2 = m[(8 + c) * 8];
          s[c] = VADD(VADD(m[c * 8], m1), m2);
          q[c] = VSUB(VSUB(m1, m2), m[(12 + c) * 8]);
        }
        const vf bb = VSET1(bias[co]);
        vf y00 = VADD(VADD(VADD(s[0], s[1]), s[2]), bb);
        vf y01 = VADD(VSUB(VSUB(s[1], s[2]), s[3]), bb);
        vf y10 = VADD(VADD(VADD(q[0], q[1]), q[2]), bb);
        vf y11 = VADD(VSUB(VSUB(q[1], q[2]), q[3]), bb);
        if (gout == 2) {  /* phase-split output: y00 / y01 / y10 / y11 to phases 3 / 2 / 1 / 0 */
          if (hr) {  /* the residual's even / odd columns */
            const float* rp = R + (long)co * rc + 2 * ty * rs + 2 * VL * j;
            const vf r0 = VLOAD(rp), r1 = VLOAD(rp + rsec);
            const vf r2 = VLOAD(rp + rs), r3 = VLOAD(rp + rs + rsec);
            y00 = VADD(y00, VEVEN(r0, r1)); y01 = VADD(y01, VODD(r0, r1));
            y10 = VADD(y10, VEVEN(r2, r3)); y11 = VADD(y11, VODD(r2, r3));
          }
          float* yp = Y + (long)co * yc + ty * ys + VL * j;
          float* const ph[4] = {yp + 3 * pstride, yp + 2 * pstride + 1,
                                yp + pstride + ys, yp + ys + 1};
          const vf yv[4] = {v_act(y00, act), v_act(y01, act), v_act(y10, act), v_act(y11, act)};
          for (int q = 0; q < 4; ++q) {
            if (two) {  /* lanes of the second tile row: the phase plane's next row */
              VSTOREM_AT(ph[q], yv[q], 0, VL / 2);
              VSTOREM_AT(ph[q] + ys - VL / 2, yv[q], VL / 2, VL / 2);
            } else {
              VSTORE(ph[q], yv[q]);
            }
          }
          continue;
        }
        if (gout) {  /* outputs anywhere: index tables of the 2x2 outputs */
          const int* iy = yi + tv * 4 * VL; float* yp = Y + (long)co * yc;
          if (hr) {
            const int* ir = ri + tv * 4 * VL; const float* rp = R + (long)co * rc;
            y00 = VADD(y00, VGATHER(rp, ir)); y01 = VADD(y01, VGATHER(rp, ir + VL));
            y10 = VADD(y10, VGATHER(rp, ir + 2 * VL)); y11 = VADD(y11, VGATHER(rp, ir + 3 * VL));
          }
          VSCATTER(yp, iy, v_act(y00, act)); VSCATTER(yp, iy + VL, v_act(y01, act));
          VSCATTER(yp, iy + 2 * VL, v_act(y10, act)); VSCATTER(yp, iy + 3 * VL, v_act(y11, act));
          continue;
        }
        vf o0 = VZIPLO(y00, y01), o1 = VZIPHI(y00, y01);
        vf o2 = VZIPLO(y10, y11), o3 = VZIPHI(y10, y11);
        float* yp = Y + (long)co * yc + 2 * ty * ys + 2 * VL * j;
        if (hr) {
          const float* rp = R + (long)co * rc + 2 * ty * rs + 2 * VL * j;
          o0 = VADD(o0, VLOAD(rp)); o1 = VADD(o1, VLOAD(rp + rsec));
          o2 = VADD(o2, VLOAD(rp + rs)); o3 = VADD(o3, VLOAD(rp + rs + rsec));
        }
        VSTORE(yp, v_act(o0, act)); VSTORE(yp + ysec, v_act(o1, act));
        VSTORE(yp + ys, v_act(o2, act)); VSTORE(yp + ys + ysec, v_act(o3, act));
      }
    }
  }
}
"""
