"""Detect a layer's sparsity structure from its mask and pack it into the row-block format.

Every conv / linear layer is stored as *row blocks*: ``P`` output rows that share one list of
kept (input channel, tap) entries; each entry holds ``P`` weights. This one format covers all
pruning schemes:

* dense: every row keeps every entry -> blocks of 8 identical rows;
* filter: the kept filters form the same dense blocks (and get the same tile) as the unpruned
  layer, scattered to their output channels through ``rows``; the all-zero rows go to a
  trailing segment of blocks without entries, for which the generator emits only a vector fill
  of the epilogue ``act(bias [+ residual])`` (downstream layers read it);
* block-punched / block-based: rows of one block keep identical entries -> exact blocks;
* pattern + connectivity: rows are sorted so that similar kernels are adjacent (FKR-style
  filter-kernel reorder) and grouped when the cost model says the union is worth it;
* unstructured: usually ``P = 1`` (one CSR row per block).

The channel-vectorised family stores blocks of ``L`` (vector width) rows instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Relative efficiency of the spatial micro-kernel per block height P (measured shape, PERF_NOTES §3f).
_EFFICIENCY = {1: 0.30, 2: 0.45, 4: 0.65, 8: 0.75}


@dataclass(frozen=True)
class Segment:
    """Blocks of ``p`` rows.

    Attributes:
        p: rows per block.
        rows: [nblk, p] int32 output rows (-1 pads a partial channel-family block).
        eptr: [nblk + 1] int32 start of each block's entries.
        cols: [nnz] int64 global entry index ``ci * kh * kw + i * kw + j``.
        weights: [nnz, p] float32.
    """

    p: int
    rows: np.ndarray
    eptr: np.ndarray
    cols: np.ndarray
    weights: np.ndarray

    @property
    def nblk(self) -> int:
        return int(self.rows.shape[0])


def run_starts(keys: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal consecutive ``keys``."""
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else np.zeros(0, np.int64)


