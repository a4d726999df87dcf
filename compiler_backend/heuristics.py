"""Untuned kernel choices: conv geometry, a register-tile cost model and pixel chunking.

The spatial micro-kernel keeps ``P x V`` accumulators (``P`` output rows x ``V`` vectors of
output pixels). Per kept (input channel, tap) entry it issues ``V`` pixel loads, ``P`` weight
broadcasts (memory-operand loads) and ``P * V`` FMAs. On an 8-lane AVX2 core with 16 ymm
registers and 2 FMA pipes (latency 4) the cost model below picks the tile that minimises the
estimated cycles per useful FLOP, including padding waste in the last pixel tile and in row
blocks. AVX-512 uses the same model with 24 accumulators, and takes channel tiles instead on
dense 3x3 rows of 14x14 to 28x28 maps (``_channel_slices_pay``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from compiler_backend.depthwise import masked_dw_eligible
from compiler_backend.ir import ConvOp
from compiler_backend.isa import Isa
from compiler_backend.masked import masked_eligible
from compiler_backend.quads import QUAD, quad_count
from compiler_backend.sparsity import full_matrices, plan_channel_blocks
from compiler_backend.sweep import MAX_PATTERNS, pattern_count
from compiler_backend.tuning.base import KernelConfig
from compiler_backend.winograd import prefers as wino_prefers
from compiler_backend.winograd import splits_tiles as wino_split

#: FMA pipes, FMA latency (cycles), vector loads per cycle, loop overhead (cycles / entry).
_FMA_PIPES, _FMA_LAT, _LOADS, _OVERHEAD = 2, 4, 2, 1.0
#: Input bytes one (pixel chunk, input-channel chunk) may touch (most of a 32 KB L1d).
_L1_BYTES = 12 * 1024
#: Fewest kept entries per row block and input-channel chunk worth a separate chunk. 32
#: rather than 96 (session 7, two copies each, one layer, 1 thread): pattern 8x 64@56 878 ->
#: 752 us, unstructured 10x 256@14 774 -> 619 us, block-punched 4x 64@56 1071 -> 983 us; whole
#: models within the +-10 % run-to-run noise.
_MIN_CHUNK_ENTRIES = 32
#: Dense rows of at most this many entries (a stem reading an RGB image: 27; a 1x1 conv from at
#: most 32 channels) get spatial tiles of at most ``_SHORT_ROW_ACC`` accumulators on 16-lane
#: ISAs (``default_config``). Timed in the model, AVX-512 host, 1 thread, the stems ran faster
#: as 8x2 than as the cost model's 8x3: ResNet-20 8.4 -> 6.9 us, MobileNetV2 18.3 -> 17.6,
#: VGG-16 32.4 -> 29.5. Whole models, old against new interleaved: ResNet-20 block 8x 0.108 ->
#: 0.107 ms (three runs, +0.7 to +0.9 %; 2 threads 0.138 -> 0.135), VGG-16 block 8x 0.894 ->
#: 0.884, MobileNetV2 unpruned 1.659 -> 1.652. The cost model has no term for it: both tiles
#: are FMA-bound there. (Capping the 18-entry block-sparse rows of ResNet-20's layer1 at 8x
#: as well cancelled the gain.)
_SHORT_ROW_ENTRIES, _SHORT_ROW_ACC = 32, 16
#: Weights above this size are re-streamed less often (wider pixel chunks).
_BIG_WEIGHTS = 128 * 1024
#: Inputs up to this size (a quarter of L2) are swept whole by each row block (one pixel chunk).
_SWEEP_BYTES = 128 * 1024
#: Largest partial-sum buffer (on the stack) of a channel-family kernel walking its entries
#: in input-channel slices. 128 KB rather than 16 KB lets dense 3x3 layers on 14x14 / 28x28
#: maps keep their slice in L1 (``channel_chunks``; AVX-512 host, 1 thread, x ORT, 2-vector
#: tiles: 256@14 0.85 -> 0.97x, 128@28 0.78 -> 1.00x).
_PART_BYTES = 128 * 1024
#: What a kept FMA of the channel family costs on sparse rows, against a spatial tile of the
#: rows' block height over the same map: the channel family streams its blocks' union weights
#: (zeros included) and stores through a scalar epilogue, while a P-row tile reuses each pixel
#: load P times. AVX-512 host, 1 thread, 8-row blocks (16-row channel blocks run 1.74-1.9x
#: the kept FMAs): 3x3 512@4 block 4x 551 us channel against 397 us in 8 x 2 tiles, 8x 312
#: against 203; 1x1 960 -> 160 on 4x4 at 8x 26 against 9 us (one-row tiles 20), 160 -> 960
#: 44 against 8 us (24); 512@2, where 8 x 1 tiles waste 3 of 4 lanes: 4x 245 against 246 us,
#: 8x 97 against 91.
_CHANNEL_UNION_COST = 2.0
#: Narrowest vectors the rules measured on the AVX-512 host apply to (``_tiny_map_rows``,
#: ``_channel_vectors``, ``_channel_slices_pay``); 8-lane ISAs keep their measured choices.
_WIDE_LANES = 16
#: Union waste of 16-row channel blocks against 8-row ones above which they take half vectors
#: (``half_channel_lanes``): half vectors issue twice the FMAs per weight.
_HALF_UNION = 1.3
#: Narrowest vectors that take per-tap planes on tiny maps (``gathers_taps``).
_TAP_MIN_LANES = _WIDE_LANES
#: Fewest input channels per slice for the channel family to beat spatial tiles on dense 3x3
#: rows of maps wider than a vector (``_channel_slices_pay``).
_MIN_SLICE_CHANNELS = 3
#: Fewest kept entries per row for the same rule: the channel family's epilogue is scalar.
_MIN_SLICE_ENTRIES = 1024
#: Tallest input map the stride-2 depthwise kernel (``DWS2_TEMPLATE``) is used on.
_DWS2_MAX_ROWS = 8
#: Minimum kept FLOPs before a layer uses more than one thread. 200 kFLOP against the former
#: 4 MFLOP, 2 threads, first quartile over 30 rotated same-process rounds: MobileNetV2 dense
#: 3.08 -> 2.49 ms, 4x 1.57 -> 1.10, 8x 1.18 -> 0.85; ResNet-20 dense 0.73 -> 0.69, 4x 0.345
#: -> 0.326; VGG-16 8x 1.19 -> 1.11. 20 kFLOP against 200 kFLOP (generator v35, AMD Zen 4, 2
#: threads, same-process A/B, two copies each): ResNet-20 block 4x 0.983 of the time, 8x
#: 0.950 (in a far vCPU placement: 244 us, against 91-137 in other runs), pattern 8x 0.972;
#: MobileNetV2 block 4x 0.986, 8x 0.977; VGG-16 8x 0.991. A layer on one thread reads the
#: half of its input the other core wrote (ResNet-20's stride-2 shortcuts: 0.8 us at 1
#: thread, 2-12 us in a 2-thread run's per-op profile). Smaller layers (the classifier) stay
#: on one thread.
_MT_FLOPS = 20_000
#: ... or kept weights above the L2 size: such a layer streams them from L3 / DRAM, which two
#: cores read faster than one (DRAM 27 -> 50 GB/s here); VGG-16's 2x2 layers at 8x, 2.4 MFLOP
#: and 1.2 MB each: whole model at 2 threads 1.30 -> 1.19 ms.
_MT_WEIGHT_BYTES = 512 * 1024
#: Fewest kept taps per quad slot for the quad family's untuned choice (``_quads_pay``):
#: pattern pruning fills all 4 slots; an unstructured 10x mask about 1 in 4.
_MIN_QUAD_FILL = 0.75
#: The sweep family's untuned thresholds (``_sweep_pays``). Pattern 8x, AVX-512 host, 1 thread,
#: each layer in the model (in -> out us): VGG-16 64@32 (18 kernels per input channel) 143
#: -> 113, 128@16 139 -> 104, 256@8 219 -> 137, 512@4 279 -> 151; ResNet-20 64@8 13.4 -> 8.5,
#: 32@16 (9 per channel) 8.5 -> 8.6, 16@32 (4.5) 10.3 -> 12.8. Unstructured 10x (about one tap
#: per kernel): ResNet-20 64@8 9.9 -> 13.1.
_MIN_SWEEP_TAPS, _MIN_SWEEP_KERNELS = 2.5, 10
#: Most rows of a sweep (its accumulators live on the stack: rows x 2 vectors).
_MAX_SWEEP_ROWS = 1024
#: The taps family's untuned thresholds (``_taps_pay``).
_MIN_TAPS_PER_COLUMN, _MIN_DISTINCT_ROWS = 1.2, 0.75


def is_pointwise(op: ConvOp) -> bool:
    """A 1x1 / stride-1 / unpadded conv: pixel ``i`` of the output reads pixel ``i`` only."""
    return (not op.is_linear and len(op.in_shape) == 3 and op.stride == 1
            and tuple(op.padding) == (0, 0) and tuple(op.weight.shape[2:]) == (1, 1))


def is_depthwise_s2(op: ConvOp) -> bool:
    """Dense depthwise 3x3 / stride 2 / pad 1 (``DWS2_TEMPLATE``: reads any input layout).

    Used on maps of at most ``_DWS2_MAX_ROWS`` rows. Taller maps do better phase-split (the
    producer's epilogue writes the phases, the depthwise kernel reads them in place):
    MobileNetV2 ran 3-6 % faster than with this kernel on its 32x32 and 16x16 maps too. The
    kernel splits one channel into an on-stack buffer of about ``8 h (w / 2 + 34)`` bytes; maps
    that would need more than 1 MB of stack take the general path.
    """
    if op.is_linear or len(op.in_shape) != 3:
        return False
    cin, h, w = op.in_shape
    return (op.groups == cin == op.out_shape[0] and tuple(op.weight.shape[2:]) == (3, 3)
            and op.stride == 2 and tuple(op.padding) == (1, 1) and bool(op.kept.all())
            and h <= _DWS2_MAX_ROWS and h * (w // 2 + 34) <= 1 << 17)


def split2_geometry(h: int, w: int) -> tuple[int, int]:
    """(rows, row width) of each of the four phase planes of a phase-split ``h x w`` map.

    A plane is one column wider than its phase needs (``ceil(w / 2) + 2``): a stride-2 conv's
    wide output rows then have the width of its padded output plane, so it writes that plane
    in place (no crop epilogue); the extra column stays zero and feeds only junk columns.
    """
    return -(-(h + 2) // 2), -(-w // 2) + 2


def conv_geometry(op: ConvOp, padded_src: bool = False, split_src: bool = False) -> dict[str, Any]:
    """Wide-row geometry: ``T`` pixels per output channel, padded plane ``hq x wq``, phases.

    ``shift`` is where pixel (0, 0) of the input sits in the source buffer. A pointwise conv
    whose input is stored padded (``padded_src``) runs over that layout's rows (width
    ``w + 2``, the two border columns between rows computed and discarded), so it reads the
    buffer in place and can write a padded output the same way. A 1x1 / stride-2 conv whose
    input is stored phase-split (``split_src``) runs over phase (1, 1) like a direct conv.
    """
    cin, h, w = op.in_shape
    cout, oh, ow = op.out_shape
    kh, kw = op.weight.shape[2], op.weight.shape[3]
    s, (ph, pw) = op.stride, op.padding
    if padded_src and is_pointwise(op):
        return dict(direct=True, hq=h + 2, wq=w + 2, s=1, phases=[(0, 0)], T=oh * (w + 2),
                    crop=True, kh=1, kw=1, ph=0, pw=0, ow=ow, shift=w + 3)
    if split_src:
        hq, wq = split2_geometry(h, w)
        if kh == kw == 1:
            return dict(direct=True, hq=hq, wq=wq, s=1, phases=[(0, 0)], T=oh * wq, crop=True,
                        kh=1, kw=1, ph=0, pw=0, ow=ow, shift=3 * cin * hq * wq)
        return dict(direct=False, hq=hq, wq=wq, s=2, phases=[(0, 0), (0, 1), (1, 0), (1, 1)],
                    T=oh * wq, crop=True, kh=kh, kw=kw, ph=ph, pw=pw, ow=ow, shift=0)
    if s == 1 and ph == 0 and pw == 0:
        return dict(direct=True, hq=h, wq=w, s=1, phases=[(0, 0)], T=oh * w, crop=(w != ow),
                    kh=kh, kw=kw, ph=0, pw=0, ow=ow, shift=0)
    hp, wp = h + 2 * ph, w + 2 * pw
    hq, wq = -(-hp // s), -(-wp // s)
    phases = [(a, b) for a in range(min(s, kh)) for b in range(min(s, kw))]
    return dict(direct=False, hq=hq, wq=wq, s=s, phases=phases, T=oh * wq, crop=(wq != ow),
                kh=kh, kw=kw, ph=ph, pw=pw, ow=ow, shift=0)


def gathers_taps(op: ConvOp, lanes: int, padded_src: bool = False, split_src: bool = False) -> bool:
    """Spatial tiles of several rows on a tiny map read per-tap copies of the input
    (``tap_geometry``; codegen asks this for spatial configs with ``p_max`` > 1).

    When the wide rows fill at most two 16-lane vectors and half again as many as the real
    pixels (a 4x4 map: 24 wide pixels against 16), a prologue copying each tap's input pixels
    into their own plane (``kh * kw`` copies of a small input) lets every vector hold real
    pixels only. AVX-512 host, 1 thread, 3x3 512@4 block 8x: 165 -> 104-114 us, 4x: 396
    -> 190 us (the copy: under 10 us). VGG-16, whole model, interleaved with ORT, two runs:
    block 4x 3.06 -> 3.33x and 3.25 -> 3.92x, 8x 5.61 -> 5.62x and 6.17 -> 5.73x (its 4x4
    layers stream their weights from L3 there: about 15 % faster each). One-row tiles
    (pattern 8x) lost 7 % and keep wide rows; 8-lane ISAs are unmeasured and keep them too.
    """
    if (op.is_linear or op.groups != 1 or split_src or lanes < _TAP_MIN_LANES
            or len(op.in_shape) != 3):
        return False
    _, oh, ow = op.out_shape
    wide = math.ceil(conv_geometry(op, padded_src)["T"] / lanes)
    return wide <= 2 and 3 * math.ceil(oh * ow / lanes) <= 2 * wide


def tap_geometry(op: ConvOp) -> dict[str, Any]:
    """Geometry of ``gathers_taps``: one ``oh x ow`` plane per tap and input channel, tap-major
    (the stride and padding are applied by the copy), so entry ``(c, tap)`` reads plane
    ``tap * cin + c`` and output pixel ``t`` its pixel ``t``."""
    _, oh, ow = op.out_shape
    kh, kw = op.weight.shape[2], op.weight.shape[3]
    return dict(direct=False, hq=oh, wq=ow, s=op.stride, phases=[(a, b) for a in range(kh)
                                                                 for b in range(kw)],
                T=oh * ow, crop=False, kh=kh, kw=kw, ph=op.padding[0], pw=op.padding[1], ow=ow,
                shift=0, taps=True)


def tile_cycles(p: int, v: int) -> float:
    """Estimated cycles per entry of one ``p x v`` tile (FMA, latency and load bounds)."""
    fma = p * v / _FMA_PIPES
    lat = float(_FMA_LAT)
    # an unaligned pixel vector crosses a cache line half the time and, when a row block sweeps
    # its whole input, comes from L2: two load slots against one per weight broadcast (this
    # moved 8x8 maps from 2 x 5 to 4 x 2 tiles: MobileNetV2 dense 4 % faster)
    loads = (p + 2 * v) / _LOADS
    return max(fma, lat, loads) + _OVERHEAD


def tile_efficiency(p: int, v: int, lanes: int, T: int, rows: int) -> float:
    """Useful FLOP fraction of peak for tile ``p x v`` on ``T`` pixels and ``rows`` rows."""
    vw = v * lanes
    tiles = math.ceil(T / vw)
    pix_eff = T / (tiles * vw)
    blocks = math.ceil(rows / p)
    row_eff = rows / (blocks * p)
    ideal = p * v / _FMA_PIPES
    return ideal / tile_cycles(p, v) * pix_eff * row_eff


def best_tile(isa: Isa, T: int, rows: int, max_acc: int | None = None) -> tuple[int, int]:
    """The (P, V) the cost model prefers for ``T`` pixels and ``rows`` rows per row group, with
    at most ``max_acc`` accumulators (default: the ISA's)."""
    best = (-1.0, 8, 1)
    for p in (8, 4, 2, 1):
        for v in range(1, min(8, (max_acc or isa.max_acc) // p) + 1):
            if (v - 1) * isa.lanes >= T:
                break
            eff = tile_efficiency(p, v, isa.lanes, T, max(rows, 1))
            if eff > best[0] + 1e-9:
                best = (eff, p, v)
    return best[1], best[2]


def _row_group(op: ConvOp) -> int:
    """Typical number of rows sharing one kept-entry list (block height of the mask).

    Pruned filters (all-zero rows) are left out: they cost no FMAs (``build_segments`` gives
    them entry-less blocks), so a filter-pruned layer gets the tile of its kept rows.
    """
    kf = op.kept.reshape(op.kept.shape[0], -1)
    kf = kf[kf.any(1)]
    if kf.shape[0] == 0:
        return op.out_shape[0]
    keys = [np.packbits(r).tobytes() for r in kf]
    runs, n = [], 1
    for a, b in zip(keys, keys[1:], strict=False):
        if a == b:
            n += 1
        else:
            runs.append(n)
            n = 1
    runs.append(n)
    return int(np.median(runs))


def _tile_rows(group: int) -> int:
    """Rows per row group the cost model tiles: ``group`` below 8, else whole 8-row blocks."""
    return min(group, 8) if group < 8 else 8 * (group // 8)


def suits_masked(op: ConvOp, lanes: int) -> bool:
    """The masked family (``compiler_backend.masked``) can run ``op`` and its rows share kept
    entries (dense, or blocks of several rows), so its tiles are several rows tall, or its
    kernels are pattern-like (``_pattern_like``: masked sweeps); or ``op`` is a depthwise conv
    its plain-map kernel runs (``depthwise.masked_dw_eligible``). Whether it takes it depends
    on its neighbours' layouts too (``layout.plan_masked``)."""
    return masked_dw_eligible(op, lanes) or masked_eligible(op, lanes) and (
        bool(op.kept.all()) or _row_group(op) > 1 or _pattern_like(op))


def layer_threads(op: ConvOp, threads: int) -> int:
    """Threads of the untuned choice: ``threads`` for layers with enough work, else 1."""
    flops = 2 * int(op.kept.sum()) * op.out_shape[1] * op.out_shape[2]
    return threads if flops > _MT_FLOPS or 4 * int(op.kept.sum()) > _MT_WEIGHT_BYTES else 1


def takes_winograd(op: ConvOp, lanes: int, threads: int) -> bool:
    """The untuned choice runs ``op`` by Winograd (``winograd.prefers``), at its threads
    (``winograd.splits_tiles``)."""
    lt = layer_threads(op, threads)
    return wino_prefers(op, lanes) and (lt == 1 or wino_split(op, lanes, lt))


def default_config(op: ConvOp, isa: Isa, threads: int, padded_src: bool = False,
                   split_src: bool = False, masked: bool = False,
                   winograd: bool = True) -> KernelConfig:
    """The untuned choice: Winograd for dense 3x3 convs it serves (``winograd``: may take
    it), the masked family where the layout planner keeps the maps plain for it
    (``masked``), the channel family for tiny maps, the taps family for one-row blocks with
    pattern-like kernels, else the cost model's tile."""
    geo = conv_geometry(op, padded_src, split_src)
    t = geo["T"]
    lt = layer_threads(op, threads)
    if winograd and takes_winograd(op, isa.lanes, threads):
        return KernelConfig("winograd", 1, 1, lt)
    if masked and masked_dw_eligible(op, isa.lanes) and not (padded_src or split_src):
        return KernelConfig("masked", 1, 1, lt)  # ``depthwise.masked_dw_template``
    if masked and masked_eligible(op, isa.lanes) and not (padded_src or split_src):
        if _pattern_like(op):
            return KernelConfig("masked", 1, 2, lt)  # masked sweeps
        group = op.out_shape[0] if op.kept.all() else _row_group(op)
        p, v = best_tile(isa, op.out_shape[1] * op.out_shape[2], _tile_rows(group))
        return KernelConfig("masked", p, v, lt)
    if _quads_pay(op, isa):
        return KernelConfig("quads", 1, 1, lt)
    if _sweep_pays(op, isa):
        return KernelConfig("sweep", 1, 2, lt)
    if t < 2 * isa.lanes:
        v = math.ceil(t / isa.lanes)  # tiles of the whole map: their waste is the unused lanes
        p = _tiny_map_rows(op, isa, v)
        if p > 1 and gathers_taps(op, isa.lanes, padded_src, split_src):
            v = math.ceil(op.out_shape[1] * op.out_shape[2] / isa.lanes)
        waste = _channel_waste(op, isa.lanes) * (_CHANNEL_UNION_COST if p > 1 else 1.0)
        if waste > v * isa.lanes / (op.out_shape[1] * op.out_shape[2]):
            return KernelConfig("spatial", p, v, lt)
        return KernelConfig("channel", 8, _channel_vectors(op, isa), lt)
    if _channel_pays(op, isa) or _channel_slices_pay(op, isa, geo):
        return KernelConfig("channel", 8, 2, lt)
    if op.groups > 1:  # rows of one group share entries; other groups' rows never do
        group = max(1, op.out_shape[0] // op.groups) if op.kept.all() else 1
    else:
        group = _row_group(op)
        if group == 1 and op.kept.all():
            group = op.out_shape[0]
        elif group == 1 and _taps_pay(op, geo, isa.lanes):
            return KernelConfig("taps", 1, 1, lt)
    short = (isa.lanes >= _WIDE_LANES and bool(op.kept.all())
             and op.kept[0].size <= _SHORT_ROW_ENTRIES)
    p, v = best_tile(isa, t, _tile_rows(group), _SHORT_ROW_ACC if short else None)
    return KernelConfig("spatial", p, v, lt)


def quads_eligible(op: ConvOp, isa: Isa) -> bool:
    """The quad family (``compiler_backend.quads``) serves this conv: one group and a map of at
    most ``lanes`` pixels (at most 4 vectors per quad)."""
    return (not op.is_linear and op.groups == 1 and len(op.in_shape) == 3
            and isa.lanes % QUAD == 0 and op.out_shape[1] * op.out_shape[2] <= isa.lanes)


def _quads_pay(op: ConvOp, isa: Isa) -> bool:
    """The untuned choice of the quad family: one full vector per quad (2x2 maps on AVX-512,
    the measured case), rows that share no kept entries (pattern or unstructured, not blocks)
    and quads on average at least ``_MIN_QUAD_FILL`` full."""
    npx = op.out_shape[1] * op.out_shape[2]
    if (not quads_eligible(op, isa) or isa.lanes < _WIDE_LANES or QUAD * npx != isa.lanes
            or _dense_rows(op) or _row_group(op) > 1):
        return False
    kept = int(op.kept.sum())
    return kept >= _MIN_QUAD_FILL * QUAD * max(quad_count(op.kept), 1)


def sweep_eligible(op: ConvOp) -> bool:
    """The sweep family (``compiler_backend.sweep``) serves this conv: one group and at most
    ``sweep.MAX_PATTERNS`` kept-tap sets."""
    return (not op.is_linear and op.groups == 1 and len(op.in_shape) == 3
            and pattern_count(op.kept) <= MAX_PATTERNS)


def _sweep_pays(op: ConvOp, isa: Isa) -> bool:
    """The untuned choice of the sweep family: pattern-like kernels (``_pattern_like``), every
    tap of two vectors in a register; measured with 16 lanes only."""
    kh, kw = op.kept.shape[2:]
    return isa.lanes >= _WIDE_LANES and 2 * kh * kw <= isa.max_acc and _pattern_like(op)


def _pattern_like(op: ConvOp) -> bool:
    """Rows that share no kept entries, at least ``_MIN_SWEEP_TAPS`` kept taps per non-empty
    kernel (pattern pruning: 4) but not all of them (whole kernels pruned alone are
    unmeasured), at least ``_MIN_SWEEP_KERNELS`` kernels per input channel where the taps
    family could take the layer (stride 1; else one-row spatial tiles would, which lose to
    sweeps at fewer: ResNet-20's stride-2 16 -> 32 conv, 9 kernels per channel, 7.7 -> 5.4
    us), at most ``_MAX_SWEEP_ROWS`` rows."""
    cout, cin, kh, kw = op.kept.shape
    nk = int(op.kept.reshape(cout, cin, -1).any(2).sum())
    per_channel = _MIN_SWEEP_KERNELS if op.stride == 1 else 0
    if cout > _MAX_SWEEP_ROWS or nk == 0 or nk < per_channel * cin:
        return False
    kept = int(op.kept.sum())
    return (_MIN_SWEEP_TAPS * nk <= kept < kh * kw * nk and not _dense_rows(op)
            and _row_group(op) == 1 and sweep_eligible(op))


def taps_eligible(op: ConvOp, geo: dict[str, Any]) -> bool:
    """The taps family (``compiler_backend.taps``) serves this conv: stride 1, 2- or 3-row
    kernels, read from one input plane."""
    return (not op.is_linear and op.groups == 1 and geo["s"] == 1 and len(geo["phases"]) == 1
            and 2 <= geo["kh"] <= 3 and geo["kh"] == op.weight.shape[2])


def _taps_pay(op: ConvOp, geo: dict[str, Any], lanes: int) -> bool:
    """The untuned choice of the taps family.

    Requires output rows more than half a vector wide (VGG-16's 4x4 maps at pattern 8x: 477
    us in bands, 447 us as one-row spatial tiles), and at least ``_MIN_DISTINCT_ROWS`` of the
    output channels with a kept set of their own (the spatial kernel would run those one at
    a time; shared ones form its multi-row blocks). Also at least ``_MIN_TAPS_PER_COLUMN``
    kept taps per non-empty kernel column, so a loaded input row serves several taps:
    pattern 8x keeps 1.87, unstructured 10x 1.11.
    """
    if not (taps_eligible(op, geo) and 2 * op.out_shape[2] > lanes):
        return False
    kf = op.kept.reshape(op.kept.shape[0], -1)
    keys = np.packbits(kf[kf.any(1)], axis=1)
    if keys.shape[0] == 0:
        return False
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    distinct = float(np.mean(counts[inverse.ravel()] == 1))
    taps_per_column = float(op.kept.sum()) / max(int(op.kept.any(axis=2).sum()), 1)
    return distinct >= _MIN_DISTINCT_ROWS and taps_per_column >= _MIN_TAPS_PER_COLUMN


def _channel_waste(op: ConvOp, lanes: int) -> float:
    """FMAs the channel family issues per kept weight: each block of ``lanes`` rows runs the
    union of its rows' entries (1 for rows of equal structure; about 5 for pattern 8x).

    Tiny maps take the channel family unless that is more than one-row spatial tiles waste
    in unused lanes (2 on a padded 2x2 map): VGG-16's 512-channel 2x2 layer at pattern 8x ran
    277-285 us in the channel family, 206-213 us in one-row tiles."""
    kf = full_matrices(op.weight, op.kept, op.groups)[1]
    kept = int(kf.sum())
    if kept == 0:
        return 1.0
    blocks = plan_channel_blocks(kf, lanes)
    return sum(int(kf[b].any(0).sum()) * lanes for b in blocks) / kept


def half_channel_lanes(op: ConvOp, isa: Isa) -> bool:
    """Channel tiles of one vector on AVX-512 run on half vectors (8 rows, ``kernels.half_width``)
    when 16-row blocks would run the union of unlike 8-row structures (a block-sparse mask of
    8-row blocks): tiny maps stream their weights, so the union's zeros cost memory traffic.
    VGG-16's 512-channel 2x2 layers at 4x (block 8x16), 1 thread: about 165 us each in 16-row
    blocks, 110-122 us in the AVX2 build's 8-row ones on the same host."""
    if isa.name != "avx512" or _dense_rows(op):
        return False
    return _channel_waste(op, isa.lanes) > _HALF_UNION * _channel_waste(op, isa.lanes // 2)


def _tiny_map_rows(op: ConvOp, isa: Isa, v: int) -> int:
    """Rows per spatial tile on a map under two vectors: with 16 lanes the rows sharing their
    entries (a block-sparse mask's block height, up to 8 and the accumulator budget), else 1
    (pattern rows, depthwise; 8-lane ISAs, measured on AVX2 with one-row tiles). Dense rows
    of a 1x1 conv take 8-row tiles where the map fills whole vectors (4x4 with 16 lanes), else 1.

    Dense 1x1 convs on 4x4 maps: 8-row tiles read each weight once, where the channel family's
    8-pixel tiles read the layer's weights (from L3: MobileNetV2's tail layers stream 0.6-1.6
    MB each) once per tile. AMD Zen 4 (32 KB L1), 1 thread, MobileNetV2 dense with its nine
    such convs in 8 x 1 tiles: 0.89 of the whole model's time in channel tiles of 48 rows (2
    threads: 0.89). Not 3x3 convs: VGG-16 dense with its 512@4 layers in 8 x 1 tiles over
    gathered taps ran 1.10 of its time in channel tiles."""
    if isa.lanes < _WIDE_LANES or op.groups > 1:
        return 1
    if _dense_rows(op):
        npx = op.out_shape[1] * op.out_shape[2]
        fills = is_pointwise(op) and npx % isa.lanes == 0
        return 8 if fills and 8 * v <= isa.max_acc else 1
    group = _row_group(op)
    p = max(q for q in (8, 4, 2, 1) if q <= group)
    while p * v > isa.max_acc:
        p //= 2
    return p


def _dense_rows(op: ConvOp) -> bool:
    """Every output channel keeps all of its weights or none (dense or filter-pruned)."""
    rows = op.kept.reshape(op.out_shape[0], -1)
    return op.groups == 1 and bool(np.all(rows.all(1) | ~rows.any(1)))


def _channel_vectors(op: ConvOp, isa: Isa) -> int:
    """Vectors of output channels per channel-family tile on a tiny map: as many as fill the
    accumulators with 8-pixel tiles when rows are dense (AVX-512: 3, so 48-row blocks;
    1x1 convs on 4x4 maps, Intel AVX-512 host: 320 -> 1280 0.84 -> 1.20x ORT, 960 -> 160
    0.90 -> 1.26x, 160 -> 960 0.63 -> 1.05x; 3x3 512@4 1.13 -> 1.53x), else 1: a block of
    sparse rows runs the union of its rows' entries. Measured on AVX-512 only: 8-lane ISAs
    keep 1 (AVX2: 12 // 8 anyway; NEON's 24 accumulators are untested on hardware). Never more
    vectors than the output channels fill: MobileNetV2's 1280 -> 10 head in 48-row blocks read
    245 KB of mostly zero weights, 9.4 us in the model; in 16-row blocks 3.4 us. (Dense 1x1
    convs on 4x4 maps now take 8-row spatial tiles instead: ``_tiny_map_rows``.)"""
    if not (isa.lanes >= _WIDE_LANES and _dense_rows(op)):
        return 1
    return max(1, min(isa.max_acc // 8, -(-op.out_shape[0] // isa.lanes)))


def _channel_pays(op: ConvOp, isa: Isa) -> bool:
    """Dense rows on a map 5 to 7 pixels wide (NEON: 3) and under a vector: a spatial tile wastes a
    fifth of its lanes there (7x7: 63 or 56 of 64 for 49 pixels; row mode needs
    ``ow >= lanes``), 2 x 5 channel tiles nothing. Measured on 512@7 (AVX2, same-process A/B
    with two copies each): 3x3 dense 52 -> 63-70 GFLOP/s, filter-pruned 2x 55 -> 65, 1x1 dense
    47 -> 56-61; AVX-512 (Intel host, half a vector wide): 1x1 0.72 -> 1.02x ORT, 3x3 0.79 ->
    0.84x. Block-sparse rows and 4x4 / 8x8 / 14x14 maps stay faster spatial (8x8 on AVX-512:
    64 channels 1.01 against 0.92x in the channel family, 96 -> 576 1x1 1.17 against 0.85x)."""
    _, oh, ow = op.out_shape
    return _dense_rows(op) and min(isa.lanes // 2, 4) < ow < min(isa.lanes, 8) and oh * ow >= 16


def _slice_channels(geo: dict[str, Any]) -> int:
    """Input channels whose (padded, phase-split) planes fit ``_L1_BYTES`` together."""
    return max(1, _L1_BYTES // (4 * len(geo["phases"]) * geo["hq"] * geo["wq"]))


def _channel_slices_pay(op: ConvOp, isa: Isa, geo: dict[str, Any]) -> bool:
    """Dense rows of a 3x3-class conv on a map wider than half a 16-lane vector, whose input
    comes in slices of at least ``_MIN_SLICE_CHANNELS`` channels and whose rows keep at least
    ``_MIN_SLICE_ENTRIES`` entries: 2-vector channel tiles (32 rows x 7-8 pixels) keep each
    slice in L1 and waste no junk columns.

    AVX-512 host, interleaved with ORT, x ORT against the former spatial choice, two runs:
    3x3 256@14 at 1 thread 0.84 -> 0.97x and 0.76 -> 0.86x, 2 threads 0.89x both; 128@28 at
    1 thread 0.85 -> 1.00x and 1.07 -> 1.08x, 2 threads 0.80 -> 0.91x; 128@28 stride 2 0.71
    -> 0.88x (2 threads 0.74 -> 0.86x). Spatial tiles stay faster on 64@56 and 64@32 (slices
    of 1-2 channels), 1x1 convs and maps of half a vector (256@8 0.85 against 0.76x); 128@16
    even. 8-lane ISAs are unmeasured and keep spatial tiles."""
    if op.is_linear or isa.lanes < _WIDE_LANES or op.weight.shape[2] * op.weight.shape[3] == 1:
        return False
    entries = op.kept.reshape(op.out_shape[0], -1).sum(1).max()
    return (_dense_rows(op) and op.out_shape[2] > isa.lanes // 2
            and _slice_channels(geo) >= _MIN_SLICE_CHANNELS and entries >= _MIN_SLICE_ENTRIES)


def channel_tile(npix: int, cv: int, max_acc: int) -> int:
    """Pixels per tile of the channel family: the fewest FMA slots over ``npix`` pixels
    (partial tiles count in full), ties to the wider tile; 8 at most (one vector row)."""
    if npix <= 1:
        return 1
    widest = max(1, min(8, max_acc // cv, npix))
    return min(range(1, widest + 1), key=lambda tb: (math.ceil(npix / tb) * (tb + 1), -tb))


def channel_chunks(npix: int, tb: int, rows: int, geo: dict[str, Any],
                   entries: int) -> tuple[int, int]:
    """(entries per chunk, partial-sum floats) of the channel family.

    A map of several tiles re-reads the block's input once per tile; walking the entries a
    slice of input channels at a time (as many as fit in ``_L1_BYTES``) keeps that slice in L1
    for all tiles, at the cost of spilling each tile's sums to a stack buffer between slices
    (only when it stays under ``_PART_BYTES``). One tile, or one slice: no chunking (``part``
    = 0).
    """
    tiles = math.ceil(npix / tb)
    part = tiles * tb * rows
    ech = _slice_channels(geo) * geo["kh"] * geo["kw"]
    if tiles == 1 or ech >= entries or 4 * part > _PART_BYTES:
        return max(1, entries), 0
    return ech, part


def row_tiles(p: int, v: int, lanes: int, oh: int, ow: int, wq: int, T: int,
              max_acc: int) -> int | None:
    """Vectors per tile in *row mode* (one vector = one output row), or None for pixel mode.

    Row mode pays off on maps at most one vector wide (8x8, 7x7 with AVX2): a wide-row pixel
    tile wastes the pad columns of every row (7x7: 22 %), a row vector only its unused lanes.
    It needs ``wq >= lanes`` so row vectors never overlap.
    """
    if ow > lanes or wq < lanes:
        return None
    px_eff = oh * ow / (math.ceil(T / (v * lanes)) * v * lanes)
    best, best_vr = px_eff * p * v / 2 / tile_cycles(p, v), None
    for vr in range(1, min(8, max_acc // p) + 1):
        eff = oh * ow / (math.ceil(oh / vr) * vr * lanes) * p * vr / 2 / tile_cycles(p, vr)
        if eff > best + 1e-9:
            best, best_vr = eff, vr
    return best_vr


def chunking(T: int, vw: int, geo: dict[str, Any], weight_bytes: int, nblk: int,
             lt: int, in_channels: int, entries_per_block: int) -> tuple[int, int, int]:
    """(pixel chunks, chunk width, input channels per channel chunk) for the spatial kernel.

    A chunk is a few pixel tiles (more when the weights are large, to re-stream them less);
    the input-channel chunk is sized so its slice of the input for one pixel chunk fits in
    ``_L1_BYTES``, so every row block re-reads it from L1. An input that fits in a quarter of
    L2 is instead swept whole by each row block: its output rows are then written as a few
    sequential streams instead of one short piece per row and chunk (an expanding 1x1 conv,
    16 -> 96 channels at 32x32, ran 8 % faster; 32 -> 192 at 16x16, 20 %).
    """
    tiles = math.ceil(T / vw)
    per = 2 if weight_bytes <= _BIG_WEIGHTS else 8
    in_bytes = 4 * in_channels * len(geo["phases"]) * geo["hq"] * geo["wq"]
    if in_bytes <= _SWEEP_BYTES and (lt == 1 or nblk >= 4 * lt):
        per = tiles
    if lt > 1 and nblk * math.ceil(tiles / per) < 4 * lt:  # give every thread a few items
        per = max(1, min(per, tiles // math.ceil(4 * lt / max(nblk, 1))))
    tch = min(tiles, per) * vw
    nch = math.ceil(T / tch)
    span = (tch * geo["kh"] * geo["kw"] if geo.get("taps")
            else tch + (geo["kh"] - 1) * geo["wq"] + geo["kw"] - 1 + 8)
    ccs = max(1, _L1_BYTES // (4 * span))
    # every channel chunk re-loads and re-stores the tile's accumulators: keep enough entries
    # per chunk (sparse and 1x1 layers) for that to stay a small overhead
    ncc = min(math.ceil(in_channels / ccs), max(1, entries_per_block // _MIN_CHUNK_ENTRIES))
    return nch, tch, math.ceil(in_channels / ncc)
