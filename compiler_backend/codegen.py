"""Generate one C source for a lowered model: kernels per layer, segments, data arenas.

Runtime model: three arenas passed by pointer to every exported ``seg_<k>(W, I, A, nt)``:
``W`` float constants (packed weights, biases), ``I`` int32 constants (entry offsets, rows,
block pointers), ``A`` float activations (every buffer at a fixed offset). The .so therefore
depends only on the *structure* (shapes, masks, tuning), not on weight values. Fallback ops
split the model into segments; PyTorch runs between them.

Every op is a list of *steps* (pad copy, kernels, crop / border fix-up); a step is cut into G
independent slices. Single-threaded segments call the steps inline; multi-threaded ones hand
them to a persistent worker pool (``kernels.POOL_TEMPLATE``). Buffers consumed only by
stride-1 / pad-1 convs live in a zero-padded layout (``layout.py``), so those convs read them
in place; fallback-free models also export ``run_batch`` (the batch loop in C).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler_backend import bands as bands_mod
from compiler_backend import masked, quads, split_k, sweep, taps, winograd
from compiler_backend.bands import BandPlan
from compiler_backend.depthwise import (
    PLANE4_TEMPLATE,
    S2_PLANE4_TEMPLATE,
    dw9_packs,
    dwband_template,
    masked_dw_eligible,
    masked_dw_template,
    plane4_writes_plain,
    use_bands,
    use_plane4,
    use_s2_plane4,
)
from compiler_backend.flags import call_values, copy_name, written_in
from compiler_backend.fusion import (
    GROUP,
    exdw_template,
    expand_groups,
    plan_fusion,
    scratch_floats,
)
from compiler_backend.heuristics import (
    channel_chunks,
    channel_tile,
    chunking,
    conv_geometry,
    default_config,
    gathers_taps,
    half_channel_lanes,
    is_depthwise_s2,
    is_pointwise,
    quads_eligible,
    row_tiles,
    split2_geometry,
    tap_geometry,
    taps_eligible,
)
from compiler_backend.ir import (
    AffineOp,
    ConcatOp,
    ConvOp,
    EltwiseOp,
    FallbackOp,
    Graph,
    PoolOp,
)
from compiler_backend.isa import Isa, prelude
from compiler_backend.kernels import (
    ACT_CODES,
    ACT_HELPERS,
    BORDER_TEMPLATE,
    CROP_SPLIT2_TEMPLATE,
    DWS2_TEMPLATE,
    FILL_TEMPLATE,
    PAD_TEMPLATE,
    POOL_TEMPLATE,
    SPLIT2_TEMPLATE,
    channel_template,
    copy_taps_template,
    crop_template,
    dw9_template,
    dw9_vectors,
    gather_taps_template,
    half_width,
    spatial_template,
)
from compiler_backend.kernels import (
    sig as _sig,
)
from compiler_backend.layout import (
    plan_masked,
    plan_padded,
    plan_split2,
    reads_padded,
    strides,
    writes_wide_padded,
)
from compiler_backend.memory import plan_arena, plan_threaded_arena, region_floats
from compiler_backend.segments import BATCH_TEMPLATE, segment_source, work_items
from compiler_backend.simple_ops import emit_affine, emit_concat, emit_eltwise, emit_pool
from compiler_backend.sparsity import Segment, build_segments, structure_label
from compiler_backend.tuning.base import KernelConfig
from npas_env.errors import InvalidConfig

GENERATOR_VERSION = "45"
#: Accumulator sets of one-row spatial tiles narrow enough to hold them (``spatial_template``):
#: VGG-16's 512-channel 2x2 layer under pattern 8x, forced to one-row tiles, ran one
#: dependent FMA chain per output channel.
_SPLIT_ACC = 4
#: Pixel blocks per thread from which threads split a sweep's pixels rather than its rows.
#: Split by rows (output channels), each thread reads all the input, half of it written by
#: the other core. 4 -> 1, 2 threads, same-process A/B: ResNet-20 pattern 8x 0.961 and 0.983
#: of the time (its stride-2 8x8 conv), VGG-16 0.994; unstructured 10x 0.994 / 0.990.
_SWEEP_BLOCKS_PER_THREAD = 1
#: Largest input-channel count whose spatial tiles store a phase-split output directly: that
#: mode walks all input channels in one chunk (``spatial_template(phase_split=True)``).
_PHASE_SPLIT_MAX_CIN = 64
_conv_geometry = conv_geometry  # backwards-compatible names
__all__ = ["GENERATOR_VERSION", "LayerInfo", "Program", "default_config", "default_configs",
           "generate"]


@dataclass
class LayerInfo:
    """What the report needs about one generated conv / linear layer."""

    name: str
    op_index: int
    family: str
    structure: str
    block_sizes: list[int]
    kept_fraction: float
    dense_flops: int
    kept_flops: int
    config: KernelConfig


#: Most work one of ``lt`` equal-count shares of a step's items may carry, against the mean
#: share, before the step takes several slices per thread (``segments.work_items``).
_MAX_SHARE_SKEW = 1.1


def _skewed(costs: np.ndarray, lt: int) -> bool:
    """Splitting items of these ``costs`` into ``lt`` shares of equal count, as ``PART``
    does, leaves one thread with much more work than the mean."""
    n = len(costs)
    if lt <= 1 or n < 2:
        return False
    cum = np.concatenate([[0.0], np.cumsum(costs, dtype=float)])
    shares = np.diff(cum[[n * t // lt for t in range(lt + 1)]])
    return bool(shares.mean() > 0 and shares.max() > _MAX_SHARE_SKEW * shares.mean())


def _uneven(seg: Segment, costs: np.ndarray, by_pixels: bool, lt: int) -> bool:
    """A kernel's items want several slices per thread (``segments.work_items``): an even split
    of them is skewed, or threads would split one-row blocks of unlike lengths (pattern,
    unstructured), whose time follows their entry counts less closely than a block's."""
    unlike = seg.p == 1 and seg.nblk > 1 and bool(np.ptp(np.diff(seg.eptr)) > 0)
    return _skewed(costs, lt) or (lt > 1 and not by_pixels and unlike)


@dataclass
class Program:
    """The generated source and everything the runtime needs to call it."""

    source: str
    weights: np.ndarray
    ints: np.ndarray
    arena_floats: int
    buffer_offsets: list[int]
    segments: list[list[int]]  # op indices per C segment; fallback ops sit between segments
    op_names: list[str]
    op_kinds: list[str]
    layers: list[LayerInfo]
    line_map: list[tuple[int, int, str]] = field(default_factory=list)


