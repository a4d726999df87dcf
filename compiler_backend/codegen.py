"""Generate one C source for a lowered model: kernels per layer, segments, data arenas.

Runtime model: three arenas passed by pointer to every exported ``seg_<k>(W, I, A, nt)``:
``W`` float constants (packed weights, biases), ``I`` int32 constants (entry offsets, rows,
block pointers), ``A`` float activations (every buffer at a fixed offset). The .so therefore
depends only on the *structure* (shapes, masks, tuning), not on weight values. Fallback ops
split the model into segments; PyTorch runs between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler_backend.heuristics import chunking, conv_geometry, default_config
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
    NOINLINE,
    PAD_TEMPLATE,
    channel_template,
    crop_template,
    spatial_template,
)
from compiler_backend.sparsity import Segment, build_segments, structure_label
from compiler_backend.tuning.base import KernelConfig

GENERATOR_VERSION = "2"
_SLACK = 256  # floats after every buffer: wide-row / full-tile over-reads stay in the arena
_conv_geometry = conv_geometry  # backwards-compatible names
__all__ = ["GENERATOR_VERSION", "LayerInfo", "Program", "default_config", "generate"]


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
                 configs: dict[str, KernelConfig], inject_error: str | None) -> None:
        self.g, self.isa, self.threads = graph, isa, threads
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
        offsets = [-1] * len(self.g.buffers)
        pos = 0
        for buf in self.g.buffers:
            if buf.alias_of is None:
                offsets[buf.idx] = pos
                pos += -(-(buf.numel + _SLACK) // 16) * 16
        for buf in self.g.buffers:
            src = buf.idx
            while self.g.buffers[src].alias_of is not None:
                src = self.g.buffers[src].alias_of
            offsets[buf.idx] = offsets[src]
        self.arena = pos
        return offsets

    # -------------------------------------------------------------- ops
    def emit_op(self, k: int, op: Any, offs: list[int]) -> str:
        fn = f"op_{k}"
        if isinstance(op, ConvOp):
            body = self.conv(fn, k, op, offs)
        elif isinstance(op, AffineOp):
            body = self.affine(fn, op, offs)
        elif isinstance(op, EltwiseOp):
            body = self.eltwise(fn, op, offs)
        elif isinstance(op, PoolOp):
            body = self.pool(fn, op, offs)
        elif isinstance(op, ConcatOp):
            body = self.concat(fn, op, offs)
        else:
            raise TypeError(op)
        if self.inject_error is not None and getattr(op, "name", None) == self.inject_error:
            body = body.replace("{", "{ this_is_not_c ", 1)
        self.funcs.append((op.name, body))
        return fn

    def _lt(self, numel: int) -> int:
        return self.threads if numel >= 32768 else 1

    def conv(self, fn: str, k: int, op: ConvOp, offs: list[int]) -> str:
        cfg = self.configs.get(op.name) or default_config(op, self.isa, self.threads)
        geo = _conv_geometry(op)
        cin, h, w = op.in_shape
        cout, oh, ow = op.out_shape
        T, wq, hq = geo["T"], geo["wq"], geo["hq"]
        parts: list[str] = []
        calls: list[str] = []
        # source: the input itself or a padded / phase-split copy
        if geo["direct"]:
            x_off = offs[op.src]
        else:
            nph = len(geo["phases"])
            pbuf = self.g.new_buffer((nph, cin, hq, wq), pinned=True)
            x_off = self._alloc(pbuf)
            parts.append(self.prologue(f"{fn}_pad", op, geo, offs[op.src], x_off))
            calls.append(f"{fn}_pad(tid, nt, W, I, A);\n  _Pragma(\"omp barrier\")")
        # destination: final output, or a wide-row scratch buffer + crop epilogue
        if geo["crop"]:
            tmp = self.g.new_buffer((cout, T))
            y_off, res_off, act = self._alloc(tmp), None, None
        else:
            y_off = offs[op.dst]
            res_off = offs[op.res] if op.res is not None else None
            act = op.act
        lanes = self.isa.lanes
        segs = build_segments(op.weight, op.kept, op.groups, family=cfg.family,
                              p_max=cfg.p_max, lanes=lanes)
        bias_off = self.add_f(op.bias)
        for si, seg in enumerate(segs):
            offsets = self._entry_offsets(seg.cols, op, geo)
            name = f"{fn}_s{si}"
            if cfg.family == "channel":
                parts.append(self.channel_kernel(name, seg, offsets, bias_off, x_off, y_off,
                                                 res_off, act, T))
            else:
                v = max(1, min(cfg.v, self.isa.max_acc // seg.p))
                parts.append(self.spatial_kernel(name, seg, offsets, bias_off, x_off, y_off,
                                                 res_off, act, T, v, cfg.threads, geo, cin))
            calls.append(f"{name}(tid, nt, W, I, A);")
        if geo["crop"]:
            calls.append("_Pragma(\"omp barrier\")")
            parts.append(self.crop(f"{fn}_crop", op, T, wq, y_off, offs))
            calls.append(f"{fn}_crop(tid, nt, W, I, A);")
        kept = int(op.kept.sum())
        self.layers.append(LayerInfo(
            op.name, k, cfg.family, structure_label(op.kept), sorted({s.p for s in segs}),
            kept / max(op.kept.size, 1), 2 * op.kept.size * oh * ow, 2 * kept * oh * ow, cfg))
        head = _sig(fn)
        clamp = f"nt = {cfg.threads} < nt ? {cfg.threads} : nt;"
        return "\n".join(parts) + f"\n{head} {{\n  {clamp}\n  " + "\n  ".join(calls) + "\n}\n"

    def _alloc(self, buf: int) -> int:
        self.extra_bufs.append(buf)
        off = self.arena
        self.arena += -(-(self.g.buffers[buf].numel + _SLACK) // 16) * 16
        return off

    def _entry_offsets(self, cols: np.ndarray, op: ConvOp, geo: dict[str, Any]) -> np.ndarray:
        kh, kw, s = geo["kh"], geo["kw"], geo["s"]
        cin = op.in_shape[0]
        ci, r = np.divmod(cols, kh * kw)
        i, j = np.divmod(r, kw)
        plane = geo["hq"] * geo["wq"]
        pidx = {p: n for n, p in enumerate(geo["phases"])}
        phase = np.array([pidx[(a, b)] for a, b in zip(i % s, j % s, strict=False)], np.int64)
        return phase * cin * plane + ci * plane + (i // s) * geo["wq"] + (j // s)

    def _template(self, key: str, text: str) -> None:
        if key not in self.templates:
            self.templates[key] = text

    def prologue(self, name: str, op: ConvOp, geo: dict[str, Any], src: int, dst: int) -> str:
        cin, h, w = op.in_shape
        s, ph, pw, hq, wq = geo["s"], geo["ph"], geo["pw"], geo["hq"], geo["wq"]
        plane = hq * wq
        self._template("pad", PAD_TEMPLATE)
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
            calls.append(f"  {{ static const int k[15] = {{{', '.join(map(str, args))}}}; "
                         "pad_phase(tid, nt, A, k); }")
        return f"{_sig(name)} {{\n  (void)W; (void)I;\n" + "\n".join(calls) + "\n}\n"

    def spatial_kernel(self, name: str, seg: Segment, offsets: np.ndarray, bias_off: int,
                       x_off: int, y_off: int, res_off: int | None, act: str | None, T: int,
                       v: int, lt: int, geo: dict[str, Any], cin: int) -> str:
        p, lanes = seg.p, self.isa.lanes
        vw = v * lanes
        ro, eo = self.add_i(seg.rows), self.add_i(seg.eptr)
        oo, wo = self.add_i(offsets), self.add_f(seg.weights)
        nch, tch, ccs = chunking(T, vw, geo, 4 * seg.weights.size, seg.nblk, lt)
        ci = seg.cols // (geo["kh"] * geo["kw"])
        ncc = max(1, -(-cin // ccs))
        bounds = np.arange(ncc + 1) * ccs
        cp = np.stack([seg.eptr[b] + np.searchsorted(ci[seg.eptr[b]:seg.eptr[b + 1]], bounds)
                       for b in range(seg.nblk)]) if seg.nblk else np.zeros((0, ncc + 1))
        co = self.add_i(cp)
        a = act or "none"
        has_res = res_off is not None
        key = f"sk_p{p}_v{v}_{a}_{int(has_res)}"
        self._template(key, spatial_template(key, p, v, a, has_res))
        args = [ro, eo, oo, wo, bias_off, x_off, y_off, res_off or 0, seg.nblk, nch, tch, T, T, 0,
                co, ncc]
        return (f"{_sig(name)} {{\n  static const int k[16] = {{{', '.join(map(str, args))}}};\n"
                f"  {key}(tid, nt, W, I, A, k);\n}}\n")

    def channel_kernel(self, name: str, seg: Segment, offsets: np.ndarray, bias_off: int,
                       x_off: int, y_off: int, res_off: int | None, act: str | None,
                       T: int) -> str:
        ro, eo = self.add_i(seg.rows), self.add_i(seg.eptr)
        oo, wo = self.add_i(offsets), self.add_f(seg.weights)
        tb = min(T, 8)
        a = act or "none"
        has_res = res_off is not None
        key = f"ck_t{tb}_{a}_{int(has_res)}"
        self._template(key, channel_template(key, tb, a, has_res))
        args = [ro, eo, oo, wo, bias_off, x_off, y_off, res_off or 0, seg.nblk, T]
        return (f"{_sig(name)} {{\n  static const int k[10] = {{{', '.join(map(str, args))}}};\n"
                f"  {key}(tid, nt, W, I, A, k);\n}}\n")

    def crop(self, name: str, op: ConvOp, T: int, wq: int, tmp_off: int, offs: list[int]) -> str:
        cout, oh, ow = op.out_shape
        a = op.act or "none"
        has_res = op.res is not None
        key = f"crop_{a}_{int(has_res)}"
        self._template(key, crop_template(key, a, has_res))
        args = [tmp_off, offs[op.dst], offs[op.res] if has_res else 0, cout * oh, oh, ow, T, wq]
        return (f"{_sig(name)} {{\n  (void)W; (void)I;\n  static const int k[8] = {{{', '.join(map(str, args))}}};\n"
                f"  {key}(tid, nt, A, k);\n}}\n")

    def affine(self, fn: str, op: AffineOp, offs: list[int]) -> str:
        shape = self.g.buffers[op.src].shape
        c = shape[0]
        hw = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        so, ho = self.add_f(op.scale), self.add_f(op.shift)
        a = op.act or "none"
        return f"""{_sig(fn)} {{
  const float* S = A + {offs[op.src]}; float* D = A + {offs[op.dst]};
  const float* sc = W + {so}; const float* sh = W + {ho};
  nt = {self._lt(c * hw)} < nt ? {self._lt(c * hw)} : nt;
  PART({c})
  for (int c = lo; c < hi; ++c) {{
    #pragma omp simd
    for (int i = 0; i < {hw}; ++i) D[(long)c * {hw} + i] = s_{a}(S[(long)c * {hw} + i] * sc[c] + sh[c]);
  }}
}}
"""

    def eltwise(self, fn: str, op: EltwiseOp, offs: list[int]) -> str:
        shape = self.g.buffers[op.dst].shape
        n = int(np.prod(shape))
        a = op.act or "none"
        lt = self._lt(n)
        if op.op == "act":
            expr = "X[i]"
        elif op.broadcast:
            hw = int(np.prod(shape[1:]))
            expr = f"X[i] {'+' if op.op == 'add' else '*'} B[i / {hw}]"
        else:
            expr = f"X[i] {'+' if op.op == 'add' else '*'} B[i]"
        bdecl = f" const float* B = A + {offs[op.b]};" if op.b is not None else ""
        return f"""{_sig(fn)} {{
  const float* X = A + {offs[op.a]}; float* D = A + {offs[op.dst]};{bdecl}
  nt = {lt} < nt ? {lt} : nt;
  PART({n})
  #pragma omp simd
  for (int i = lo; i < hi; ++i) D[i] = s_{a}({expr});
}}
"""

    def pool(self, fn: str, op: PoolOp, offs: list[int]) -> str:
        c, h, w = self.g.buffers[op.src].shape
        oc, oh, ow = self.g.buffers[op.dst].shape
        head = f"{_sig(fn)} {{\n  const float* X = A + {offs[op.src]}; float* D = A + {offs[op.dst]};\n"
        head += f"  nt = {self._lt(c * h * w)} < nt ? {self._lt(c * h * w)} : nt;\n  PART({c * oh})\n"
        loop = f"  for (int q = lo; q < hi; ++q) {{\n    const int c = q / {oh}, oy = q % {oh};\n"
        loop += f"    const float* x = X + (long)c * {h * w};\n"
        if op.op == "adaptive_avg":
            body = f"""    const int hs = (oy * {h}) / {oh}, he = ((oy + 1) * {h} + {oh} - 1) / {oh};
    for (int ox = 0; ox < {ow}; ++ox) {{
      const int ws = (ox * {w}) / {ow}, we = ((ox + 1) * {w} + {ow} - 1) / {ow};
      float s = 0.f;
      for (int i = hs; i < he; ++i) for (int j = ws; j < we; ++j) s += x[i * {w} + j];
      D[(long)q * {ow} + ox] = s / (float)((he - hs) * (we - ws));
    }}"""
        else:
            (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
            is_max = op.op == "max"
            init = "-INFINITY" if is_max else "0.f"
            upd = "s = v > s ? v : s;" if is_max else "s += v;"
            if is_max:
                fin = "s"
            elif op.divisor:
                fin = f"s / {float(op.divisor)}f"
            elif op.count_include_pad:
                fin = "s / (float)((ye0 - ys0) * (xe0 - xs0))"
            else:
                fin = "s / (float)((ye - ys) * (xe - xs))"
            body = f"""    const int ys0 = oy * {sh} - {ph}; const int ye0 = ys0 + {kh} < {h + ph} ? ys0 + {kh} : {h + ph};
    const int ys = ys0 > 0 ? ys0 : 0; const int ye = ys0 + {kh} < {h} ? ys0 + {kh} : {h};
    for (int ox = 0; ox < {ow}; ++ox) {{
      const int xs0 = ox * {sw} - {pw}; const int xe0 = xs0 + {kw} < {w + pw} ? xs0 + {kw} : {w + pw};
      const int xs = xs0 > 0 ? xs0 : 0; const int xe = xs0 + {kw} < {w} ? xs0 + {kw} : {w};
      float s = {init};
      for (int i = ys; i < ye; ++i) for (int j = xs; j < xe; ++j) {{ const float v = x[i * {w} + j]; {upd} }}
      (void)ye0; (void)xe0;
      D[(long)q * {ow} + ox] = {fin};
    }}"""
        return head + loop + body + "\n  }\n}\n"

    def concat(self, fn: str, op: ConcatOp, offs: list[int]) -> str:
        lines, pos = [], 0
        for s in op.srcs:
            n = int(np.prod(self.g.buffers[s].shape))
            lines.append(f"    memcpy(D + {pos}, A + {offs[s]}, {n} * sizeof(float));")
            pos += n
        body = "\n".join(lines)
        return (f"{_sig(fn)} {{\n  float* D = A + {offs[op.dst]};\n  (void)W; (void)I;\n"
                f"  if (tid == 0) {{\n{body}\n  }}\n  (void)nt;\n}}\n")


def _sig(name: str) -> str:
    return (f"static {NOINLINE} void {name}(int tid, int nt, const float* restrict W, "
            "const int* restrict I, float* restrict A)")


def generate(graph: Graph, isa: Isa, threads: int, configs: dict[str, KernelConfig] | None = None,
             *, inject_error: str | None = None) -> Program:
    """Generate the C program for ``graph`` (see the module docstring for the runtime model)."""
    b = _Builder(graph, isa, threads, configs or {}, inject_error)
    offs = b.plan_memory()
    segments: list[list[int]] = [[]]
    fn_names: dict[int, str] = {}
    for k, op in enumerate(graph.ops):
        if isinstance(op, FallbackOp):
            segments.append([])
            continue
        fn_names[k] = b.emit_op(k, op, offs)
        segments[-1].append(k)
    src = [f"/* npas-env compiler_backend generator v{GENERATOR_VERSION}, isa {isa.name} */",
           prelude(isa), f"double npas_prof[{max(1, len(graph.ops))}];", "int npas_prof_on = 0;"]
    src.extend(b.templates.values())
    line_map: list[tuple[int, int, str]] = []
    line = sum(s.count("\n") + 1 for s in src) + 1
    for name, text in b.funcs:
        n = text.count("\n") + 1
        line_map.append((line, line + n, name))
        src.append(text)
        line += n
    for si, ops in enumerate(segments):
        src.append(_segment(si, ops, fn_names))
    src.append(f"int npas_nops(void) {{ return {len(graph.ops)}; }}")
    weights = np.concatenate(b.f_parts) if b.f_parts else np.zeros(16, np.float32)
    ints = np.concatenate(b.i_parts) if b.i_parts else np.zeros(1, np.int32)
    names = [getattr(op, "name", f"op{k}") for k, op in enumerate(graph.ops)]
    kinds = [op.kind for op in graph.ops]
    return Program("\n".join(src) + "\n", weights, ints, b.arena, offs, segments, names, kinds,
                   b.layers, line_map)


def _segment(si: int, ops: list[int], fn_names: dict[int, str]) -> str:
    prof = ("if (npas_prof_on && tid == 0) {{ const double t1 = omp_get_wtime(); "
            "npas_prof[{k}] += t1 - tp; tp = t1; }}")
    serial = "\n".join(f"    {fn_names[k]}(0, 1, W, I, A); " + prof.format(k=k) for k in ops)
    par = "\n".join(f"    {fn_names[k]}(tid, nt, W, I, A);\n    _Pragma(\"omp barrier\")\n    "
                    + prof.format(k=k) for k in ops)
    return f"""void seg_{si}(const float* restrict W, const int* restrict I, float* restrict A, int nt) {{
  if (nt <= 1) {{
    const int tid = 0; double tp = npas_prof_on ? omp_get_wtime() : 0.0;
{serial}
    (void)tp;
  }} else {{
    #pragma omp parallel num_threads(nt)
    {{
    const int tid = omp_get_thread_num(); double tp = npas_prof_on ? omp_get_wtime() : 0.0;
{par}
    (void)tp;
    }}
  }}
}}
"""
