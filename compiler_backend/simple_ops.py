"""C emitters of the simple (non-conv) ops: per-channel affine, eltwise, pooling, concat.

Each returns the op's C function text (a step: slice ``tid`` of ``nt`` via PART) and the
thread count it is worth (1 for small tensors). ``b`` is the code generator's builder: it
provides the graph buffers, the weight arena (``add_f``) and the threshold ``_lt``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compiler_backend.ir import AffineOp, AffineStage, ConcatOp, EltwiseOp, PoolOp
from compiler_backend.kernels import sig as _sig
from compiler_backend.layout import strides


def emit_affine(b: Any, fn: str, op: AffineOp, offs: list[int]) -> tuple[str, int]:
    """Per-channel ``y = act(x * scale + shift [+ res])`` after the stages of ``op.pre``."""
    shape = b.g.buffers[op.src].shape
    c = shape[0]
    hw = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    stages = [*op.pre, AffineStage(op.scale, op.shift, op.act)]
    expr = f"S[(long)c * {hw} + i]"
    for n, st in enumerate(stages):
        expr = f"{expr} * W[{b.add_f(st.scale)} + c] + W[{b.add_f(st.shift)} + c]"
        if n == len(stages) - 1 and op.res is not None:
            expr = f"{expr} + R[(long)c * {hw} + i]"
        expr = f"e_{st.act or 'none'}({expr})"
    rdecl = f" const float* R = A + {offs[op.res]};" if op.res is not None else ""
    return f"""{_sig(fn)} {{
  const float* S = A + {offs[op.src]}; float* D = A + {offs[op.dst]};{rdecl} (void)I;
  PART({c})
  for (int c = lo; c < hi; ++c) {{
#pragma omp simd
for (int i = 0; i < {hw}; ++i) D[(long)c * {hw} + i] = {expr};
  }}
}}
""", b._lt(c * hw)


def emit_eltwise(b: Any, fn: str, op: EltwiseOp, offs: list[int]) -> tuple[str, int]:
    """``dst = act(a <op> b)``, same shape or per-channel broadcast."""
    shape = b.g.buffers[op.dst].shape
    n = int(np.prod(shape))
    a = op.act or "none"
    lt = b._lt(n)
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
  PART({n})
  #pragma omp simd
  for (int i = lo; i < hi; ++i) D[i] = e_{a}({expr});
}}
""", lt


def _global_avg(fn: str, c: int, n: int, src: int, dst: int, count: int = 0) -> str:
    """Global average pooling of ``c`` planes of ``n`` floats, ``VL`` channels at a time: plain
    planes, or padded ones whose zero borders add nothing (``count`` pixels each).

    Each channel's pixels are summed into one vector, then the ``VL`` vectors of a block are
    folded pairwise (even + odd lanes) until one vector holds the block's ``VL`` sums in channel
    order. A scalar sum per channel was one dependent add per pixel: MobileNetV2's 1280 x 4 x 4
    took 8.4 us, now 0.9 (AVX-512 host, the step timed alone). Also serves ``x.mean((2, 3))``,
    whose ``[C]`` result the per-row pooling could not take.
    """
    return f"""{_sig(fn)} {{
  const float* X = A + {src}; float* D = A + {dst};
  (void)W; (void)I;
  PART(({c} + VL - 1) / VL)
  for (int blk = lo; blk < hi; ++blk) {{
    const int c0 = blk * VL;
    if (c0 + VL <= {c}) {{
      vf v[VL];
      for (int j = 0; j < VL; ++j) {{
        const float* x = X + (long)(c0 + j) * {n};
        vf a = VZERO(); int i = 0;
        for (; i + VL <= {n}; i += VL) a = VADD(a, VLOAD(x + i));
        if (i < {n}) a = VADD(a, VLOADM(x + i, {n} - i));
        v[j] = a;
      }}
      for (int m = VL / 2; m >= 1; m /= 2)
        for (int j = 0; j < m; ++j) v[j] = VADD(VEVEN(v[2 * j], v[2 * j + 1]), VODD(v[2 * j], v[2 * j + 1]));
      VSTORE(D + c0, VMUL(v[0], VSET1(1.f / {count or n})));
    }} else {{
      for (int q = c0; q < {c}; ++q) {{
        float s = 0.f;
        for (int i = 0; i < {n}; ++i) s += X[(long)q * {n} + i];
        D[q] = s * (1.f / {count or n});
      }}
    }}
  }}
}}
"""