def full_matrices(weight: np.ndarray, kept: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Expand a grouped [Cout, Cin/g, kh, kw] weight to [Cout, Cin*kh*kw] (weights, kept)."""
    cout, cin_g, kh, kw = weight.shape
    per = cin_g * kh * kw
    if groups == 1:
        return (np.ascontiguousarray(weight.reshape(cout, per), np.float32),
                np.ascontiguousarray(kept.reshape(cout, per), bool))
    out_g = cout // groups
    wf = np.zeros((cout, groups * per), np.float32)
    kf = np.zeros((cout, groups * per), bool)
    rows = np.arange(cout)[:, None]
    cols = (rows // out_g) * per + np.arange(per)[None, :]
    wf[rows, cols] = weight.reshape(cout, per)
    kf[rows, cols] = kept.reshape(cout, per)
    return wf, kf


def structure_label(kept: np.ndarray) -> str:
    """A human label for the report: dense / filter / block / pattern / unstructured."""
    cout = kept.shape[0]
    rows = kept.reshape(cout, -1)
    frac = float(rows.mean()) if rows.size else 1.0
    if frac == 1.0:
        return "dense"
    per_row = rows.sum(1)
    if np.all((per_row == 0) | (per_row == rows.shape[1])):
        return "filter"
    keys: dict[bytes, int] = {}
    for r in rows:
        keys[r.tobytes()] = keys.get(r.tobytes(), 0) + 1
    in_groups = sum(n for n in keys.values() if n >= 2)
    if in_groups >= 0.9 * cout and len(keys) < cout:
        return "block"
    if kept.ndim == 4 and kept.shape[2] * kept.shape[3] > 1:
        taps = kept.sum((2, 3)).ravel()
        nz = taps[taps > 0]
        if nz.size and np.all(nz == nz[0]) and nz[0] < kept.shape[2] * kept.shape[3]:
            return "pattern"
    return "unstructured"


def _split(n: int, p_max: int) -> list[int]:
    sizes, p = [], p_max
    while n > 0:
        while p > n:
            p //= 2
        sizes.append(p)
        n -= p
    return sizes


def _union_cost(kf: np.ndarray, rows: list[int], p: int) -> float:
    return float(kf[rows].any(0).sum()) * p / _EFFICIENCY.get(p, 0.75)


def plan_spatial_blocks(kf: np.ndarray, p_max: int) -> dict[int, list[list[int]]]:
    """Group rows into blocks of 8/4/2/1 (<= p_max): exact groups first, then FKR-style."""
    groups: dict[bytes, list[int]] = {}
    for r in range(kf.shape[0]):
        groups.setdefault(np.packbits(kf[r]).tobytes(), []).append(r)
    blocks: dict[int, list[list[int]]] = {}
    loose: list[int] = []
    for rows in groups.values():
        start = 0
        for size in _split(len(rows), p_max):
            if size == 1:
                loose.append(rows[start])
            else:
                blocks.setdefault(size, []).append(rows[start:start + size])
            start += size
    if loose:
        order = sorted(loose, key=lambda r: np.packbits(kf[r]).tobytes(), reverse=True)
        best: tuple[float, int] = (float("inf"), 1)
        for p in (8, 4, 2, 1):
            if p > p_max:
                continue
            cost = 0.0
            start = 0
            for size in _split(len(order), p):
                cost += _union_cost(kf, order[start:start + size], size)
                start += size
            best = min(best, (cost, p))
        start = 0
        for size in _split(len(order), best[1]):
            blocks.setdefault(size, []).append(order[start:start + size])
            start += size
    return blocks


def plan_channel_blocks(kf: np.ndarray, lanes: int) -> list[list[int]]:
    """Blocks of ``lanes`` rows (the last one partial); similar rows are made adjacent."""
    order = sorted(range(kf.shape[0]), key=lambda r: np.packbits(kf[r]).tobytes(), reverse=True)
    return [order[i:i + lanes] for i in range(0, len(order), lanes)]


def pack(wf: np.ndarray, kf: np.ndarray, blocks: list[list[int]], p: int) -> Segment:
    """Pack blocks of rows (each of length <= p; shorter ones padded with -1) into a Segment."""
    nblk = len(blocks)
    rows = np.full((nblk, p), -1, np.int32)
    for b, blk in enumerate(blocks):
        rows[b, :len(blk)] = blk
    if nblk == 0:
        return Segment(p, rows, np.zeros(1, np.int32), np.zeros(0, np.int64),
                       np.zeros((0, p), np.float32))
    lens = (rows >= 0).sum(1)
    flat = rows[rows >= 0]
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    union = np.logical_or.reduceat(kf[flat], starts, axis=0)  # [nblk, ncols]
    b_idx, cols = np.nonzero(union)
    eptr = np.concatenate([[0], np.cumsum(union.sum(1))]).astype(np.int32)
    re = rows[b_idx]  # [nnz, p]
    weights = wf[np.clip(re, 0, None), cols[:, None]] * (re >= 0)
    return Segment(p, rows, eptr, cols.astype(np.int64), weights.astype(np.float32))


def build_segments(weight: np.ndarray, kept: np.ndarray, groups: int, *, family: str,
                   p_max: int, lanes: int) -> list[Segment]:
    """The packed row-block segments of one layer for the given kernel family.

    Spatial family: rows with kept entries are planned as blocks (``plan_spatial_blocks``);
    all-zero rows (pruned filters) follow as one segment of entry-less blocks, so they cost
    neither FMAs nor a smaller tile, and the chunking of the real blocks is not diluted.
    """
    wf, kf = full_matrices(weight, kept, groups)
    if family == "channel":
        return [pack(wf, kf, plan_channel_blocks(kf, lanes), lanes)]
    live = kf.any(1)
    plan = plan_spatial_blocks(kf[live], p_max)
    rows = np.flatnonzero(live)
    segs = [pack(wf, kf, [rows[blk].tolist() for blk in plan[p]], p)
            for p in sorted(plan, reverse=True)]
    idle = np.flatnonzero(~live).tolist()
    if idle:  # pruned filters: codegen writes their epilogue only (``FILL_TEMPLATE``)
        segs.append(pack(wf, kf, [idle[i:i + p_max] for i in range(0, len(idle), p_max)], p_max))
    return segs