class _Builder:
    def __init__(self, graph: Graph, isa: Isa, threads: int,
                 configs: dict[str, KernelConfig], inject_error: str | None,
                 bands: BandPlan | None = None) -> None:
        self.g, self.isa, self.threads, self.bands = graph, isa, threads, bands
        self.configs = configs
        self.inject_error = inject_error
        self.f_parts: list[np.ndarray] = []
        self.f_len = 0
        self.i_parts: list[np.ndarray] = []
        self.i_len = 0
        self.funcs: list[tuple[str, str]] = []  # (op name, C text)
        self.layers: list[LayerInfo] = []
        self.extra_bufs: list[int] = []
        self.templates: dict[str, str] = {}
        self.copies: dict[str, dict[str, dict[str, int]]] = {}  # key -> copy name -> flags
        # banded: no masked tiles (they read the padding of a plain map: no halo there), no
        # fused expand convs (they recompute their output from a map without halo rows)
        self.masked = set() if bands else plan_masked(graph, isa.lanes, threads)
        self.padded = plan_padded(graph, isa.lanes, threads, self.masked)
        self.split = plan_split2(graph, self.padded)
        self.halo = self._plan_halo() if bands else set()
        self.fused = {} if bands else plan_fusion(graph, isa.lanes, self.masked)
        ops = {getattr(op, "name", None): op for op in graph.ops}
        self.fused_into = {dw.name: ops[e] for e, dw in self.fused.items()}  # its expand op
        self.scratch: dict[tuple[Any, ...], int] = {}  # key -> arena offset (``_shared_scratch``)
        self.crop_off, self.crop_size = -1, 0
        self.private_crop = False  # a crop scratch of its own (``split_k_conv``'s thread 1)
        # the channels slice 0 of 2 wrote, of maps a depthwise step split by channels
        self.first_half: dict[int, np.ndarray] = {}
        self.junk_masks: dict[tuple[int, int, int], int] = {}

    def _plan_halo(self) -> set[int]:
        """Maps whose border rows carry the other band's edge row: padded or phase-split (stored
        padded where the plan had them plain)."""
        assert self.bands is not None
        halo = bands_mod.halo_buffers(self.g, self.bands)
        for buf in sorted(halo):
            laid_out = buf in self.padded or buf in self.split
            if (problem := bands_mod.halo_problem(self.g, buf, laid_out)) is not None:
                raise InvalidConfig(f"banded execution needs a border row around every map a "
                                    f"3x3 conv reads; map {buf} cannot have one: {problem}. "
                                    "Compile this model without bands")
            if not laid_out:
                c, h, w = self.g.buffers[buf].shape
                self.g.buffers[buf].numel = c * (h + 2) * (w + 2)
                self.padded.add(buf)
        return halo

    # -------------------------------------------------------------- arenas
    def add_f(self, arr: np.ndarray) -> int:
        arr = np.ascontiguousarray(arr, np.float32).ravel()
        off = self.f_len
        pad = (-arr.size) % 16
        self.f_parts.append(np.concatenate([arr, np.zeros(pad, np.float32)]))
        self.f_len += arr.size + pad
        return off

    def add_i(self, arr: np.ndarray) -> int:
        arr = np.asarray(arr, np.int64).ravel()
        if arr.size and (arr.max() >= 2**31 or arr.min() < -(2**31)):
            raise ValueError("int32 overflow in offsets")
        off = self.i_len
        self.i_parts.append(arr.astype(np.int32))
        self.i_len += arr.size
        return off

    def plan_memory(self) -> list[int]:
        # a fused depthwise conv reads its expand conv's input
        reads = {k: {self.fused_into[op.name].src} for k, op in enumerate(self.g.ops)
                 if getattr(op, "name", None) in self.fused_into}
        if self.bands:  # a region per buffer: no border row of a shared slot keeps a halo
            offsets, self.arena = plan_arena(self.g, self.padded, self.split, reads, private=True)
        else:
            offsets, self.arena = plan_threaded_arena(self.g, self.padded, self.split, reads,
                                                      self.threads)
        return offsets

    # -------------------------------------------------------------- ops
    def emit_op(self, k: int, op: Any, offs: list[int]) -> list[tuple[str, int]]:
        """Emit ``op``'s C functions; returns its steps: (function, work-item count G).

        A step function ``f(g, G, W, I, A)`` does slice ``g`` of ``G`` (PART); slices of one
        step are independent, consecutive steps are ordered (the segment waits in between).
        """
        fn = f"op_{k}"
        if isinstance(op, ConvOp):
            body, steps = self.conv(fn, k, op, offs)
        else:
            if isinstance(op, AffineOp):
                body, lt = emit_affine(self, fn, op, offs)
            elif isinstance(op, EltwiseOp):
                body, lt = emit_eltwise(self, fn, op, offs)
            elif isinstance(op, PoolOp):
                body, lt = emit_pool(self, fn, op, offs)
            elif isinstance(op, ConcatOp):
                body, lt = emit_concat(self, fn, op, offs), 1
            else:
                raise TypeError(op)
            steps = [(fn, work_items(lt))]
        if self.inject_error is not None and getattr(op, "name", None) == self.inject_error:
            body = body.replace("{", "{ this_is_not_c ", 1)
        self.funcs.append((op.name, body))
        return steps

    def _lt(self, numel: int) -> int:
        return self.threads if numel >= 32768 else 1

    def conv(self, fn: str, k: int, op: ConvOp, offs: list[int],
             cfg: KernelConfig | None = None) -> tuple[str, list[tuple[str, int]]]:
        src_padded, src_split = op.src in self.padded, op.src in self.split
        cfg = cfg or self.configs.get(op.name) or default_config(
            op, self.isa, self.threads, src_padded, src_split, op.name in self.masked)
        if op.name in self.fused:  # computed by the depthwise conv reading it (``exdw``)
            self._record(k, op, cfg, [1], "fused")
            return "", []
        if op.name in self.fused_into:
            return self.exdw(fn, k, self.fused_into[op.name], op, offs, cfg)
        if (cfg.threads == 2 and op.dst not in self.split and op.res not in self.split
                and split_k.eligible(op, self.first_half.get(op.src))):
            return self.split_k_conv(fn, k, op, offs, cfg)
        if is_depthwise_s2(op):
            return self.dw_s2(fn, k, op, offs, cfg)
        if cfg.family == "winograd":
            if winograd.eligible(op, self.isa.lanes) and op.res not in self.split:
                return self.winograd_conv(fn, k, op, offs, cfg)
            cfg = default_config(op, self.isa, self.threads, src_padded, src_split,
                                 op.name in self.masked, winograd=False)
        if cfg.family == "quads":
            if quads_eligible(op, self.isa) and not {op.src, op.dst, op.res} & self.split:
                return self.quads_conv(fn, k, op, offs, cfg)
            cfg = KernelConfig("spatial", 1, 2, cfg.threads)  # a phase-split layout is involved
        if cfg.family == "masked":
            plain = not any(self._laid_out(b) for b in (op.src, op.dst, op.res) if b is not None)
            if plain and masked_dw_eligible(op, self.isa.lanes):
                return self.masked_dw(fn, k, op, offs, cfg)
            if plain and masked.masked_eligible(op, self.isa.lanes):
                return self.masked_conv(fn, k, op, offs, cfg)
            cfg = KernelConfig("spatial", cfg.p_max, cfg.v, cfg.threads)  # a layout of its own
        taps = ((cfg.family == "spatial" and cfg.p_max > 1 or cfg.family == "sweep")
                and gathers_taps(op, self.isa.lanes, src_padded, src_split))
        geo = tap_geometry(op) if taps else _conv_geometry(op, padded_src=src_padded,
                                                            split_src=src_split)
        cin, h, w = op.in_shape
        cout, oh, ow = op.out_shape
        T, wq = geo["T"], geo["wq"]
        parts: list[str] = []
        calls: list[str] = []
        in_place = not taps and (geo["direct"] or src_padded and reads_padded(op) or src_split)
        pad_step = not in_place
        # source: the input itself (plain, or already padded by its producer) or a padded /
        # phase-split copy in a scratch buffer shared by convs of the same input geometry
        if in_place:
            x_off = offs[op.src] + geo["shift"]
        else:
            x_off = self._scratch_for(op, geo, taps)
            parts.append(self.prologue(f"{fn}_pad", op, geo, offs[op.src], x_off, src_padded))
        # destination: straight into a padded output (wide rows shifted by wq + 1), the plain
        # output, or a shared wide-row scratch buffer + crop epilogue
        wide = (cfg.family != "channel" and not taps and op.dst in self.padded
                and writes_wide_padded(op, src_padded, src_split)
                and (op.res is None or op.res in self.padded))
        # the channel family writes every pixel where the destination's layout wants it
        placed = cfg.family == "channel" and op.dst not in self.split
        # channel tiles: blocks of v vectors of output channels (half vectors: ``clanes`` = 8)
        clanes = self.isa.lanes // 2 if (cfg.family == "channel" and cfg.v == 1
                                         and half_channel_lanes(op, self.isa)) else self.isa.lanes
        lanes = clanes * cfg.v if cfg.family == "channel" else self.isa.lanes
        segs = build_segments(op.weight, op.kept, op.groups, family=cfg.family,
                              p_max=cfg.p_max, lanes=lanes)
        # tiles storing into a layout of their own need every row to keep entries (no
        # ``fill_rows`` segment, which writes plain wide rows)
        no_fill = all(seg.eptr[-1] for seg in segs if seg.nblk)
        # spatial tiles of whole output rows store a phase-split output themselves (on wide
        # rows in row mode, one output row per tile), residual rows as wide as theirs
        phase_split = (cfg.family == "spatial" and not taps and op.groups == 1
                       and op.dst in self.split and ow % self.isa.lanes == 0
                       and (op.res is None or strides(self.g, op.res, self.padded)[1] == wq)
                       and cin <= _PHASE_SPLIT_MAX_CIN)
        # tiles of a plain map (per-tap planes, or a pointwise conv's plain input) whose rows
        # divide a vector store them straight into a padded output
        plain_map = taps or (is_pointwise(op) and not src_padded and not src_split)
        row_store = (plain_map and cfg.family == "spatial" and op.dst in self.padded
                     and op.res is None and self.isa.lanes % ow == 0)
        # sweeps store the runs of real pixels of each vector where the destination wants them
        seg_offsets = [self._entry_offsets(seg.cols, op, geo) for seg in segs]
        sweeps = cfg.family == "sweep" and all(
            self._sweeps(seg, offsets, geo) for seg, offsets in zip(segs, seg_offsets, strict=True)
            if seg.nblk and seg.eptr[-1])
        # tap-column bands of whole vectors store a phase-split output themselves
        split_taps = (cfg.family == "taps" and op.dst in self.split and no_fill
                      and ow % self.isa.lanes == 0 and all(
                          seg.p == 1 and taps_eligible(op, geo)
                          and self._taps_chunks(seg, op, geo, cfg.v)[1] == 1
                          for seg in segs if seg.nblk))
        # 4x4 depthwise planes store a plain output as they compute it
        plane_plain = (plane4_writes_plain(op, self.isa.lanes) and src_padded
                       and cfg.family == "spatial" and all(seg.p == 1 for seg in segs)
                       and op.dst not in self.padded and op.dst not in self.split
                       and op.res not in self.padded and op.res not in self.split)
        pieces = (sweeps and not wide and op.dst not in self.split
                  and op.res is None and no_fill and (geo["crop"] or op.dst in self.padded))
        use_crop = (not wide and not placed and not phase_split and not row_store and not pieces
                    and not split_taps and not plane_plain) and (
            geo["crop"] or op.dst in self.padded or op.res in self.padded or op.dst in self.split)
        # wide-row tiles pack their real pixels into a plain output (AVX-512 compress stores):
        # spatial tiles, and depthwise rows stepping a vector at a time (``dw9_template``). A
        # padded residual of the tiles' row width is read at the wide rows' positions, unless
        # pruned filters' rows need ``fill_rows``, which reads it plain.
        res_wide = (op.res in self.padded and strides(self.g, op.res, self.padded)[1] == wq
                    and no_fill)
        pack = (use_crop and self.isa.name == "avx512" and cfg.family == "spatial" and not taps
                and geo["crop"] and not self._laid_out(op.dst)
                and (op.res is None or not self._laid_out(op.res)
                     or res_wide and op.groups == 1)
                and (op.groups == 1 or dw9_packs(geo, self.isa.lanes)))
        use_crop = use_crop and not pack
        ys, yo, dr = T, 0, 0
        eo: tuple[int, int] | None = None
        pc, npieces = -1, 0  # I offset and width of the sweep's piece table (``sweep.store_pieces``)
        if pieces:
            y_off, res_off, act = offs[op.dst], None, op.act
            ys, dst_row, dst_origin = strides(self.g, op.dst, self.padded)
            table = sweep.store_pieces(T, wq, ow, self.isa.lanes, dst_row, dst_origin)
            pc, npieces = self.add_i(table), table.shape[1]
        elif row_store:
            y_off, res_off, act = offs[op.dst], None, op.act
            ys, dr, yo = strides(self.g, op.dst, self.padded)
        elif plane_plain:
            y_off, act = offs[op.dst], op.act
            res_off = offs[op.res] if op.res is not None else None
            ys = oh * ow
        elif phase_split:
            y_off, act = offs[op.dst], op.act
            res_off = offs[op.res] if op.res is not None else None
            ys, eo = self._phase_split_table(op)
        elif split_taps:
            y_off, act = offs[op.dst], op.act
            res_off = offs[op.res] if op.res is not None else None
        elif wide:
            y_off, act = offs[op.dst], op.act
            res_off = offs[op.res] if op.res is not None else None
            ys, _, yo = strides(self.g, op.dst, self.padded)  # the plane of the output
        elif use_crop:
            y_off, res_off, act = self._crop_scratch(cout * T), None, None
        elif pack:  # partial sums in the wide scratch, final stores packed into the output
            y_off, act = self._crop_scratch(cout * T), op.act
            res_off = offs[op.res] if op.res is not None else None
        else:
            y_off = offs[op.dst]
            res_off = offs[op.res] if op.res is not None else None
            act = op.act
        bias_off = self.add_f(op.bias)
        junk = False  # some kernel stores whole wide rows, junk columns included
        # spatial and dw9 tiles writing wide rows into a padded output zero the junk columns
        jm = self.junk_mask(T, wq, ow) if wide else -1
        uneven = False  # an even split of some kernel's items is not (see ``work_items``)
        rlay = (0, 0)  # phase-split or packing tiles: a padded residual's channel stride, origin
        if op.res is not None and (eo or pack and op.res in self.padded):
            rcs, _, rof = strides(self.g, op.res, self.padded)
            rlay = (rcs, rof)
        for si, (seg, offsets) in enumerate(zip(segs, seg_offsets, strict=True)):
            name = f"{fn}_s{si}"
            row_exact = False  # the kernel stores only the ow real columns of each row
            if cfg.family == "spatial" and seg.nblk and not seg.eptr[-1] and not eo:  # pruned filters
                if row_store:  # the padded output's rows (``dr`` wide), junk columns masked
                    parts.append(self.fill_kernel(name, seg, bias_off, y_off, None, act, oh * dr,
                                                  ys, yo, self.junk_mask(oh * dr, dr, ow)))
                elif pack:  # the plain output's rows
                    parts.append(self.fill_kernel(name, seg, bias_off, offs[op.dst], res_off, act,
                                                  oh * ow, oh * ow, 0))
                else:
                    parts.append(self.fill_kernel(name, seg, bias_off, y_off, res_off, act, T, ys,
                                                  yo, jm))
                row_exact = jm >= 0 or row_store or pack
            elif cfg.family == "channel":
                ydst = self._place(op.dst, op) if placed else (T, wq, 0)
                rdst = self._place(op.res, op) if op.res is not None and res_off is not None else ydst
                parts.append(self.channel_kernel(name, seg, offsets, bias_off, x_off, y_off,
                                                 res_off, act, geo, ydst, rdst, clanes))
                uneven = uneven or _uneven(seg, np.diff(seg.eptr), False, cfg.threads)
            elif cfg.family == "taps" and seg.p == 1 and taps_eligible(op, geo):
                text, costs, by_pixels = self.taps_kernel(name, seg, op, geo, bias_off, x_off,
                                                          y_off, res_off, act, cfg.v, ys, yo,
                                                          split_taps)
                parts.append(text)
                uneven = uneven or _uneven(seg, costs, by_pixels, cfg.threads)
                row_exact = True
            elif sweeps and seg.p == 1 and seg.nblk:
                text, costs = self.sweep_kernel(name, seg, offsets, bias_off, x_off, y_off, res_off,
                                                act, T, cfg.v, cfg.threads, geo, cin, ys, yo, jm,
                                                (pc, npieces) if pieces else None)
                parts.append(text)
                uneven = uneven or _skewed(costs, cfg.threads)
                row_exact = jm >= 0
            elif op.groups > 1 and seg.p == 1 and seg.nblk and bool(np.all(np.diff(seg.eptr) == 9)):
                bands = use_bands(offsets, geo["wq"], geo["ow"], self.isa.lanes)
                parts.append(self.dw9_kernel(name, seg, offsets, bias_off, x_off,
                                             offs[op.dst] if pack else y_off, res_off, act, T,
                                             ys, yo, geo, bands, jm, plane_plain, pack))
                row_exact = bands or jm >= 0
            else:
                v = max(1, min(cfg.v, self.isa.max_acc // seg.p, -(-T // self.isa.lanes)))
                text, costs, by_pixels = self.spatial_kernel(
                    name, seg, offsets, bias_off, x_off, y_off, res_off, act, T, v, cfg.threads,
                    geo, cin, ys, yo, eo, jm, dr, rlay,
                    (offs[op.dst], oh * ow, int(op.res in self.padded)) if pack else None)
                parts.append(text)
                uneven = uneven or _uneven(seg, costs, by_pixels, cfg.threads)
                row_exact = jm >= 0 or pack
            calls.append(f"{name}(tid, nt, W, I, A);")
            junk = junk or not row_exact
        g = work_items(cfg.threads, uneven)
        steps: list[tuple[str, int]] = [(f"{fn}_pad", work_items(cfg.threads))] if pad_step else []
        parts.append(f"{_sig(fn + '_k')} {{\n  " + "\n  ".join(calls) + "\n}\n")
        steps.append((f"{fn}_k", g))
        if use_crop:
            parts.append(self.crop(f"{fn}_crop", op, T, wq, y_off, offs))
            steps.append((f"{fn}_crop", work_items(cfg.threads)))
        if wide and junk:  # the two junk columns per row landed on the zero border
            self._template("zero_border", BORDER_TEMPLATE)
            zb = [y_off, cout, oh, wq, ys]
            parts.append(f"{_sig(fn + '_zb')} {{\n  (void)W; (void)I;\n  static const int kb[5] = "
                         f"{{{', '.join(map(str, zb))}}};\n  zero_border(tid, nt, A, kb);\n}}\n")
            steps.append((f"{fn}_zb", work_items(cfg.threads)))
        self._record(k, op, cfg, sorted({s.p for s in segs}))
        return "\n".join(parts), steps

    def quads_conv(self, fn: str, k: int, op: ConvOp, offs: list[int],
                   cfg: KernelConfig) -> tuple[str, list[tuple[str, int]]]:
        """Rows over quads of kept taps (``compiler_backend.quads``): a prologue gathers the
        keys' vectors from the source in its layout (plain or padded), the row kernel stores
        each pixel where the destination's layout wants it."""
        cin, h, w = op.in_shape
        cout, oh, ow = op.out_shape
        lanes, npx = self.isa.lanes, oh * ow
        nv = quads.quad_vectors(npx, lanes)
        plan = quads.plan_quads(op.weight, op.kept)
        cs, xs, x0 = strides(self.g, op.src, self.padded)
        n = x0 + (h - 1) * xs + w  # floats of a channel up to its last pixel
        pidx = quads.pattern_indices(plan.taps, (oh, ow), op.weight.shape[3], op.stride,
                                     op.padding, (h, w), xs, x0, nv, lanes, n)
        q_off = self._alloc(self.g.new_buffer((max(len(plan.key_pattern), 1), nv * lanes),
                                              pinned=True))
        permute = self.isa.name == "avx512" and n < 2 * lanes
        gkey = f"quad_gather_n{n}_v{nv}" + ("_p" if permute else "")
        self._template(gkey, quads.gather_template(gkey, n, nv, permute))
        gargs = [offs[op.src], q_off, self.add_i(plan.chan_keys), self.add_i(plan.key_pattern),
                 self.add_i(pidx), cin, cs]
        y, x = np.divmod(np.arange(npx), ow)
        ys, dr, yo = strides(self.g, op.dst, self.padded)
        rs, rr, ro = strides(self.g, op.res, self.padded) if op.res is not None else (0, 0, 0)
        split = max(1, min(_SPLIT_ACC, self.isa.max_acc // nv))
        kkey = f"quads_v{nv}_s{split}_n{npx}"
        self._template(kkey, quads.quads_template(kkey, nv, split, npx))
        kargs = [self.add_i(plan.row_ptr), self.add_i(plan.quad_key * nv * lanes),
                 self.add_f(plan.weights), self.add_f(op.bias), q_off, offs[op.dst],
                 offs[op.res] if op.res is not None else 0, self.add_i(yo + y * dr + x),
                 self.add_i(ro + y * rr + x), ys, rs, ACT_CODES[op.act or "none"],
                 int(op.res is not None), cout]
        body = (f"{_sig(fn + '_pad')} {{\n  (void)W;\n  {self._invoke(gkey, gargs, 'I, A')}\n}}\n"
                f"{_sig(fn + '_k')} {{\n  {self._invoke(kkey, kargs)}\n}}\n")
        self._record(k, op, cfg, [1])
        uneven = _skewed(np.diff(plan.row_ptr), cfg.threads)
        return body, [(f"{fn}_pad", work_items(cfg.threads)),
                      (f"{fn}_k", work_items(cfg.threads, uneven))]

    def masked_conv(self, fn: str, k: int, op: ConvOp, offs: list[int],
                    cfg: KernelConfig) -> tuple[str, list[tuple[str, int]]]:
        """Tiles over the real pixels of a plain 8-wide map, the padding read as masked-off
        lanes (``compiler_backend.masked``): no pad copy, no junk columns, no crop. One-row
        tiles (``p_max`` 1) over pattern-like kernels become masked sweeps instead."""
        cin, (_, oh, ow) = op.in_shape[0], op.out_shape
        lanes, nv = self.isa.lanes, oh * ow // self.isa.lanes
        segs = [seg for seg in build_segments(op.weight, op.kept, 1, family="spatial",
                                              p_max=cfg.p_max, lanes=lanes) if seg.nblk]
        masks, bias_off = self.add_i(masked.lane_masks(op, lanes)), self.add_f(op.bias)
        res_off = offs[op.res] if op.res is not None else None
        geo = {"kh": 3, "kw": 3, "hq": oh, "wq": ow}
        entries = [masked.entry_offsets(seg.cols, op) for seg in segs]  # (offset, tap) each
        sweeps = cfg.p_max == 1 and all(self._sweeps(seg, off, geo) for seg, (off, _) in zip(
            segs, entries, strict=True) if seg.eptr[-1])
        parts, calls, costs = [], [], []
        for si, (seg, (off, tap)) in enumerate(zip(segs, entries, strict=True)):
            name = f"{fn}_s{si}"
            calls.append(f"{name}(tid, nt, W, I, A);")
            if sweeps:
                text, cost = self.sweep_kernel(name, seg, off, bias_off, offs[op.src], offs[op.dst],
                                               res_off, op.act, oh * ow, cfg.v, cfg.threads, geo,
                                               cin, oh * ow, 0, -1, None, (masks, nv))
                parts.append(text)
                costs.append(cost)
                continue
            top = max(1, min(cfg.v, self.isa.max_acc // seg.p, nv))
            v = max(d for d in range(1, top + 1) if nv % d == 0)
            key = f"mk_p{seg.p}_v{v}"
            self._template(key, masked.masked_template(key, seg.p, v))
            args = [self.add_i(seg.rows), self.add_i(seg.eptr), self.add_i(off),
                    self.add_i(tap * nv), self.add_f(seg.weights), bias_off, offs[op.src],
                    offs[op.dst], res_off or 0, seg.nblk, oh * ow,
                    ACT_CODES[op.act or "none"], int(res_off is not None), masks, nv]
            parts.append(self._calling(name, key, args))
            costs.append(np.repeat(np.diff(seg.eptr) + 1, nv // v))
        parts.append(f"{_sig(fn + '_k')} {{\n  " + "\n  ".join(calls) + "\n}\n")
        self._record(k, op, cfg, sorted({s.p for s in segs}))
        uneven = any(_skewed(c, cfg.threads) for c in costs)
        return "\n".join(parts), [(f"{fn}_k", work_items(cfg.threads, uneven))]

    def masked_dw(self, fn: str, k: int, op: ConvOp, offs: list[int],
                  cfg: KernelConfig) -> tuple[str, list[tuple[str, int]]]:
        """Depthwise 3x3 over a plain map of two rows per vector, the padding read as
        masked-off lanes (``depthwise.masked_dw_template``)."""
        cout, oh, ow = op.out_shape
        nv = oh * ow // self.isa.lanes
        key = f"mdw_v{nv}"
        self._template(key, masked_dw_template(nv, self.isa.lanes))
        args = [self.add_f(op.weight.reshape(cout, 9)), self.add_f(op.bias), offs[op.src],
                offs[op.dst], offs[op.res] if op.res is not None else 0, cout,
                ACT_CODES[op.act or "none"], int(op.res is not None)]
        self._record(k, op, cfg, [1])
        if work_items(cfg.threads) == 2:  # the template's items are the channels
            self.first_half[op.dst] = split_k.first_of_channels(cout)
        return self._calling(fn + "_k", key, args), [(f"{fn}_k", work_items(cfg.threads))]

    def exdw(self, fn: str, k: int, ex: ConvOp, op: ConvOp, offs: list[int],
             cfg: KernelConfig) -> tuple[str, list[tuple[str, int]]]:
        """The depthwise conv ``op`` with the expand conv ``ex`` feeding it computed group by
        group in planes of the arena (``fusion.exdw_template``)."""
        cout, h, w = op.in_shape
        xcs, xs, x0 = strides(self.g, ex.src, self.padded)
        ys, yr, yo = strides(self.g, op.dst, self.padded)
        groups = expand_groups(ex, xcs)
        key = f"exdw_{h}x{w}" if op.stride == 1 else f"exdw_s2_{h}x{w}"
        self._template(key, exdw_template(h, w, self.isa.lanes, op.stride, self.isa.registers))
        per_thread = scratch_floats(h, w, self.isa.lanes)
        # shared by the layers of one map size and stride (at stride 2 a one-vector row's
        # stores spill into floats a stride-1 layout reads as a border)
        planes = self._shared_scratch(("exdw", h, w, op.stride),
                                      (max(self.threads, 1), per_thread))
        args = [self.add_i(groups.gptr), self.add_i(groups.offsets), self.add_f(groups.weights),
                self.add_f(groups.bias), self.add_f(op.weight.reshape(cout, 9)),
                self.add_f(op.bias), offs[ex.src], offs[op.dst], xs, x0, ys, yr, yo,
                ACT_CODES[ex.act or "none"], ACT_CODES[op.act or "none"], len(groups.gptr) - 1,
                self.add_i(groups.channels), planes, per_thread]
        self._record(k, op, cfg, [1], "exdw")
        if work_items(cfg.threads) == 2:  # the template's items are the groups
            self.first_half[op.dst] = split_k.first_of_groups(groups.channels, GROUP, cout)
        return self._calling(fn + "_k", key, args), [(f"{fn}_k", work_items(cfg.threads))]

    def split_k_conv(self, fn: str, k: int, op: ConvOp, offs: list[int],
                     cfg: KernelConfig) -> tuple[str, list[tuple[str, int]]]:
        """``op`` split-K (``split_k``): slice 0 of the first step runs thread 0's partial conv
        into the output, slice 1 thread 1's into a scratch map laid out like the output (each
        with its epilogue steps; thread 1's crop in a scratch of its own); the second step
        adds the scratch into the output."""
        cout, oh, ow = op.out_shape
        padded = op.dst in self.padded
        scratch = self.g.new_buffer(op.out_shape, cout * (oh + 2) * (ow + 2) if padded else None)
        sub_offs = offs + [-1] * (scratch + 1 - len(offs))  # extra buffers: only ours is read
        sub_offs[scratch] = self._alloc(scratch)
        if padded:
            self.padded.add(scratch)
        one = dataclasses.replace(cfg, threads=1)
        n = len(self.layers)
        bodies, calls = [], []
        for half, private in zip(split_k.halves(op, self.first_half[op.src], scratch),
                                 (False, True), strict=True):
            self.private_crop = private
            try:
                body, steps = self.conv(f"{fn}{'ab'[private]}", k, half, sub_offs, one)
            finally:
                self.private_crop = False
            assert not any(f.endswith("_pad") for f, _ in steps), "a pointwise conv reads in place"
            bodies.append(body)
            calls.append(" ".join(f"{f}(0, 1, W, I, A);" for f, _ in steps))
        families = sorted({li.family for li in self.layers[n:]})
        blocks = sorted({p for li in self.layers[n:] for p in li.block_sizes})
        del self.layers[n:]  # the halves' records: one for the layer instead
        self._record(k, op, cfg, blocks, f"{'/'.join(families)} split-k")
        ycs, yrs, y0 = strides(self.g, op.dst, self.padded)
        scs, srs, s0 = strides(self.g, scratch, self.padded)
        # slices 0 and 1 of 2, or both in one call (a segment run inline calls ``(0, 1)``)
        bodies.append(f"{_sig(fn + '_k')} {{\n  if (tid == 0) {{ {calls[0]} }}\n"
                      f"  if (tid == nt - 1) {{ {calls[1]} }}\n}}\n")
        bodies.append(split_k.sum_source(_sig(fn + "_sum"), (offs[op.dst], ycs, yrs, y0),
                                         (sub_offs[scratch], scs, srs, s0), op.out_shape))
        return "\n".join(bodies), [(f"{fn}_k", 2), (f"{fn}_sum", 2)]

    def winograd_conv(self, fn: str, k: int, op: ConvOp, offs: list[int],
                      cfg: KernelConfig) -> tuple[str, list[tuple[str, int]]]:
        """Dense 3x3 conv by Winograd F(2x2, 3x3) (``winograd.WINO_TEMPLATE``), reading a
        padded input in place (else a padded copy) and writing any layout."""
        cin, h, w = op.in_shape
        parts, steps = [], []
        x_off, xs, xc = offs[op.src], w + 2, (h + 2) * (w + 2)  # padded: read in place
        if op.src not in self.padded:  # a padded copy (planes hq x wq = h + 2 x w + 2)
            geo = _conv_geometry(op)
            x_off, xs, xc = self._scratch_for(op, geo), geo["wq"], geo["hq"] * geo["wq"]
            parts.append(self.prologue(f"{fn}_pad", op, geo, offs[op.src], x_off))
            steps.append((f"{fn}_pad", work_items(cfg.threads)))
        cout, lanes = op.out_shape[0], self.isa.lanes
        walk = winograd.plan(h, w, cout, lanes, cfg.threads)
        pstride = 0
        if op.dst in self.split:  # the phase planes of the destination
            hq, wq = split2_geometry(h, w)
            yc, ys, y0, pstride = hq * wq, wq, 0, cout * hq * wq
        else:
            yc, ys, y0 = strides(self.g, op.dst, self.padded)
        rc, rs, r0 = strides(self.g, op.res, self.padded) if op.res is not None else (0, 0, 0)
        outputs = 1 if walk.gathered else 2 if pstride else 0  # scattered / phase planes / rows
        tables = [0, 0, 0]
        if walk.gathered:
            tables[0] = self.add_i(winograd.patch_table(h, w, lanes, xs))
            tables[1] = self.add_i(winograd.output_table(h, w, lanes, self._where(op.dst)))
            if op.res is not None:
                tables[2] = self.add_i(winograd.output_table(h, w, lanes, self._where(op.res)))
        self._template("wino", winograd.WINO_TEMPLATE)
        args = [x_off, xs, xc, cin, self.add_f(winograd.transformed_weights(op)),
                self.add_f(op.bias), offs[op.dst] + y0, ys, yc, cout, walk.per_row,
                int(walk.two), walk.vectors * walk.parts,
                offs[op.res] + r0 if op.res is not None else 0, rs, rc,
                ACT_CODES[op.act or "none"], int(op.res is not None), *tables,
                int(walk.gathered), walk.parts, outputs, pstride]
        parts.append(self._calling(fn + "_k", "wino", args))
        steps.append((f"{fn}_k", work_items(cfg.threads)))
        self._record(k, op, cfg, [1])
        return "\n".join(parts), steps

    def _scratch_for(self, op: ConvOp, geo: dict[str, Any], taps: bool = False) -> int:
        """Arena offset of the scratch buffer holding ``op``'s input copied into the planes
        ``geo`` reads; convs of the same input geometry share one."""
        cin, h, w = op.in_shape
        nph, hq, wq = len(geo["phases"]), geo["hq"], geo["wq"]
        gkey = ("pad", nph, cin, hq, wq, geo["s"], geo["ph"], geo["pw"], h, w, int(taps))
        return self._shared_scratch(gkey, (nph, cin, hq, wq))

    def _shared_scratch(self, key: tuple[Any, ...], shape: tuple[int, ...]) -> int:
        """Arena offset of a pinned scratch buffer of ``shape``, one per ``key``: the kernels
        asking with the same key share it."""
        if key not in self.scratch:
            self.scratch[key] = self._alloc(self.g.new_buffer(shape, pinned=True))
        return self.scratch[key]

    def _where(self, buf: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        """Offset of pixel (y, x) of a channel of ``buf`` from that channel's pixel (0, 0) as
        the kernels address it (a phase-split buffer: from its first phase plane)."""
        c, h, w = self.g.buffers[buf].shape
        if buf in self.split:
            hq, wq = split2_geometry(h, w)
            return lambda y, x: (((y + 1) % 2 * 2 + (x + 1) % 2) * c * hq * wq
                                 + (y + 1) // 2 * wq + (x + 1) // 2)
        rs = strides(self.g, buf, self.padded)[1]
        return lambda y, x: y * rs + x

    def _record(self, k: int, op: ConvOp, cfg: KernelConfig, block_sizes: list[int],
                family: str | None = None) -> None:
        cout, oh, ow = op.out_shape
        kept = int(op.kept.sum())
        self.layers.append(LayerInfo(
            op.name, k, family or cfg.family, structure_label(op.kept), block_sizes,
            kept / max(op.kept.size, 1), 2 * op.kept.size * oh * ow, 2 * kept * oh * ow, cfg))

    def dw_s2(self, fn: str, k: int, op: ConvOp, offs: list[int],
              cfg: KernelConfig) -> tuple[str, list[tuple[str, int]]]:
        """Depthwise 3x3 / stride 2 read in place (plain or padded input) and written in the
        destination layout (``DWS2_TEMPLATE``)."""
        _, h, w = op.in_shape
        cout, oh, ow = op.out_shape
        xp, xr, xo = strides(self.g, op.src, self.padded)
        dp, dr, do = strides(self.g, op.dst, self.padded)
        rp, rr, ro = strides(self.g, op.res, self.padded) if op.res is not None else (0, 0, 0)
        res = (rp, rr, ro) if op.res is not None else None
        fn_s2 = ("dws2_plane4" if use_s2_plane4(op.in_shape, (xp, xr, xo), (dp, dr, do), res,
                                                self.isa.name) else "dws2")
        self._template(fn_s2, S2_PLANE4_TEMPLATE if fn_s2 == "dws2_plane4" else DWS2_TEMPLATE)
        chans = np.arange(cout)
        args = [self.add_i(chans), self.add_i(chans), self.add_f(op.weight.reshape(cout, 9)),
                self.add_f(op.bias), offs[op.src], offs[op.dst],
                offs[op.res] if op.res is not None else 0, cout, h, w, oh, ow, dp, dr, do,
                rp, rr, ro, ACT_CODES[op.act or "none"], int(op.res is not None), xp, xr, xo,
                int(op.src in self.halo)]  # a band reads the other's edge row above its own
        body = f"{_sig(fn + '_k')} {{\n  {self._invoke(fn_s2, args)}\n}}\n"
        self._record(k, op, cfg, [1])
        return body, [(f"{fn}_k", work_items(cfg.threads))]

    def _alloc(self, buf: int) -> int:
        self.extra_bufs.append(buf)
        off = self.arena
        self.arena += region_floats(self.g.buffers[buf].numel)
        return off

    def _entry_offsets(self, cols: np.ndarray, op: ConvOp, geo: dict[str, Any]) -> np.ndarray:
        kh, kw, s = geo["kh"], geo["kw"], geo["s"]
        cin = op.in_shape[0]
        ci, r = np.divmod(cols, kh * kw)
        i, j = np.divmod(r, kw)
        plane = geo["hq"] * geo["wq"]
        if geo.get("taps"):  # plane (tap, channel) holds exactly the pixels the entry reads
            return (r * cin + ci) * plane
        pidx = {p: n for n, p in enumerate(geo["phases"])}
        phase = np.array([pidx[(a, b)] for a, b in zip(i % s, j % s, strict=False)], np.int64)
        return phase * cin * plane + ci * plane + (i // s) * geo["wq"] + (j // s)

    def _laid_out(self, buf: int) -> bool:
        """``buf`` has a layout of its own (padded or phase-split), not the plain one."""
        return buf in self.padded or buf in self.split

    def junk_mask(self, T: int, wq: int, ow: int) -> int:
        """I offset of the lane mask of ``T`` wide-row pixels (rows of ``wq``, the first ``ow``
        real): all ones on real pixels, zero on the junk columns and past ``T``. Tiles AND it
        into their final stores, so a padded destination keeps its zero border: no
        ``zero_border`` pass (34 of them took 97 us of MobileNetV2 4x's 0.94 ms, AVX-512
        host, 1 thread)."""
        key = (T, wq, ow)
        if key not in self.junk_masks:
            pos = np.arange(T + 2 * self.isa.lanes)
            self.junk_masks[key] = self.add_i(np.where((pos < T) & (pos % wq < ow), -1, 0))
        return self.junk_masks[key]

    def _template(self, key: str, text: str) -> None:
        if key not in self.templates:
            self.templates[key] = text

    def _invoke(self, key: str, args: Sequence[int], operands: str = "W, I, A") -> str:
        """C statements calling template ``key`` on the parameter array ``args``: the copy of
        it with the flags ``args`` passes written in (``compiler_backend.flags``)."""
        values = call_values(self.templates[key], args)
        name = copy_name(key, values)
        self.copies.setdefault(key, {})[name] = values
        return (f"static const int k[{len(args)}] = {{{', '.join(map(str, args))}}};\n"
                f"  {name}(tid, nt, {operands}, k);")

    def _calling(self, name: str, key: str, args: list[int]) -> str:
        """C text of step function ``name``: template ``key`` on the parameter array ``args``."""
        return f"{_sig(name)} {{\n  {self._invoke(key, args)}\n}}\n"

    def template_texts(self) -> list[str]:
        """C text of every template called: one copy per combination of flags its calls pass
        (the template itself when it reads none)."""
        texts = []
        for key, text in self.templates.items():
            copies = self.copies.get(key)
            texts.extend([written_in(key, text, v) for v in copies.values()] if copies else [text])
        return texts

    def prologue(self, name: str, op: ConvOp, geo: dict[str, Any], src: int, dst: int,
                 src_padded: bool = False) -> str:
        """Copy the input into the planes ``geo`` reads: padded / stride phases, or one plane
        per tap (``tap_geometry``). A source stored padded is copied border and all, as a
        plain map one row and column bigger each way with a padding one smaller (a banded
        program keeps the other band's edge row in that border: ``compiler_backend.bands``)."""
        cin, h, w = op.in_shape
        s, ph, pw, hq, wq = geo["s"], geo["ph"], geo["pw"], geo["hq"], geo["wq"]
        plane = hq * wq
        if geo.get("taps"):
            return self._gather_taps(name, op, geo, src, dst, src_padded)
        if src_padded:
            h, w, ph, pw = h + 2, w + 2, ph - 1, pw - 1
        if s == 2 and len(geo["phases"]) == 4:  # one deinterleaving pass per input row
            self._template("pad_split2", SPLIT2_TEMPLATE)
            args = [src, dst, cin, h, w, ph, pw, plane, wq, w]
            return (f"{_sig(name)} {{\n  (void)W; (void)I;\n  "
                    f"{self._invoke('pad_split2', args, 'A')}\n}}\n")
        self._template("pad_phase", PAD_TEMPLATE)
        calls = []
        for n, (a, b) in enumerate(geo["phases"]):
            i_lo = max(0, -(-(ph - a) // s))
            i_hi = min(hq, (h - 1 + ph - a) // s + 1)
            j_lo = max(0, -(-(pw - b) // s))
            j_hi = min(wq, (w - 1 + pw - b) // s + 1)
            if i_hi <= i_lo or j_hi <= j_lo:
                continue
            args = [src, dst + n * cin * plane, cin, h, w, s, a - ph, b - pw, i_lo, i_hi, j_lo,
                    j_hi, plane, wq, w]
            calls.append(f"  {{ {self._invoke('pad_phase', args, 'A')} }}")
        return f"{_sig(name)} {{\n  (void)W; (void)I;\n" + "\n".join(calls) + "\n}\n"

    def _gather_taps(self, name: str, op: ConvOp, geo: dict[str, Any], src: int, dst: int,
                     src_padded: bool) -> str:
        """Per-tap planes (``tap_geometry``) by one index table over the source's layout, or
        by row copies where every tap reads whole rows (``copy_taps_template``)."""
        cin, h, w = op.in_shape
        cs, xs, x0 = strides(self.g, op.src, self.padded) if src_padded else (h * w, w, 0)
        n = x0 + (h - 1) * xs + w  # floats of a channel up to its last pixel
        i, j = np.divmod(np.arange(geo["T"]), geo["ow"])
        idx = []
        b0 = int(src_padded)  # a padded source's zero border is there to read
        rows = geo["s"] == 1
        for a, b in geo["phases"]:
            y, x = geo["s"] * i + a - geo["ph"], geo["s"] * j + b - geo["pw"]
            idx.append(np.where((y >= 0) & (y < h) & (x >= 0) & (x < w), x0 + y * xs + x, n))
            rows &= bool(np.all((y >= -b0) & (y < h + b0) & (x >= -b0) & (x < w + b0)))
        oh, ow = geo["T"] // geo["ow"], geo["ow"]
        if rows:  # every tap reads whole rows of the stored plane: copy them
            to = [x0 + (a - geo["ph"]) * xs + b - geo["pw"] for a, b in geo["phases"]]
            key = f"copy_taps_h{oh}_w{ow}_q{len(idx)}"
            self._template(key, copy_taps_template(key, oh, ow, len(idx)))
            args = [src, dst, self.add_i(np.array(to)), cin, cs, xs]
        else:
            key = f"gather_taps_t{geo['T']}_q{len(idx)}_n{n}"
            self._template(key, gather_taps_template(key, geo["T"], len(idx), n))
            args = [src, dst, self.add_i(np.concatenate(idx)), cin, cs]
        return f"{_sig(name)} {{\n  (void)W;\n  {self._invoke(key, args, 'I, A')}\n}}\n"

    def _phase_split_table(self, op: ConvOp) -> tuple[int, tuple[int, int]]:
        """(phase plane size, (I offset, odd distance)) for tiles storing ``op``'s output
        phase-split: output vector ``j`` (vector ``j % (ow / lanes)`` of row ``y``) puts its
        even columns in phase (``(y + 1) & 1``, 1) and its odd ones in phase (same, 0), as
        ``CROP_SPLIT2_TEMPLATE`` does."""
        cout, oh, ow = op.out_shape
        hq, dwq = split2_geometry(oh, ow)
        plane, phase = hq * dwq, cout * hq * dwq
        y = np.repeat(np.arange(oh), ow // self.isa.lanes)
        x = np.tile(np.arange(0, ow, self.isa.lanes), oh)
        even = 2 * ((y + 1) & 1) * phase + ((y + 1) >> 1) * dwq + phase + x // 2
        return plane, (self.add_i(even), 1 - phase)

    def spatial_kernel(self, name: str, seg: Segment, offsets: np.ndarray, bias_off: int,
                       x_off: int, y_off: int, res_off: int | None, act: str | None, T: int,
                       v: int, lt: int, geo: dict[str, Any], cin: int, ys: int,
                       yo: int, eo: tuple[int, int] | None = None, jm: int = -1,
                       dr: int = 0, rlay: tuple[int, int] = (0, 0),
                       pack: tuple[int, int, int] | None = None) -> tuple[str, np.ndarray, bool]:
        """(C text, the work of its items in the order threads split them (``_skewed``),
        whether they split it by pixel chunks rather than row blocks).

        ``eo``: (I offset of the per-vector even-half offsets, odd-half distance) when the
        tiles store a phase-split output (``_phase_split_table``); ``jm``: -1 or a
        ``junk_mask``; ``dr`` > 0: the destination's row stride, for tiles storing row by row
        (``spatial_template(row_store=...)``); ``rlay``: the residual's channel stride and
        origin under ``eo`` or ``pack``; ``pack``: (A offset, channel stride) of a plain output
        the final stores pack wide rows into (``spatial_template(pack=...)``), and whether the
        residual is padded (read at the wide rows' positions, ``rlay``) rather than plain."""
        p, lanes = seg.p, self.isa.lanes
        oh, ow = T // geo["wq"], geo["ow"]
        one_chunk = bool(eo) or dr > 0
        # row mode: vector u of a tile starts u * vs pixels after it, tiles step by vw
        if eo and geo["wq"] != ow and ow > lanes:  # phase-split from wide rows: one row per tile
            vr = ow // lanes
            vs, vw = lanes, geo["wq"]
        elif eo and geo["wq"] != ow:  # ... rows one vector wide: a vector per row, v rows per tile
            vr = max(1, min(v, self.isa.max_acc // p))
            vs, vw = geo["wq"], vr * geo["wq"]
        else:
            vr = None if one_chunk else row_tiles(p, v, lanes, oh, ow, geo["wq"], T,
                                                  self.isa.max_acc)
            vs, vw = geo["wq"], (vr or v) * (geo["wq"] if vr else lanes)
        v = vr or v
        nch, tch, ccs = chunking(T, vw, geo, 4 * seg.weights.size, seg.nblk, lt, cin,
                                 int(seg.eptr[-1]) // max(seg.nblk, 1))
        if one_chunk:
            ccs = cin  # one input-channel chunk: every store is final
        ncc = max(1, -(-cin // ccs))
        order, spans = _traversal_order(seg, seg.cols // (geo["kh"] * geo["kw"]), ccs, ncc)
        ro, co = self.add_i(seg.rows), self.add_i(spans)
        oo, wo = self.add_i(offsets[order]), self.add_f(seg.weights[order])
        nonempty = spans[:, :, 1] > spans[:, :, 0]
        first = np.where(nonempty.any(1), nonempty.argmax(1), 0)
        last = np.where(nonempty.any(1), ncc - 1 - nonempty[:, ::-1].argmax(1), 0)
        flo = self.add_i(np.stack([first, last], 1) if seg.nblk else np.zeros(2))
        split = _SPLIT_ACC if p == 1 and v * _SPLIT_ACC <= self.isa.max_acc else 1
        # pixel-major FMA order where weight-major would not fit the registers (p=2, v=6 on
        # AVX2: 19 > 16, and gcc kept accumulators in memory)
        pixel_major = 1 < p < v and p * v + v + 1 > self.isa.registers
        key = (f"sk_p{p}_v{v}" + ("_x" if pixel_major else "") + ("_r" if vr else "")
               + (f"_s{split}" if split > 1 else "")
               + ("_e" if eo else "") + (f"_o{ow}" if dr else "")
               + (f"_c{geo['wq']}x{ow}" + ("w" if pack[2] else "") if pack else ""))
        self._template(key, spatial_template(key, p, v, row=bool(vr), split=split,
                                             phase_split=bool(eo),
                                             row_store=(ow, lanes) if dr else None,
                                             pack=(geo["wq"], ow) if pack else None,
                                             res_wide=bool(pack and pack[2]),
                                             pixel_major=pixel_major))
        if pack:
            jm = self.junk_mask(T, geo["wq"], ow)
        args = [ro, 0, oo, wo, bias_off, x_off, y_off, res_off or 0, seg.nblk, nch, tch, T, ys, yo,
                co, ncc, ACT_CODES[act or "none"], int(res_off is not None), flo,
                vs if vr else lanes, vw, *(eo or (0, 0)), -1 if eo else jm, dr, *rlay,
                *(pack[:2] if pack else ())]
        return (self._calling(name, key, args),
                np.outer(np.minimum(tch, T - tch * np.arange(nch)), np.diff(seg.eptr)).ravel(),
                nch >= 2)

    def _sweeps(self, seg: Segment, offsets: np.ndarray, geo: dict[str, Any]) -> bool:
        """The sweep kernel serves this segment: every entry reads its channel at a fixed
        offset per tap, and few enough patterns."""
        ntaps = geo["kh"] * geo["kw"]
        if sweep.tap_offsets(seg.cols, offsets, ntaps, geo["hq"] * geo["wq"]) is None:
            return False
        return seg.p == 1 and len(np.unique(seg.cols % ntaps)) <= self.isa.max_acc and \
            sweep.pattern_count(_kept_kernels(seg, ntaps)) <= sweep.MAX_PATTERNS

    def sweep_kernel(self, name: str, seg: Segment, offsets: np.ndarray, bias_off: int,
                     x_off: int, y_off: int, res_off: int | None, act: str | None, T: int,
                     v: int, lt: int, geo: dict[str, Any], cin: int, ys: int, yo: int,
                     jm: int, pieces: tuple[int, int] | None,
                     masks: tuple[int, int] | None = None) -> tuple[str, np.ndarray]:
        """Input-stationary sweeps over kernels grouped by pattern (``sweep.sweep_template``);
        also returns the work of its items in the order threads split them. ``pieces``: (I
        offset, width) of a ``sweep.store_pieces`` table the stores follow, or None.
        ``masks``: (I offset, vectors per map) of the lane masks of a plain input read by
        zero-masking loads (``masked_conv``), or None."""
        ntaps, cs, lanes = geo["kh"] * geo["kw"], geo["hq"] * geo["wq"], self.isa.lanes
        toff = sweep.tap_offsets(seg.cols, offsets, ntaps, cs)
        assert toff is not None
        v = max(1, min(v, 2, -(-T // lanes), self.isa.max_acc // max(1, len(np.unique(seg.cols % ntaps)))))
        full, rest = divmod(T, v * lanes)
        # threads split the pixel blocks where there are enough of them, else the rows
        slices = 1 if full >= _SWEEP_BLOCKS_PER_THREAD * lt else lt
        plan = sweep.plan_sweep(seg, ntaps, cin, toff, slices)
        max_rows = int(np.diff(plan.row_ptr).max())
        head = [self.add_i(plan.group_ptr), self.add_i(plan.weight_ptr), self.add_i(plan.acc_row),
                self.add_f(plan.weights), bias_off, x_off, y_off, res_off or 0,
                self.add_i(seg.rows[:, 0]), self.add_i(plan.row_ptr), slices]
        tail = [T, cin, cs, ys, yo, ACT_CODES[act or "none"], int(res_off is not None), jm]
        calls = []
        # a last, narrower pixel block gets an instantiation of its own width
        for vb, nb, t0 in ((v, full, 0), (-(-rest // lanes), 1, full * v * lanes)):
            if vb and nb:
                text = sweep.sweep_template("@KEY@", vb, plan.patterns, toff, max_rows,
                                            pieces[1] if pieces else 0, masks is not None)
                key = "sw_" + hashlib.sha256(text.encode()).hexdigest()[:12]
                self._template(key, text.replace("@KEY@", key))
                args = [*head, nb, *tail, t0, pieces[0] if pieces else 0, *(masks or (0, 0))]
                calls.append(f"  {{ {self._invoke(key, args)} }}")
        entries = np.diff(seg.eptr[plan.row_ptr])
        return f"{_sig(name)} {{\n" + "\n".join(calls) + "\n}\n", np.repeat(entries, max(full, 1))

    def taps_kernel(self, name: str, seg: Segment, op: ConvOp, geo: dict[str, Any],
                    bias_off: int, x_off: int, y_off: int, res_off: int | None, act: str | None,
                    v: int, ys: int, yo: int, split: bool = False) -> tuple[str, np.ndarray, bool]:
        """Bands of output rows over column groups (``taps.taps_template``); a last, shorter
        band gets its own instantiation. Also returns the work of the full bands' items in the
        order threads split them (``_skewed``) and whether they split it by bands. ``split``:
        the output is phase-split (``taps_template(split=True)``)."""
        (cout, oh, ow), kh = op.out_shape, geo["kh"]
        rows = taps.band_rows(oh, v)
        ccs, ncc = self._taps_chunks(seg, op, geo, v)
        cg = taps.column_groups(seg, kh, geo["kw"], geo["hq"] * geo["wq"], ccs, ncc)
        head = [self.add_i(cg.ptr), self.add_i(cg.wstart), self.add_i(cg.offsets),
                self.add_f(cg.weights), bias_off, x_off, y_off, res_off or 0, seg.nblk,
                self.add_i(seg.rows.ravel()), self.add_i(cg.spans)]
        tail = [geo["wq"], ow, ys, yo, ncc, ACT_CODES[act or "none"], int(res_off is not None)]
        if split:
            hq, dwq = split2_geometry(oh, ow)
            tail += [hq * dwq, dwq, cout * hq * dwq,
                     *(strides(self.g, op.res, self.padded) if op.res is not None else (0, 0, 0))]
        full, rest = divmod(oh, rows)
        calls = []
        for r, band0, nb in ((rows, 0, full), (rest, full * rows, 1)):
            if r and nb:
                key = f"tk_r{r}_v{v}_k{kh}" + ("_x2" if split else "")
                self._template(key, taps.taps_template(key, r, v, kh, split))
                args = [*head, band0, nb, *tail]
                calls.append(f"  {{ {self._invoke(key, args)} }}")
        costs = np.tile(np.diff(seg.eptr), max(full, 1))
        return f"{_sig(name)} {{\n" + "\n".join(calls) + "\n}\n", costs, full >= 2

    def _taps_chunks(self, seg: Segment, op: ConvOp, geo: dict[str, Any], v: int) -> tuple[int, int]:
        """(input channels per chunk, chunks) of ``taps_kernel`` for ``seg``."""
        cin, ow = op.in_shape[0], op.out_shape[2]
        ccs = taps.chunk_channels(cin, taps.band_rows(op.out_shape[1], v), geo, ow, v,
                                  self.isa.lanes, int(seg.eptr[-1]) // max(seg.nblk, 1))
        return ccs, -(-cin // ccs)

    def dw9_kernel(self, name: str, seg: Segment, offsets: np.ndarray, bias_off: int, x_off: int,
                   y_off: int, res_off: int | None, act: str | None, T: int, ys: int,
                   yo: int, geo: dict[str, Any], bands: bool, jm: int = -1,
                   plain: bool = False, pack: bool = False) -> str:
        """One row per block, 9 private entries each (depthwise 3x3): bands of output rows
        (``depthwise.dwband_template``, when ``depthwise.use_bands``), a 4x4 plane per vector
        (``depthwise.PLANE4_TEMPLATE``, when ``depthwise.use_plane4``; ``plain``: into a plain
        output), else one vector at a time (``dw9_template``; ``jm``: -1 or a ``junk_mask``;
        ``pack``: into the plain output at ``y_off``, ``ys`` its plane)."""
        args = [self.add_i(seg.rows.ravel()), self.add_i(offsets), self.add_f(seg.weights), bias_off,
                x_off, y_off, res_off or 0, seg.nblk, T, ys, yo, ACT_CODES[act or "none"],
                int(res_off is not None)]
        if bands:
            self._template("dwband", dwband_template())
            fn, args = "dwband", [*args, geo["wq"], geo["ow"]]
        elif plain or use_plane4(offsets, T, geo["wq"], geo["ow"], self.isa.name):
            assert use_plane4(offsets, T, geo["wq"], geo["ow"], self.isa.name), "plain: plane4 only"
            self._template("dw9_plane4", PLANE4_TEMPLATE)
            fn = "dw9_plane4"
            args += [jm, int(plain)]
        elif pack:
            assert not bands, "pack: dw9_v only"
            args[9:11] = [geo["T"] // geo["wq"] * geo["ow"], 0]  # ys, yo: the plain plane
            args.append(self.junk_mask(T, geo["wq"], geo["ow"]))
            v = dw9_vectors(T, self.isa.lanes)
            fn = f"dw9_v{v}_c{geo['wq']}x{geo['ow']}"
            self._template(fn, dw9_template(v, (geo["wq"], geo["ow"])))
        else:
            args.append(jm)
            v = dw9_vectors(T, self.isa.lanes)
            fn = f"dw9_v{v}"
            self._template(fn, dw9_template(v))
        return self._calling(name, fn, args)

    def fill_kernel(self, name: str, seg: Segment, bias_off: int, y_off: int,
                    res_off: int | None, act: str | None, T: int, ys: int, yo: int,
                    jm: int = -1) -> str:
        """Rows of ``seg`` keep no entries: write ``act(bias [+ residual])`` (``FILL_TEMPLATE``;
        ``jm``: -1 or a ``junk_mask``, which keeps a padded destination's border zero)."""
        rows = seg.rows[seg.rows >= 0]
        self._template("fill_rows", FILL_TEMPLATE)
        args = [self.add_i(rows), bias_off, y_off, res_off or 0, rows.size, T, ys, yo,
                ACT_CODES[act or "none"], int(res_off is not None), jm]
        return self._calling(name, "fill_rows", args)

    def _place(self, buf: int, op: ConvOp) -> tuple[int, int, int]:
        """(channel stride, row stride, offset) of ``op``'s output layout in ``buf``."""
        if buf in self.padded:
            return strides(self.g, buf, self.padded)
        _, oh, ow = op.out_shape
        return oh * ow, ow, 0

    def channel_kernel(self, name: str, seg: Segment, offsets: np.ndarray, bias_off: int,
                       x_off: int, y_off: int, res_off: int | None, act: str | None,
                       geo: dict[str, Any], ydst: tuple[int, int, int],
                       rdst: tuple[int, int, int], clanes: int) -> str:
        """``ydst`` / ``rdst``: (channel stride, row stride, offset) of the output / residual;
        ``clanes``: rows per vector (the ISA's lanes, or half of them: ``half_width``)."""
        wq, oh, ow = geo["wq"], geo["T"] // geo["wq"], geo["ow"]
        rows, cols = np.arange(oh)[:, None], np.arange(ow)[None, :]
        pos = (rows * wq + cols).ravel()
        ypos = (ydst[2] + rows * ydst[1] + cols).ravel()
        rpos = (rdst[2] + rows * rdst[1] + cols).ravel()
        cv = seg.p // clanes
        tb = channel_tile(pos.size, cv, self.isa.max_acc)
        ech, part = channel_chunks(pos.size, tb, seg.p, geo, int(np.diff(seg.eptr).max(initial=0)))
        half = clanes < self.isa.lanes
        # 4-pixel tiles of two adjacent pairs (2x2 maps): one full FMA per pair
        pairs = (half and self.isa.name == "avx512" and tb == 4 and cv == 1 and not part
                 and pos.size % 4 == 0 and bool(np.all(pos[1::2] == pos[0::2] + 1)))
        key = f"ck_t{tb}c{cv}p{part}" + ("h" if half else "") + ("x" if pairs else "")
        text = channel_template(key, tb, cv, part, pairs)
        self._template(key, half_width(text) if half else text)
        args = [self.add_i(seg.rows), self.add_i(seg.eptr), self.add_i(offsets),
                self.add_f(seg.weights), bias_off, x_off, y_off, res_off or 0, seg.nblk, ydst[0],
                ACT_CODES[act or "none"], int(res_off is not None), self.add_i(pos),
                self.add_i(ypos), self.add_i(rpos), pos.size, rdst[0], ech]
        return self._calling(name, key, args)

    def crop(self, name: str, op: ConvOp, T: int, wq: int, tmp_off: int, offs: list[int]) -> str:
        cout, oh, ow = op.out_shape
        rp, rr, ro = strides(self.g, op.res, self.padded) if op.res is not None else (0, 0, 0)
        res = offs[op.res] if op.res is not None else 0
        if op.dst in self.split:
            self._template("crop_split2", CROP_SPLIT2_TEMPLATE)
            hq, dwq = split2_geometry(oh, ow)
            args = [tmp_off, offs[op.dst], res, cout * oh, oh, ow, T, wq, hq * dwq, dwq, cout,
                    rp, rr, ro, ACT_CODES[op.act or "none"], int(op.res is not None)]
            return (f"{_sig(name)} {{\n  (void)W; (void)I;\n  "
                    f"{self._invoke('crop_split2', args, 'A')}\n}}\n")
        key = "crop"
        self._template(key, crop_template(key))
        dp, dr, do = strides(self.g, op.dst, self.padded)
        args = [tmp_off, offs[op.dst], res, cout * oh, oh, ow, T, wq, dp, dr, do, rp, rr, ro,
                ACT_CODES[op.act or "none"], int(op.res is not None)]
        return f"{_sig(name)} {{\n  (void)W; (void)I;\n  {self._invoke(key, args, 'A')}\n}}\n"

    def _crop_scratch(self, numel: int) -> int:
        """One wide-row scratch region shared by every crop epilogue (ops run in sequence),
        or one of its own (``private_crop``)."""
        if self.private_crop:
            return self._alloc(self.g.new_buffer((numel,)))
        if numel > self.crop_size:
            self.crop_off = self._alloc(self.g.new_buffer((numel,)))
            self.crop_size = numel
        return self.crop_off


def _kept_kernels(seg: Segment, ntaps: int) -> np.ndarray:
    """[blocks, channels, ntaps] kept mask of a one-row-per-block segment."""
    cin = int(seg.cols.max(initial=0)) // ntaps + 1
    kept = np.zeros((seg.nblk, cin * ntaps), bool)
    kept[np.repeat(np.arange(seg.nblk), np.diff(seg.eptr)), seg.cols] = True
    return kept.reshape(seg.nblk, cin, ntaps)


def _traversal_order(seg: Segment, channels: np.ndarray, ccs: int,
                     ncc: int) -> tuple[np.ndarray, np.ndarray]:
    """Entry order of the spatial kernel's walk, and each (block, channel chunk)'s span in it.

    The kernel visits channel chunk by channel chunk, every block inside; storing the entries
    (weights, offsets) in that order makes their stream sequential, which the hardware
    prefetcher follows. Block-major storage made each visit a fresh DRAM miss: a 1x1 conv with
    1.6 MB of weights took 450-550 us with them out of cache (160 us warm), 240-270 us in walk
    order; VGG-16 at 4x went from 2.9x to 3.4-3.6x ONNX Runtime.
    Returns ``order`` (new position -> old entry) and ``spans[b, cc] = (start, end)``.
    """
    blk = np.repeat(np.arange(seg.nblk, dtype=np.int64), np.diff(seg.eptr))
    chunk = np.minimum(channels // ccs, ncc - 1)
    order = np.lexsort((np.arange(blk.size), blk, chunk))
    counts = np.zeros((ncc, seg.nblk), np.int64)
    np.add.at(counts, (chunk, blk), 1)
    ends = np.cumsum(counts.ravel()).reshape(ncc, seg.nblk)
    spans = np.stack([ends - counts, ends], -1).transpose(1, 0, 2)
    return order, np.ascontiguousarray(spans)


def _private_copy(graph: Graph) -> Graph:
    """The graph with its own buffer list (layout planning sets buffer sizes)."""
    return Graph([dataclasses.replace(buf) for buf in graph.buffers], graph.ops, graph.input,
                 graph.output, graph.output_shape)


def default_configs(graph: Graph, isa: Isa, threads: int) -> dict[str, KernelConfig]:
    """The untuned kernel choice of every conv / linear layer, given the buffer layouts
    ``generate`` will use (a pointwise conv on a padded input runs over wider rows)."""
    graph = _private_copy(graph)
    masked = plan_masked(graph, isa.lanes, threads)
    padded = plan_padded(graph, isa.lanes, threads, masked)
    split = plan_split2(graph, padded)
    return {op.name: default_config(op, isa, threads, op.src in padded, op.src in split,
                                    op.name in masked)
            for op in graph.ops if isinstance(op, ConvOp)}


def generate(graph: Graph, isa: Isa, threads: int, configs: dict[str, KernelConfig] | None = None,
             *, inject_error: str | None = None, bands: BandPlan | None = None) -> Program:
    """Generate the C program for ``graph`` (see the module docstring for the runtime model).

    The graph is not modified: scratch buffers and layouts go to a private copy of its buffer
    list, so repeated calls (tuning) give identical sources for identical configs.
    ``bands``: ``graph`` is lowered at band height and runs banded (``compiler_backend.bands``;
    each band's kernels on one thread, so pass ``threads=1``).
    """
    graph = _private_copy(graph)
    b = _Builder(graph, isa, threads, configs or {}, inject_error, bands)
    offs = b.plan_memory()
    segments: list[list[int]] = [[]]
    steps: dict[int, list[tuple[str, int]]] = {}
    for k, op in enumerate(graph.ops):
        if isinstance(op, FallbackOp):
            segments.append([])
            continue
        steps[k] = b.emit_op(k, op, offs)
        segments[-1].append(k)
    arena = b.arena
    if bands is not None:
        arena = _band_steps(b, bands, offs, steps)
    src = [f"/* npas-env compiler_backend generator v{GENERATOR_VERSION}, isa {isa.name} */",
           prelude(isa), ACT_HELPERS, f"double npas_prof[{max(1, len(graph.ops))}];", "int npas_prof_on = 0;",
           "double npas_prof_t;  /* when the last profiled op ended (thread 0) */"]
    src.extend(b.template_texts())
    line_map: list[tuple[int, int, str]] = []
    line = sum(s.count("\n") + 1 for s in src) + 1
    for name, text in b.funcs:
        n = text.count("\n") + 1
        line_map.append((line, line + n, name))
        src.append(text)
        line += n
    nsteps = max([sum(len(steps[k]) for k in ops) for ops in segments] + [1])
    src.append(POOL_TEMPLATE.replace("{nsteps}", str(nsteps)))
    for si, ops in enumerate(segments):
        src.append(segment_source(si, ops, steps))
    src.append(f"int npas_nops(void) {{ return {len(graph.ops)}; }}")
    if len(segments) == 1:  # no PyTorch fallbacks: whole batches run inside C
        n_in = int(np.prod(graph.buffers[graph.input].shape))
        n_out = int(np.prod(graph.buffers[graph.output].shape))
        src.append(BATCH_TEMPLATE.format(i_off=offs[graph.input], n_in=n_in, o_off=offs[graph.output],
                                 n_out=n_out))
    weights = np.concatenate(b.f_parts) if b.f_parts else np.zeros(16, np.float32)
    ints = np.concatenate(b.i_parts) if b.i_parts else np.zeros(1, np.int32)
    names = [getattr(op, "name", f"op{k}") for k, op in enumerate(graph.ops)]
    kinds = [op.kind for op in graph.ops]
    return Program("\n".join(src) + "\n", weights, ints, arena, offs, segments, names, kinds,
                   b.layers, line_map)


def _band_steps(b: _Builder, plan: BandPlan, offs: list[int],
                steps: dict[int, list[tuple[str, int]]]) -> int:
    """Turn the trunk's steps into band steps (``bands.band_step_source``), each running the
    ops from one 3x3 conv reading a halo up to the next (the threads meet only before such a
    conv), the first one copying the input rows; the writer of each halo map copies its edge
    rows into mailboxes past both band arenas (``bands.plan_mailboxes``), and the step of the
    first 3x3 conv reading it copies the other band's rows into its border. Add the join of the
    pools after the trunk. Returns the arena size (floats).

    One band step per op instead: MobileNetV2 block 8x 447.9 -> 438.8 us, ResNet-20 106.0 ->
    104.6 us (AMD Zen 4 under AVX2, 2 threads, interleaved).
    """
    band = bands_mod.band_arena(b.arena)
    texts = [bands_mod.input_source("band_input", plan, b.g, offs, band)]
    head = [k for k in steps if k < plan.head and steps[k]]
    halo_maps = [b.g.ops[k].dst for k in head if b.g.ops[k].dst in b.halo]
    outgoing = [bands_mod.pushes(b.g, buf, offs[buf], buf in b.split) for buf in halo_maps]
    items, end = bands_mod.plan_mailboxes([p for ps in outgoing for p in ps],
                                          bands_mod.BANDS * band)
    mail: dict[int, list[bands_mod.Push]] = {}  # each halo map's pushes, with their mailboxes
    for buf, ps in zip(halo_maps, outgoing, strict=True):
        mail[buf], items = items[:len(ps)], items[len(ps):]
    pulled: set[int] = set()
    groups: list[tuple[int, list[str]]] = []
    for k in head:
        op = b.g.ops[k]
        reads_halo = (isinstance(op, ConvOp) and op.src in b.halo
                      and op.weight.shape[2] == 3)
        if not groups or reads_halo:
            groups.append((k, []))
        calls = groups[-1][1]
        if isinstance(op, ConvOp) and reads_halo and op.src in mail and op.src not in pulled:
            texts.append(bands_mod.pull_source(f"pull_{k}", band, mail[op.src]))
            calls.append(f"pull_{k}(b, A);")  # the map's first 3x3 reader
            pulled.add(op.src)
        if k == head[0]:
            calls.append("band_input(b, A);")
        calls += [f"{f}(0, 1, W, I, Ab);" for f, _ in steps[k]]
        if op.dst in mail:
            texts.append(bands_mod.push_source(f"push_{k}", band, mail[op.dst]))
            calls.append(f"push_{k}(b, A);")
        calls.append(bands_mod.PROFILE.format(k=k))
        steps[k] = []
    for first, calls in groups:
        texts.append(bands_mod.band_step_source(f"band_op_{first}", calls, band))
        steps[first] = [(f"band_op_{first}", bands_mod.BANDS)]
    pool = b.g.ops[plan.head - 1]
    texts.append(bands_mod.join_source("band_join", offs[pool.dst],
                                       int(np.prod(b.g.buffers[pool.dst].shape)), band))
    steps[plan.head - 1].append(("band_join", 1))
    b.funcs.append(("banded execution", "\n".join(texts)))
    return -(-end // 16) * 16