def emit_pool(b: Any, fn: str, op: PoolOp, offs: list[int]) -> tuple[str, int]:
    """Max / average / adaptive-average pooling, one (channel, output row) per item."""
    c, h, w = b.g.buffers[op.src].shape
    if op.op == "adaptive_avg" and b.g.buffers[op.dst].numel == c:  # to [C, 1, 1] or [C]
        plane = strides(b.g, op.src, b.padded)[0]
        return _global_avg(fn, c, plane, offs[op.src], offs[op.dst], h * w), b._lt(c * h * w)
    oc, oh, ow = b.g.buffers[op.dst].shape
    # both sides in their own layouts (plain or padded: ``layout.strides``)
    xc, xr, xo = strides(b.g, op.src, b.padded)
    dc, dr, do = strides(b.g, op.dst, b.padded)
    head = (f"{_sig(fn)} {{\n  const float* X = A + {offs[op.src] + xo}; "
            f"float* D = A + {offs[op.dst] + do};\n  PART({c * oh})\n")
    loop = f"  for (int q = lo; q < hi; ++q) {{\n    const int c = q / {oh}, oy = q % {oh};\n"
    loop += f"    const float* x = X + (long)c * {xc}; float* d = D + (long)c * {dc} + oy * {dr};\n"
    if op.op == "adaptive_avg":
        body = f"""    const int hs = (oy * {h}) / {oh}, he = ((oy + 1) * {h} + {oh} - 1) / {oh};
for (int ox = 0; ox < {ow}; ++ox) {{
  const int ws = (ox * {w}) / {ow}, we = ((ox + 1) * {w} + {ow} - 1) / {ow};
  float s = 0.f;  /* a vector reduction: one scalar add chain costs 4 cycles per element */
  if (ws == 0 && we == {w}) {{
    const float* r = x + hs * {xr}; const int n = (he - hs) * {xr};  /* borders are zero */
    _Pragma("omp simd reduction(+:s)") for (int i = 0; i < n; ++i) s += r[i];
  }} else {{
    for (int i = hs; i < he; ++i) {{
      _Pragma("omp simd reduction(+:s)") for (int j = ws; j < we; ++j) s += x[i * {xr} + j];
    }}
  }}
  d[ox] = s / (float)((he - hs) * (we - ws));
}}"""
    elif (op.op == "max" and tuple(op.kernel) == tuple(op.stride) == (2, 2)
          and tuple(op.padding) == (0, 0) and 2 * oh <= h and 2 * ow <= w):
        # the common 2x2 / stride-2 max pool: whole vectors of outputs from two input rows
        # (AVX-512 host: VGG-16's five pools 45 -> 15 us, the 64 x 32 x 32 one 23 -> 5)
        # the last n outputs read 2n inputs of each row: masked loads, or scalars for rows
        # of 1-3 outputs (VGG-16's 2x2 -> 1x1 pool: 0.4 against 1.6 us)
        tail = f"""if (ox < {ow}) {{
  const int n = {ow} - ox, na = 2 * n < VL ? 2 * n : VL, nb = 2 * n - na;
  const vf a = VMAX(VLOADM(r0 + 2 * ox, na), VLOADM(r1 + 2 * ox, na));
  const vf b = VMAX(VLOADM(r0 + 2 * ox + VL, nb), VLOADM(r1 + 2 * ox + VL, nb));
  VSTOREM(d + ox, VMAX(VEVEN(a, b), VODD(a, b)), n);
}}""" if ow >= 4 else f"""for (; ox < {ow}; ++ox) {{
  const float u = r0[2 * ox] > r0[2 * ox + 1] ? r0[2 * ox] : r0[2 * ox + 1];
  const float v = r1[2 * ox] > r1[2 * ox + 1] ? r1[2 * ox] : r1[2 * ox + 1];
  d[ox] = u > v ? u : v;
}}"""
        body = f"""    const float* r0 = x + (long)(2 * oy) * {xr}; const float* r1 = r0 + {xr};
int ox = 0;
for (; ox + VL <= {ow}; ox += VL) {{
  const vf a = VMAX(VLOAD(r0 + 2 * ox), VLOAD(r1 + 2 * ox));
  const vf b = VMAX(VLOAD(r0 + 2 * ox + VL), VLOAD(r1 + 2 * ox + VL));
  VSTORE(d + ox, VMAX(VEVEN(a, b), VODD(a, b)));
}}
{tail}"""
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
  for (int i = ys; i < ye; ++i) for (int j = xs; j < xe; ++j) {{ const float v = x[i * {xr} + j]; {upd} }}
  (void)ye0; (void)xe0;
  d[ox] = {fin};
}}"""
    return head + loop + body + "\n  }\n}\n", b._lt(c * h * w)


def emit_concat(b: Any, fn: str, op: ConcatOp, offs: list[int]) -> str:
    """Channel concat as consecutive copies (one thread)."""
    lines, pos = [], 0
    for s in op.srcs:
        n = int(np.prod(b.g.buffers[s].shape))
        lines.append(f"    memcpy(D + {pos}, A + {offs[s]}, {n} * sizeof(float));")
        pos += n
    body = "\n".join(lines)
    return (f"{_sig(fn)} {{\n  float* D = A + {offs[op.dst]};\n  (void)W; (void)I;\n"
            f"  if (tid == 0) {{\n{body}\n  }}\n  (void)nt;\n}}\n")
