"""C text of the shared kernel templates (one instantiation per distinct tile shape).

Each template is a ``static`` C function taking the runtime arenas and a pointer to a small
``static const int`` parameter array, so all layers of one tile shape share one compiled body:
this keeps the number of template instantiations (and gcc time) small. Templates are marked
``noinline`` so gcc compiles each once instead of once per call site.
"""

from __future__ import annotations

import re

NOINLINE = "__attribute__((noinline))"
#: Runtime activation codes of the epilogues (one template body serves every activation).
ACT_CODES = {"none": 0, "relu": 1, "relu6": 2, "hardswish": 3}

ACT_HELPERS = """static inline vf v_act(vf y, int act) {
  switch (act) { case 1: return v_relu(y); case 2: return v_relu6(y);
                 case 3: return v_hardswish(y); default: return y; }
}
/* e[m] = s[2m], o[m] = s[2m + 1] for m < n (gcc leaves the plain loop scalar) */
static inline void npas_deinterleave(const float* s, float* e, float* o, int n) {
  __asm__ volatile("");  /* side effects, as PART marks the steps */
  int m = 0;
  for (; m + VL <= n; m += VL) {
    const vf a = VLOAD(s + 2 * m), b = VLOAD(s + 2 * m + VL);
    VSTORE(e + m, VEVEN(a, b)); VSTORE(o + m, VODD(a, b));
  }
  for (; m < n; ++m) { e[m] = s[2 * m]; o[m] = s[2 * m + 1]; }
}
static inline float s_act(float y, int act) {
  switch (act) { case 1: return s_relu(y); case 2: return s_relu6(y);
                 case 3: return s_hardswish(y); default: return y; }
}
"""

#: A persistent worker pool (instead of an OpenMP parallel region per call). Each step's G
#: slices are taken from a generation-tagged two-ended counter (the caller from the front, the
#: workers from the back); the caller waits only until all slices of a step are *done*, never
#: for a worker to arrive, so a worker descheduled on a busy CPU costs nothing (an OpenMP fork /
#: join waits for it every call). Idle workers spin briefly, then sleep on a condition
#: variable. ``{nsteps}`` is the largest step count of a segment.
#: A spin-wait hint: ``pause`` on x86, a compiler barrier elsewhere.
PAUSE_MACRO = r"""#if defined(__x86_64__) || defined(__i386__)
#define NPAS_PAUSE() __builtin_ia32_pause()
#else
#define NPAS_PAUSE() __asm__ volatile("" ::: "memory")
#endif
"""

POOL_TEMPLATE = r"""
#include <pthread.h>
#include <sched.h>
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif
""" + PAUSE_MACRO + r"""typedef void (*npas_job_fn)(long, int, const float*, const int*, float*);
static long npas_ctr[{nsteps}], npas_done[{nsteps}];
static long npas_gen = 0;
__attribute__((unused)) static void npas_no_step(int tid, int nt, const float* W, const int* I,
                                                 float* A) { (void)tid; (void)nt; (void)W; (void)I; (void)A; }
static npas_job_fn npas_job;
static const float* npas_W; static const int* npas_I; static float* npas_A;
static int npas_workers = 0, npas_sleepers = 0;
static pthread_mutex_t npas_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t npas_cv = PTHREAD_COND_INITIALIZER;

/* Thread 0 takes a step's slices from the front, the others from the back: with two threads
   each keeps the same half of every layer (the top rows or first row blocks), so more of a
   layer's input is still in the core that wrote it, and a slow thread still gets fewer slices.
   Against one shared counter (slices dealt alternately), 2 threads, first quartile over 30
   rotated rounds: MobileNetV2 4x 1.19 -> 1.10 ms, 8x 0.96 -> 0.85; ResNet-20 8x 0.222 ->
   0.202; VGG-16 8x 1.36 -> 1.11. The low 16 bits count front slices taken, the next 16 back
   slices, the high 32 the generation. */
static inline int npas_grab(long* c, long g, int G, int back) {
  long v = __atomic_load_n(c, __ATOMIC_ACQUIRE);
  for (;;) {
    if ((v >> 32) != g) return -1;
    const int lo = (int)(v & 0xffffL), hi = G - (int)((v >> 16) & 0xffffL);
    if (lo >= hi) return -1;
    if (__atomic_compare_exchange_n(c, &v, v + (back ? 0x10000L : 1L), 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
      return back ? hi - 1 : lo;
  }
}
static inline int npas_wait_done(long* d, long g, int G) {
  int spins = 0;
  for (;;) {
    const long v = __atomic_load_n(d, __ATOMIC_ACQUIRE);
    if ((v >> 32) != g) return 0;
    if ((int)(v & 0xffffffffL) >= G) return 1;
    if (++spins < 4000) NPAS_PAUSE(); else { sched_yield(); spins = 0; }
  }
}
#define NPAS_STEP(s, f, G) do { int g_; \
    while ((g_ = npas_grab(&npas_ctr[s], gen, (G), tid != 0)) >= 0) { \
      f(g_, (G), W, I, A); __atomic_fetch_add(&npas_done[s], 1L, __ATOMIC_RELEASE); } \
    if (!npas_wait_done(&npas_done[s], gen, (G))) return; } while (0)

/* Workers may run on every CPU the process could use when the library was loaded: a timing
   loop holds its thread on one CPU (``compiler_backend.affinity``), and a worker started from
   inside it would otherwise inherit that one-CPU mask and share the core with its caller.
   (Pinning each worker to its own CPU was tried: ResNet-20 at 4x, 2 threads, 0.30 -> 0.57 ms.)
   A worker that cannot set its mask keeps the inherited one. */
static unsigned long npas_mask[16];
static long npas_mask_len = 0;
__attribute__((constructor)) static void npas_load_mask(void) {
#ifdef __linux__
  npas_mask_len = syscall(SYS_sched_getaffinity, 0, sizeof npas_mask, npas_mask);
#endif
}
static void npas_unpin(void) {
#ifdef __linux__
  if (npas_mask_len > 0)
    (void)syscall(SYS_sched_setaffinity, 0, (unsigned long)npas_mask_len, npas_mask);
#endif
}

static void* npas_worker(void* arg) {
  const int tid = (int)(long)arg;
  npas_unpin();
  long seen = __atomic_load_n(&npas_gen, __ATOMIC_ACQUIRE);
  for (;;) {
    long g; int idle = 0;
    while ((g = __atomic_load_n(&npas_gen, __ATOMIC_SEQ_CST)) == seen) {
      if (++idle < 20000) { NPAS_PAUSE(); continue; }
      pthread_mutex_lock(&npas_mu);
      __atomic_fetch_add(&npas_sleepers, 1, __ATOMIC_SEQ_CST);
      while (__atomic_load_n(&npas_gen, __ATOMIC_SEQ_CST) == seen)
        pthread_cond_wait(&npas_cv, &npas_mu);
      __atomic_fetch_sub(&npas_sleepers, 1, __ATOMIC_SEQ_CST);
      pthread_mutex_unlock(&npas_mu);
      idle = 0;
    }
    seen = g;
    npas_job(g, tid, npas_W, npas_I, npas_A);  /* a stale job finds no slices left */
  }
  return 0;
}

static void npas_run(int nt, npas_job_fn job, int nsteps, const float* W, const int* I,
                     float* A) {
  while (npas_workers < nt - 1) {
    pthread_t th; pthread_attr_t at; pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &at, npas_worker, (void*)(long)(npas_workers + 1)) != 0) break;
    ++npas_workers;
  }
  const long g = npas_gen + 1;
  for (int s = 0; s < nsteps; ++s) {
    __atomic_store_n(&npas_ctr[s], g << 32, __ATOMIC_RELAXED);
    __atomic_store_n(&npas_done[s], g << 32, __ATOMIC_RELAXED);
  }
  npas_job = job; npas_W = W; npas_I = I; npas_A = A;
  __atomic_store_n(&npas_gen, g, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&npas_sleepers, __ATOMIC_SEQ_CST) > 0) {
    pthread_mutex_lock(&npas_mu); pthread_cond_broadcast(&npas_cv); pthread_mutex_unlock(&npas_mu);
  }
  job(g, 0, W, I, A);
}
"""

PAD_TEMPLATE = f"""static {NOINLINE} void pad_phase(int tid, int nt, float* restrict A, const int* k) {{
  const float* X = A + k[0]; float* P = A + k[1];
  const int cin = k[2], h = k[3], w = k[4], s = k[5], da = k[6], db = k[7];
  const int i_lo = k[8], i_hi = k[9], j_lo = k[10], j_hi = k[11], plane = k[12], wq = k[13];
  const int xs = k[14];  /* source row stride (w, or w + 2 for a wide-row source) */
  PART(cin)
  for (int c = lo; c < hi; ++c)
    for (int i = i_lo; i < i_hi; ++i) {{
      const float* sr = X + (long)c * h * xs + (s * i + da) * xs + db;
      float* dr = P + (long)c * plane + i * wq;
      if (s == 1) memcpy(dr + j_lo, sr + j_lo, (size_t)(j_hi - j_lo) * sizeof(float));
      else for (int j = j_lo; j < j_hi; ++j) dr[j] = sr[s * j];
    }}
}}
"""


def gather_taps_template(key: str, T: int, ntap: int, n: int) -> str:
    """Per-tap planes of a tiny map (``heuristics.tap_geometry``).

    Each channel's ``n`` source floats are staged on the stack, then plane ``(tap, c)`` pixel
    ``t`` = staged value ``idx[tap * T + t]`` (slot ``n``, a zero, where the tap falls on the
    padding), by vector gathers (``VGATHER``: gcc emulates a plain gather loop with scalar
    inserts). Parameter array ``k``: src, dst (A arena), idx (I arena), cin, source channel
    stride.
    """
    return f"""static {NOINLINE} void {key}(int tid, int nt, const int* restrict I, float* restrict A,
    const int* k) {{
  const float* X = A + k[0]; float* P = A + k[1]; const int* idx = I + k[2];
  const int cin = k[3], cs = k[4];
  float loc[{n} + 1]; loc[{n}] = 0.f;
  PART(cin)
  for (int c = lo; c < hi; ++c) {{
    memcpy(loc, X + (long)c * cs, {n} * sizeof(float));
    for (int q = 0; q < {ntap}; ++q) {{
      float* p = P + ((long)q * cin + c) * {T}; const int* ix = idx + q * {T};
      int t = 0;
      for (; t + VL <= {T}; t += VL) VSTORE(p + t, VGATHER(loc, ix + t));
      for (; t < {T}; ++t) p[t] = loc[ix[t]];
    }}
  }}
}}
"""


def copy_taps_template(key: str, oh: int, ow: int, ntap: int) -> str:
    """Per-tap planes by row copies: the ``gather_taps_template`` planes when every tap reads
    ``oh`` whole rows of ``ow`` pixels of its channel (stride 1, a padded source), so plane
    ``(tap, c)`` row ``i`` is ``ow`` floats at ``to[tap] + i * xs`` of the channel. Parameter
    array ``k``: src, dst (A arena), to (I arena), cin, source channel stride, source row
    stride."""
    return f"""static {NOINLINE} void {key}(int tid, int nt, const int* restrict I, float* restrict A,
    const int* k) {{
  const float* X = A + k[0]; float* P = A + k[1]; const int* to = I + k[2];
  const int cin = k[3], cs = k[4], xs = k[5];
  PART(cin)
  for (int c = lo; c < hi; ++c)
    for (int q = 0; q < {ntap}; ++q) {{
      float* p = P + ((long)q * cin + c) * {oh * ow}; const float* s = X + (long)c * cs + to[q];
      for (int i = 0; i < {oh}; ++i) memcpy(p + i * {ow}, s + (long)i * xs, {ow} * sizeof(float));
    }}
}}
"""


#: Stride 2 with all four phases (kernels >= 2x2): one pass per input row splits it into its
#: even and odd columns (``npas_deinterleave``) and writes both
#: into the phase planes of its row parity; ``pad_phase`` instead makes one short strided pass
#: per phase and output row.
#: Parameter array ``k``: src, dst, cin, h, w, ph, pw, plane (hq * wq), wq, src row stride.
SPLIT2_TEMPLATE = f"""static {NOINLINE} void pad_split2(int tid, int nt, float* restrict A, const int* k) {{
  const float* X = A + k[0]; float* P = A + k[1];
  const int cin = k[2], h = k[3], w = k[4], ph = k[5], pw = k[6], plane = k[7], wq = k[8];
  const int xs = k[9], x0 = pw & 1, half = (w - x0) / 2, odd_tail = (w - x0) & 1;
  const long phase = (long)cin * plane;
  PART(cin)
  for (int c = lo; c < hi; ++c)
    for (int y = 0; y < h; ++y) {{
      const int a = (y + ph) & 1, i = (y + ph) >> 1;
      const float* sr = X + ((long)c * h + y) * xs;
      float* row = P + (long)(2 * a) * phase + (long)c * plane + (long)i * wq;
      float* d0 = row + (x0 + pw) / 2;                /* columns x0, x0 + 2, ... (phase b = 0) */
      float* d1 = row + phase + (1 - x0 + pw) / 2;    /* the others (phase b = 1) */
      if (x0) d1[0] = sr[0];
      float* e1 = x0 ? d1 + 1 : d1;
      const float* s0 = sr + x0;
      npas_deinterleave(s0, d0, e1, half);
      if (odd_tail) d0[half] = s0[2 * half];
    }}
}}
"""

#: Pruned filters (rows without kept entries): ``y = act(bias [+ residual])`` over the ``T``
#: pixels of each row, in the spatial kernel's output layout (channel stride ``ys``, shift ``yo``).
#: Parameter array ``k``: rows (I arena), bias (W arena), y, res (A arena), nrows, T, ys, yo,
#: act, has_res.
FILL_TEMPLATE = f"""static {NOINLINE} void fill_rows(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* rows = I + k[0]; const float* bias = W + k[1];
  float* Y = A + k[2]; const float* R = A + k[3];
  const int T = k[5], ys = k[6], yo = k[7], act = k[8], hr = k[9];
  const float* jm = k[10] >= 0 ? (const float*)(I + k[10]) : 0;  /* junk_mask, or none */
  PART(k[4])
  for (int i = lo; i < hi; ++i) {{
    const int r = rows[i]; const float b = bias[r]; const vf bb = VSET1(b);
    float* y = Y + (long)r * ys + yo; const float* rp = R + (long)r * ys + yo;
    int t = 0;
    for (; t + VL <= T; t += VL) {{
      vf c = v_act(hr ? VADD(bb, VLOAD(rp + t)) : bb, act);
      if (jm) c = VAND(c, VLOAD(jm + t));
      VSTORE(y + t, c);
    }}
    for (; t < T; ++t) y[t] = jm && !((const int*)jm)[t] ? 0.f : s_act(b + (hr ? rp[t] : 0.f), act);
  }}
}}
"""

#: Zero the two junk columns a wide-row conv leaves in a padded (pad 1) destination: the right
#: border of row ``y`` and the left border of row ``y + 1`` are adjacent: one 8-byte store.
#: Spatial and ``dw9`` tiles and the rows of pruned filters (``fill_rows``) mask their junk
#: lanes (``codegen._Builder.junk_mask``); other kernels still leave them. These passes took
#: 127 us of MobileNetV2's 2.0 ms dense (AVX-512 host, 1 thread, 34 of them) when every
#: wide-row conv needed one (ResNet-20 block 8x's pruned filters: 1.4 us).
BORDER_TEMPLATE = f"""static {NOINLINE} void zero_border(int tid, int nt, float* restrict A, const int* k) {{
  float* D = A + k[0]; const int c = k[1], h = k[2], wq = k[3], plane = k[4];
  static const float z2[2] = {{0.f, 0.f}};
  PART(c)
  for (int q = lo; q < hi; ++q) {{
    float* d = D + (long)q * plane + 2 * wq - 1;
    for (int y = 0; y < h; ++y, d += wq) memcpy(d, z2, sizeof z2);
  }}
}}
"""


def _vsum(terms: list[str]) -> str:
    """C expression adding vectors pairwise (a short tree: fewer dependent adds)."""
    while len(terms) > 1:
        terms = [f"VADD({a}, {b})" for a, b in zip(terms[::2], terms[1::2], strict=False)] + (
            [terms[-1]] if len(terms) % 2 else [])
    return terms[0]


def spatial_template(key: str, p: int, v: int, row: bool = False, split: int = 1,
                     phase_split: bool = False, row_store: tuple[int, int] | None = None,
                     pack: tuple[int, int] | None = None, res_wide: bool = False,
                     pixel_major: bool = False) -> str:
    """The register-tiled spatial kernel: ``p`` rows x ``v`` vectors of output pixels.

    ``split`` > 1 (one-row tiles only) spreads consecutive entries over that many sets of
    accumulators, summed before the store: a one-row tile of a vector or two is otherwise one
    chain of dependent FMAs (VGG-16's 2x2 / 4x4 maps under pattern or unstructured masks).

    Parameter array ``k``: rows, unused, offsets (I arena), weights, bias (W arena), x, y, res
    (A arena), nblk, nch (pixel chunks), tch (chunk width), T (pixels per row), ys (channel
    stride of the output and residual), yo (store shift: a wide-row output lands inside a
    padded destination plane when ``yo = wq + 1``), cp (I arena: per block and input-channel
    chunk the (start, end) of its entries, stored in the walk's order), ncc, act
    (``ACT_CODES``), has_res, fl (I arena: per block its first and last non-empty channel
    chunk), vs, ts (row mode only: vector ``u`` of a
    tile starts ``u * vs`` pixels after the tile, tiles step by ``ts``; with ``vs`` = the row
    width every vector is one output row of a map at most ``VL`` wide).

    ``phase_split``: the output is stored phase-split (``layout.plan_split2``) by the tiles
    themselves, each vector's even and odd lanes to their phase planes (``VSTORE_EO``):
    ``k[21]`` (I arena) holds per output vector the offset of its even half in the channel's
    planes, ``k[22]`` the odd half's distance from it; ``ys`` is the phase plane size; the
    residual's channel stride and origin are ``k[25]``, ``k[26]`` (its rows ``wq`` wide, as
    the tiles' are). Needs rows of whole vectors and one input-channel chunk. MobileNetV2's
    expand convs before a stride-2 depthwise then need no crop pass (144 x 32 x 32: 37 us).
    On wide rows (a 3x3 conv) the tiles run in row mode with ``vs = VL`` and ``ts = wq``: each
    tile is one output row of whole vectors and its ``eo`` entries are ``(t / ts) * v + u``
    (ResNet-20's last blocks of a stage at block sparsity).

    ``k[23]``: -1, or the I-arena offset of a junk mask (``junk_mask``) that the final stores
    AND into each vector, so that a wide-row output keeps its zero border and needs no
    ``zero_border`` pass.

    ``row_store = (ow, lanes)``: the tiles' pixels are a plain ``oh x ow`` map (per-tap planes,
    ``ow`` dividing ``lanes``) and each vector's rows go straight to their rows of the
    destination (row stride ``k[24]``, ``ys`` and ``yo`` its plane and pixel (0, 0)), by
    ``VSTORE_PART`` (``VSTOREM_AT`` for rows not 4 or 8 wide): a padded destination then needs
    no crop pass (MobileNetV2's 960-channel 4x4 expand convs: 13 us each). Needs one
    input-channel chunk, like ``phase_split``.

    ``pack = (wq, ow)`` (AVX-512): the tiles compute wide rows (``wq`` pixels, the first ``ow``
    real) and their final stores pack each vector's real pixels into a plain output
    (``VSTOREC``: a compress, then one masked store), at ``Z = A + k[27]``, channel stride
    ``zs = k[28]``. A residual is read from the same plain layout (``VLOADX``), or with
    ``res_wide`` from a padded one at the wide rows' positions (its channel stride and origin
    ``k[25]``, ``k[26]``, as for ``phase_split``). ``k[23]`` is the ``junk_mask`` naming the
    real lanes; partial sums still go through ``Y``. The plain output then needs no crop pass
    (3x3 64@56 filter-pruned 2x: 24 us of 840).

    Work items are chunk-major (pixel chunk, row block); a thread takes a contiguous range.
    Inside one pixel chunk the kernel walks input-channel chunks outermost so that the input
    slice they touch stays in L1 while every row block consumes it; partial sums go through
    the output buffer. The last tile of a chunk is computed full width and stored with masks
    (loads may over-read into the arena slack).
    """
    acc = " ".join(f"vf a{q}_{u};" for q in range(p) for u in range(v))
    zero = " ".join(f"{{ const vf b = VSET1(bias[rr[{q}]]); "
                    + " ".join(f"a{q}_{u} = b;" for u in range(v)) + " }" for q in range(p))
    reload = " ".join(f"a{q}_{u} = VLOAD(Y + (long)rr[{q}] * ys + t + yo + {u} * @VS@);"
                      for q in range(p) for u in range(v))
    if pixel_major:  # p weights, then one pixel vector at a time: p * v + p + 1 registers
        entry = " ".join(f"const vf w{q} = VSET1(wp[{q}]);" for q in range(p))
        fmas = "\n".join(
            f"          {{ const vf x = VLOAD(xp + {u} * @VS@); "
            + " ".join(f"a{q}_{u} = VFMA(w{q}, x, a{q}_{u});" for q in range(p)) + " }"
            for u in range(v))
    else:  # v pixel vectors, then one weight at a time: p * v + v + 1 registers
        entry = " ".join(f"const vf x{u} = VLOAD(xp + {u} * @VS@);" for u in range(v))
        fmas = "\n".join(
            f"          {{ const vf w = VSET1(wp[{q}]); "
            + " ".join(f"a{q}_{u} = VFMA(w, x{u}, a{q}_{u});" for u in range(v)) + " }"
            for q in range(p))

    # a phase-split output has a layout of its own: the residual then has its own channel
    # stride and origin (its rows as wide as the tiles' rows)
    rbase = "rcs_ + rof_" if phase_split else "ys + yo"

    def res(q: int, u: int, masked: bool) -> str:
        if masked:
            return f" if (hr) y = VADD(y, VLOADM(R + (long)rw[{q}] * {rbase} + t + {u} * @VS@, n{u}));"
        return f" if (hr) y = VADD(y, VLOAD(R + (long)rw[{q}] * {rbase} + t + {u} * @VS@));"

    def store(q: int, u: int, masked: bool, final: bool) -> str:
        dst = f"yp + {u} * @VS@"
        if pack and final:  # the real lanes km{u}, packed from plain pixel s{u} on
            rx = (f" if (hr) y = VADD(y, VLOAD(R + (long)r * rcs_ + rof_ + t + {u} * @VS@));"
                  if res_wide else f" if (hr) y = VADD(y, VLOADX(R + (long)r * zs + s{u}, km{u}));")
            return f" {{ vf y = a{q}_{u};{rx} y = v_act(y, act); VSTOREC(zp + s{u}, y, km{u}); }}"
        body = f"vf y = a{q}_{u};{res(q, u, masked)} y = v_act(y, act); if (jm) y = VAND(y, m{u});" \
            if final else f"vf y = a{q}_{u};"
        if phase_split:  # whole vectors only: n{u} is VL or nothing
            put = f"VSTORE_EO(yp + eo[{u}], yp + eo[{u}] + od, y);"
            return f" if (n{u} > 0) {{ {body} {put} }}" if masked else f" {{ {body} {put} }}"
        if row_store:  # rows j of vector u: lanes [j * ow, (j + 1) * ow)
            ow, lanes = row_store
            part = "VSTORE_PART" if ow in (4, 8) else "VSTOREM_AT"
            put = " ".join((f"if (n{u} > {j * ow}) " if masked else "")
                           + f"{part}(yp + {u * lanes // ow + j} * dr_ - {j * ow}, y, "
                           f"{j * ow}, {ow});" for j in range(lanes // ow))
            return f" {{ {body} {put} }}"
        if masked:
            return f" if (n{u} > 0) {{ {body} VSTOREM({dst}, y, n{u}); }}"
        return f" {{ {body} VSTORE({dst}, y); }}"

    eo_at = f"(t / ts_) * {v}" if row else "t / VL"  # the first eo entry of tile t

    def stores(masked: bool, final: bool) -> str:
        return "\n".join(
            f"          {{ const int r = rw[{q}]; if (r >= 0) {{ "
            + ("float* zp = Z + (long)r * zs;" if pack and final else "")
            + (f"float* yp = Y + (long)r * ys; const int* eo = eot + {eo_at};" if phase_split else
               f"float* yp = Y + (long)r * ys + yo + t / {row_store[0]} * dr_;" if row_store else
               "float* yp = Y + (long)r * ys + t + yo;")
            + "".join(store(q, u, masked, final) for u in range(v)) + " } }" for q in range(p))

    if split > 1:
        assert p == 1, "split accumulators are for one-row tiles"
        parts = []
        for g in range(split):
            acc_g = "a0" if g == 0 else f"b{g}"
            parts.append(f"{{ const float* xp = X + off[e + {g}] + t; const vf w = VSET1(wp[{g}]); "
                         + " ".join(f"{acc_g}_{u} = VFMA(w, VLOAD(xp + {u} * @VS@), {acc_g}_{u});"
                                    for u in range(v)) + " }")
        zeros = " ".join(f"vf b{g}_{u} = VZERO();" for g in range(1, split) for u in range(v))
        split_loop = (f"          int e = e0; {zeros}\n"
                      f"          for (; e + {split} <= e1; e += {split}, wp += {split}) {{\n"
                      + "\n".join("            " + q for q in parts) + "\n          }\n")
        split_sum = "\n".join(
            f"          a0_{u} = " + _vsum([f"a0_{u}", *[f"b{g}_{u}" for g in range(1, split)]]) + ";"
            for u in range(v)) + "\n"
    else:
        split_loop, split_sum = "          int e = e0;\n", ""
    counts = " ".join(f"const int n{u} = t1 - t - {u} * @VS@ < VL ? t1 - t - {u} * @VS@ : VL;"
                      for u in range(v))
    rr = ", ".join(f"rw[{q}] < 0 ? 0 : rw[{q}]" for q in range(p))
    mode = ("const int vs_ = k[19], ts_ = k[20];" if row else "")
    jmask = "            " + " ".join(
        f"vf m{u} = VZERO(); if (jm) m{u} = VLOAD(jm + t + {u} * @VS@);" for u in range(v))
    jmask_n = jmask
    if pack:  # per vector: its real lanes (within the tile's n{u}) and their first plain pixel
        wq, ow = pack
        jmask = "            " + " ".join(
            f"const vm km{u} = VKEEP(jm + t + {u} * @VS@); "
            f"const int s{u} = NPAS_PLAIN(t + {u} * @VS@, {wq}, {ow});" for u in range(v))
        jmask_n = "            " + " ".join(
            f"const vm km{u} = n{u} > 0 ? VKEEP(jm + t + {u} * @VS@) & VMASK(n{u}) : 0; "
            f"const int s{u} = NPAS_PLAIN(t + {u} * @VS@, {wq}, {ow});" for u in range(v))
    eo_args = ("\n  const int* eot = I + k[21]; const int od = k[22];"
               "\n  const int rcs_ = k[25], rof_ = k[26]; (void)rcs_; (void)rof_;"
               if phase_split else "")
    eo_args += "\n  const int dr_ = k[24];" if row_store else ""
    eo_args += "\n  float* Z = A + k[27]; const int zs = k[28];" if pack else ""
    eo_args += "\n  const int rcs_ = k[25], rof_ = k[26];" if res_wide else ""
    text = f"""static {NOINLINE} void {key}(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* rows = I + k[0]; const int* off = I + k[2]; const int* cp = I + k[14];
  const float* wt = W + k[3]; const float* bias = W + k[4];
  const float* X = A + k[5]; float* Y = A + k[6]; const float* R = A + k[7]; (void)R;
  const int nblk = k[8], nch = k[9], tch = k[10], T = k[11], ys = k[12], yo = k[13];
  const int ncc = k[15], act = k[16], hr = k[17]; const int* fl = I + k[18];
  const float* jm = k[23] >= 0 ? (const float*)(I + k[23]) : 0;
  {mode}{eo_args}
  PART(nblk * nch)
  for (int it = lo; it < hi;) {{
    const int ch = it / nblk, b0 = it % nblk;
    const int b1 = b0 + (hi - it) < nblk ? b0 + (hi - it) : nblk;
    it += b1 - b0;
    const int t0 = ch * tch; const int t1 = t0 + tch < T ? t0 + tch : T;
    for (int cc = 0; cc < ncc; ++cc) {{
      for (int b = b0; b < b1; ++b) {{
        /* fl[b] = (first, last) non-empty channel chunk of block b: skip empty ones */
        const int cf = fl[2 * b], cl = fl[2 * b + 1];
        const int e0 = cp[2 * (b * ncc + cc)], e1 = cp[2 * (b * ncc + cc) + 1];
        if (cc < cf || cc > cl || (e0 == e1 && cc != cf && cc != cl)) continue;
        const int first = cc == cf, last = cc == cl;
        const int* rw = rows + b * {p};
        const int rr[{p}] = {{{rr}}}; (void)rr;
        const float* wb = wt + (long)e0 * {p};
        for (int t = t0; t < t1; t += @TS@) {{
          __asm__ volatile("" ::: "memory");  /* keep bias broadcasts out of the hot loop */
          {acc}
          if (first) {{ {zero} }} else {{ {reload} }}
          const float* wp = wb;
{split_loop}          _Pragma("GCC unroll 4") for (; e < e1; ++e, wp += {p}) {{
            const float* xp = X + off[e] + t;
            {entry}
{fmas}
          }}
{split_sum}          if (t + @TS@ <= t1) {{
            if (last) {{
{jmask}
{stores(False, True)}
            }} else {{
{stores(False, False)}
            }}
          }} else {{
            {counts}
            if (last) {{
{jmask_n}
{stores(True, True)}
            }} else {{
{stores(True, False)}
            }}
          }}
        }}
      }}
    }}
  }}
}}
"""
    vs, ts = ("vs_", "ts_") if row else ("VL", f"{v} * VL")
    return text.replace("@VS@", vs).replace("@TS@", ts)


def dw9_head(name: str) -> str:
    """Signature and parameter unpacking of a ``dw9``-layout depthwise step (``dw9_template``,
    ``depthwise.PLANE4_TEMPLATE``): ``k`` as documented there."""
    return f"""static {NOINLINE} void {name}(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* rows = I + k[0]; const int* offs = I + k[1];
  const float* wt = W + k[2]; const float* bias = W + k[3];
  const float* X = A + k[4]; float* Y = A + k[5]; const float* R = A + k[6]; (void)R;
  const int T = k[8], ys = k[9], yo = k[10], act = k[11], hr = k[12]; (void)T;
  const float* jm = k[13] >= 0 ? (const float*)(I + k[13]) : 0;"""


def dw9_template(v: int, pack: tuple[int, int] | None = None) -> str:
    """Rows that each own exactly 9 entries and share them with no other row (depthwise 3x3):
    the row's 9 weights stay in registers while it sweeps its whole output plane ``v`` vectors
    at a time (the spatial kernel re-broadcasts them per tile and pays its block bookkeeping for
    9 FMAs). ``v`` divides a small plane exactly where it can (``dw9_vectors``): MobileNetV2's
    4x4 maps are 3 vectors of wide rows, which 2-vector steps covered as 4, a third of the FMAs
    and a masked store spent on nothing.

    Parameter array ``k``: rows, offsets (9 per row; I arena), weights (9 per row), bias
    (W arena), x, y, res (A arena), nrows, T, ys, yo, act, has_res, junk mask (-1 or an I
    offset, as in ``spatial_template``).

    ``pack = (wq, ow)`` (AVX-512): the wide rows' real pixels are packed into a plain output and
    read from a plain residual (``VSTOREC`` / ``VLOADX``; the junk mask names them, ``ys`` is
    the plain plane): MobileNetV2's 8x8 depthwise convs then need no crop pass (7 of them
    took 68 us of the unpruned model's 1.5 ms).
    """
    us = range(v)
    if pack:
        wq, ow = pack
        at = f"const int p_ = t + {{u}} * VL, s_ = NPAS_PLAIN(p_, {wq}, {ow});"
        put = ("vf z = a{u}; if (hr) z = VADD(z, VLOADX(rp + s_, km)); z = v_act(z, act); "
               "VSTOREC(y + s_, z, km);")
        full = " ".join(f"{{ {at.format(u=u)} const vm km = VKEEP(jm + p_); {put.format(u=u)} }}"
                        for u in us)
        # (the junk mask is zero past T)
        part = " ".join(f"{{ {at.format(u=u)} if (p_ < T) {{ const vm km = VKEEP(jm + p_); "
                        f"{put.format(u=u)} }} }}" for u in us)
        return _dw9_body(f"dw9_v{v}_c{wq}x{ow}", v, full, part)
    keep = "if (jm) z = VAND(z, VLOAD(jm + t + {u} * VL));"
    full = " ".join(f"{{ vf z = v_act(hr ? VADD(a{u}, VLOAD(rp + t + {u} * VL)) : a{u}, act); "
                    f"{keep.format(u=u)} VSTORE(y + t + {u} * VL, z); }}" for u in us)
    part = " ".join(
        f"{{ const int n = T - t - {u} * VL < VL ? T - t - {u} * VL : VL; if (n > 0) {{ "
        f"vf z = v_act(hr ? VADD(a{u}, VLOADM(rp + t + {u} * VL, n)) : a{u}, act); "
        f"{keep.format(u=u)} VSTOREM(y + t + {u} * VL, z, n); }} }}" for u in us)
    return _dw9_body(f"dw9_v{v}", v, full, part)


def _dw9_body(key: str, v: int, full: str, part: str) -> str:
    """``dw9_template``'s kernel around its stores: ``full`` (whole vectors), ``part``."""
    us = range(v)
    first = " ".join(f"vf a{u} = VMUL(w0, VLOAD(x0 + t + {u} * VL));" for u in us)
    tap = " ".join(f"a{u} = VFMA(w##q, VLOAD(x##q + t + {u} * VL), a{u});" for u in us)
    bias = " ".join(f"a{u} = VADD(a{u}, bb);" for u in us)
    return f"""{dw9_head(key)}
  PART(k[7])
  for (int b = lo; b < hi; ++b) {{
    const int r = rows[b]; const int* o = offs + 9 * b; const float* w9 = wt + 9 * b;
    const vf w0 = VSET1(w9[0]), w1 = VSET1(w9[1]), w2 = VSET1(w9[2]), w3 = VSET1(w9[3]),
             w4 = VSET1(w9[4]), w5 = VSET1(w9[5]), w6 = VSET1(w9[6]), w7 = VSET1(w9[7]),
             w8 = VSET1(w9[8]);
    const float* x0 = X + o[0]; const float* x1 = X + o[1]; const float* x2 = X + o[2];
    const float* x3 = X + o[3]; const float* x4 = X + o[4]; const float* x5 = X + o[5];
    const float* x6 = X + o[6]; const float* x7 = X + o[7]; const float* x8 = X + o[8];
    const vf bb = VSET1(bias[r]);
    float* y = Y + (long)r * ys + yo; const float* rp = R + (long)r * ys + yo;
    for (int t = 0; t < T; t += {v} * VL) {{
      {first}
#define NPAS_TAP(q) {tap}
      NPAS_TAP(1) NPAS_TAP(2) NPAS_TAP(3) NPAS_TAP(4) NPAS_TAP(5) NPAS_TAP(6) NPAS_TAP(7) NPAS_TAP(8)
#undef NPAS_TAP
      {bias}
      if (t + {v} * VL <= T) {{ {full} }}
      else {{ {part} }}
    }}
  }}
}}
"""


def dw9_vectors(T: int, lanes: int) -> int:
    """Vectors per ``dw9`` step: the whole plane when it is at most 4 vectors (5 with 16
    lanes), else 2. Each vector is a chain of 9 dependent FMAs, so 2-vector steps wait on FMA
    latency: MobileNetV2's 8x8 maps (5 AVX-512 vectors of wide rows) in one step, AVX-512
    host, 1 thread: 384 channels 15.4 -> 13.1 us, 576 channels 23.3 -> 19.7 us."""
    n = -(-T // lanes)
    return n if n <= (5 if lanes >= 16 else 4) else 2


#: Depthwise 3x3 / stride 2 / pad 1 straight from its input (plain or padded), one channel at
#: a time: its rows are split into even and odd columns in a small on-stack buffer (L1; the odd ones one
#: slot to the right after a zero, which is the left padding), then every output vector is 9
#: plain loads and 9 FMAs (output x reads columns 2x - 1, 2x, 2x + 1) and is written in its
#: destination layout (plain or padded). So the layer needs neither a phase-split copy of its
#: whole input nor a crop of its output. Out-of-range rows are skipped. Parameter array
#: ``k``: rows, channels (I arena), weights (9 per row), bias (W arena), x, y, res (A arena),
#: nrows, h, w, oh, ow, destination channel / row stride / offset, residual channel / row
#: stride / offset, act, has_res.
DWS2_TEMPLATE = f"""static {NOINLINE} void dws2(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* rows = I + k[0]; const int* chans = I + k[1];
  const float* wt = W + k[2]; const float* bias = W + k[3];
  const float* X = A + k[4]; float* Y = A + k[5]; const float* R = A + k[6]; (void)R;
  const int h = k[8], w = k[9], oh = k[10], ow = k[11];
  const int dp = k[12], dr = k[13], dof = k[14], rp = k[15], rr = k[16], rof = k[17];
  const int act = k[18], hr = k[19], xcs = k[20], xrs = k[21], xof = k[22];
  const int top = k[23];  /* 1: the padded input's top border row is read (a band's halo) */
  const int half = w / 2, rs = (ow + 1 + VL - 1) / VL * VL + VL;  /* split row stride */
  float E0[(h + 1) * rs], O0[(h + 1) * rs];
  float* E = E0 + rs; float* O = O0 + rs;  /* split row -1 first */
  /* the vectors read lanes past each split row that no channel writes: zero them once (stack
     garbage there is often a denormal, and every FMA on one took a microcode assist on an
     Intel core: 2 us per channel instead of 0.1) */
  memset(E0, 0, sizeof(float) * (h + 1) * rs); memset(O0, 0, sizeof(float) * (h + 1) * rs);
  PART(k[7])
  for (int b = lo; b < hi; ++b) {{
    const int r = rows[b]; const float* x = X + (long)chans[b] * xcs + xof; const float* w9 = wt + 9 * b;
    for (int i = -top; i < h; ++i) {{
      const float* s = x + (long)i * xrs; float* e = E + i * rs; float* o = O + i * rs + 1;
      o[-1] = 0.f;
      npas_deinterleave(s, e, o, half);
      if (w & 1) {{ e[half] = s[w - 1]; o[half] = 0.f; }}
    }}
    vf wv[9];
    for (int q = 0; q < 9; ++q) wv[q] = VSET1(w9[q]);
    const vf bb = VSET1(bias[r]);
    for (int y = 0; y < oh; ++y) {{
      float* d = Y + (long)r * dp + (long)y * dr + dof;
      const float* rsd = R + (long)r * rp + (long)y * rr + rof;
      const int k0 = y == 0 && !top ? 1 : 0, k1 = 2 * y + 1 < h ? 3 : 2;
      for (int x0 = 0; x0 < ow; x0 += VL) {{
        const int n = ow - x0 < VL ? ow - x0 : VL;
        vf acc = bb;
        for (int ky = k0; ky < k1; ++ky) {{
          const float* e = E + (2 * y - 1 + ky) * rs + x0; const float* o = O + (2 * y - 1 + ky) * rs + x0;
          acc = VFMA(wv[3 * ky], VLOAD(o), acc);
          acc = VFMA(wv[3 * ky + 1], VLOAD(e), acc);
          acc = VFMA(wv[3 * ky + 2], VLOAD(o + 1), acc);
        }}
        if (hr) acc = VADD(acc, VLOADM(rsd + x0, n));
        acc = v_act(acc, act);
        if (n == VL) VSTORE(d + x0, acc); else VSTOREM(d + x0, acc, n);
      }}
    }}
  }}
}}
"""


#: The half-vector channel tile on pixel pairs (``channel_template(pairs=True)``, AVX-512): per
#: entry the 8 weights, each doubled, fill one vector, and each pair of adjacent input pixels
#: is one 64-bit broadcast, so a 2x2 map's 4 pixels take 2 full FMAs and 3 loads where the
#: half-vector tile took 4 half FMAs and 6 loads (load-bound). VGG-16's 512-channel 2x2
#: layers at block 8x, AVX-512 host: 55-59 -> 39-46 us each, step alone; in the model, where
#: their weights come from L3, the whole model 0.928 -> 0.891 ms.
_PAIRS_INNER = """      const int p0 = pp[0], p2 = pp[2];
      const __m512i dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      const float* wp = wt + (long)ea * 8;
      int e = ea;
#define NPAS_PAIR(E, A, B) do { \\
        const __m512 w_ = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(_mm256_loadu_ps(wp + (E) * 8))); \\
        const float* x_ = X + off[e + (E)]; double l_, h_; memcpy(&l_, x_ + p0, 8); memcpy(&h_, x_ + p2, 8); \\
        A = _mm512_fmadd_ps(w_, _mm512_castpd_ps(_mm512_set1_pd(l_)), A); \\
        B = _mm512_fmadd_ps(w_, _mm512_castpd_ps(_mm512_set1_pd(h_)), B); } while (0)
      for (; e + 4 <= eb; e += 4, wp += 32) {
        __builtin_prefetch(wp + 2560);
        NPAS_PAIR(0, a0, b0); NPAS_PAIR(1, a1, b1); NPAS_PAIR(2, a2, b2); NPAS_PAIR(3, a3, b3);
      }
      for (; e < eb; ++e, wp += 8) NPAS_PAIR(0, a0, b0);
#undef NPAS_PAIR
      float acc[2][16] __attribute__((aligned(64)));
      _mm512_store_ps(acc[0], _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
      _mm512_store_ps(acc[1], _mm512_add_ps(_mm512_add_ps(b0, b1), _mm512_add_ps(b2, b3)));
      for (int q = 0; q < 8; ++q) {
        tmp[0][q] = acc[0][2 * q]; tmp[1][q] = acc[0][2 * q + 1];
        tmp[2][q] = acc[1][2 * q]; tmp[3][q] = acc[1][2 * q + 1];
      }"""


def channel_template(key: str, tb: int, cv: int = 1, part: int = 0, pairs: bool = False) -> str:
    """GEMV-style kernel vectorised along output channels (Linear, small maps).

    A tile is ``tb`` output pixels x ``cv`` vectors of output channels (blocks of ``cv * VL``
    rows): per entry ``cv`` weight vector loads and ``tb`` pixel broadcasts feed ``tb * cv``
    FMAs. It walks only the ``npix`` real output pixels: ``pos[u]`` is pixel ``u``'s place in
    the input's wide-row layout, so the junk columns a spatial tile would compute (7x7: 22 %
    of a wide row) cost nothing; a partial last tile repeats its last pixel. With ``part`` > 0
    a block walks its entries ``ech`` at a time (a slice of input channels that stays in L1
    while every tile of the map reads it), keeping the tiles' partial sums in a ``part``-float
    stack buffer. The epilogue writes each result straight into the destination's layout:
    pixel ``u`` of row ``r`` lands at ``r * ys + ypos[u]``, its residual is read at
    ``r * rs + rpos[u]``. Weights are prefetched about 10 KB ahead: on tiny maps each weight
    is used by a few pixels only, so the layer streams its weights (VGG-16's 2x2 layers:
    9.4 MB each) from DRAM. Parameter array ``k``: rows, eptr, offsets, weights, bias, x, y,
    res, nblk, ys, act, has_res, pos, ypos, rpos (I arena), npix, rs, ech.

    ``pairs``: 4-pixel tiles of two adjacent pixel pairs on 8-row blocks, AVX-512 only, to be
    passed through ``half_width`` (``_PAIRS_INNER``).
    """
    rb = f"{cv} * VL"
    if pairs:
        assert tb == 4 and cv == 1 and not part, "pixel pairs: 4-pixel tiles, one half vector"
        inner = _PAIRS_INNER
    elif tb == 1 and cv == 1 and not part:
        inner = """      vf a0 = VZERO(), a1 = VZERO(), a2 = VZERO(), a3 = VZERO();
      const float* xq = X + pp[0];
      int e = ea;
      for (; e + 4 <= eb; e += 4) {
        a0 = VFMA(VLOAD(wt + (long)e * VL), VSET1(xq[off[e]]), a0);
        a1 = VFMA(VLOAD(wt + (long)(e + 1) * VL), VSET1(xq[off[e + 1]]), a1);
        a2 = VFMA(VLOAD(wt + (long)(e + 2) * VL), VSET1(xq[off[e + 2]]), a2);
        a3 = VFMA(VLOAD(wt + (long)(e + 3) * VL), VSET1(xq[off[e + 3]]), a3);
      }
      for (; e < eb; ++e) a0 = VFMA(VLOAD(wt + (long)e * VL), VSET1(xq[off[e]]), a0);
      VSTORE(tmp[0], VADD(VADD(a0, a1), VADD(a2, a3)));"""
    else:
        decl = " ".join(f"const int p{u} = pp[{u} < n ? {u} : n - 1];" for u in range(tb))
        if part:
            acc = (" ".join(f"vf a{c}_{u} = VZERO();" for c in range(cv) for u in range(tb))
                   + " if (!first) { " + " ".join(f"a{c}_{u} = VLOAD(pt + {u} * {rb} + {c} * VL);"
                                                   for c in range(cv) for u in range(tb)) + " }")
            keep = ("if (!last) { " + " ".join(f"VSTORE(pt + {u} * {rb} + {c} * VL, a{c}_{u});"
                                              for c in range(cv) for u in range(tb))
                    + " continue; }")
        else:
            acc = " ".join(f"vf a{c}_{u} = VZERO();" for c in range(cv) for u in range(tb))
            keep = ""
        # VREG: gcc otherwise re-loads the weight vector inside every FMA (tb loads, not 1)
        wl = " ".join(f"vf w{c} = VLOAD(wp + {c} * VL); VREG(w{c});" for c in range(cv))
        fmas = " ".join(f"{{ const vf x = VSET1(xp[p{u}]); "
                        + " ".join(f"a{c}_{u} = VFMA(w{c}, x, a{c}_{u});" for c in range(cv))
                        + " }" for u in range(tb))
        put = " ".join(f"VSTORE(tmp[{u}] + {c} * VL, a{c}_{u});"
                       for c in range(cv) for u in range(tb))
        inner = f"""      {decl}
      {acc}
      const float* wp = wt + (long)ea * {rb};
      for (int e = ea; e < eb; ++e, wp += {rb}) {{
        __builtin_prefetch(wp + {320 // cv} * {rb});
        {wl} const float* xp = X + off[e];
        {fmas}
      }}
      {keep}
      {put}"""
    buf = f"float part[{part}] __attribute__((aligned(64)));" if part else ""
    return f"""static {NOINLINE} void {key}(int tid, int nt, const float* restrict W,
    const int* restrict I, float* restrict A, const int* k) {{
  const int* rows = I + k[0]; const int* ep = I + k[1]; const int* off = I + k[2];
  const float* wt = W + k[3]; const float* bias = W + k[4];
  const float* X = A + k[5]; float* Y = A + k[6]; const float* R = A + k[7]; (void)R;
  const int nblk = k[8], ys = k[9], act = k[10], hr = k[11]; const int* pos = I + k[12];
  const int* ypos = I + k[13]; const int* rpos = I + k[14]; const int npix = k[15], rs = k[16];
  const int ech = k[17]; {buf}
  PART(nblk)
  for (int b = lo; b < hi; ++b) {{
    const int* rw = rows + b * {rb}; const int e0 = ep[b], e1 = ep[b + 1];
    for (int ea = e0, last = 0; !last; ea += ech) {{
      const int eb = e1 - ea > ech ? ea + ech : e1, first = ea == e0; last = eb == e1;
      (void)first;
      for (int t0 = 0; t0 < npix; t0 += {tb}) {{
        const int n = npix - t0 < {tb} ? npix - t0 : {tb}; const int* pp = pos + t0;
        float tmp[{tb}][{rb}] __attribute__((aligned(64))); (void)n;
        {"float* pt = part + t0 * " + rb + ";" if part else ""}
{inner}
        for (int q = 0; q < {rb}; ++q) {{
          const int r = rw[q];
          if (r < 0) continue;
          const float bq = bias[r]; float* yr = Y + (long)r * ys;
          const float* rr = R + (long)r * rs;
          for (int u = 0; u < n; ++u)
            yr[ypos[t0 + u]] = s_act(tmp[u][q] + bq + (hr ? rr[rpos[t0 + u]] : 0.f), act);
        }}
      }}
    }}
  }}
}}
"""


def half_width(text: str) -> str:
    """A kernel's C text on half vectors (``hf``, 8 lanes: the AVX-512 prelude's ``H*``
    macros), for channel tiles of 8-row blocks (``heuristics.half_channel_pays``)."""
    names = {"vf": "hf", "VL": "HL", "VLOAD": "HLOAD", "VSTORE": "HSTORE", "VSET1": "HSET1",
             "VZERO": "HZERO", "VFMA": "HFMA", "VADD": "HADD"}
    return re.sub(r"\b(" + "|".join(names) + r")\b", lambda m: names[m.group(1)], text)


#: Row walk shared by the crop epilogues: rows ``lo .. hi`` of ``cout x oh`` in order, with the
#: scratch row ``s``, the residual row ``r`` and the row index ``y`` of channel ``co`` advanced
#: step by step. A division per row (``q / oh``, ``q % oh``) and recomputed 64-bit offsets made
#: the per-row overhead, not the copy, the cost: rows are 4 to 32 floats wide (MobileNetV2's
#: 144 x 32 x 32 phase split 60 -> 37 us, 192 x 16 x 16 34 -> 17 us; a memcpy of the same bytes
#: takes 16 us).
_ROW_WALK_BEGIN = """  PART(k[3])
  if (lo >= hi) return;
  int co = lo / oh, y = lo % oh;
  const float* s = S + (long)co * T + (long)y * wq;
  const float* r = R + (long)co * rp + (long)y * rr + rof;
  for (int q = lo; q < hi; ++q) {"""
_ROW_WALK_END = """    s += wq; r += rr;
    if (++y == oh) { y = 0; ++co; s = S + (long)co * T; r = R + (long)co * rp + rof; }
  }"""


def crop_template(key: str) -> str:
    """Copy a wide-row scratch output (row stride wq) to its destination layout (plain CHW or
    padded), fusing residual (in its own layout) and activation.

    Parameter array ``k``: scratch, dst, res, rows (cout * oh), oh, ow, T, wq, dst channel
    stride / row stride / offset, res channel stride / row stride / offset, act, has_res.
    Rows go by whole vectors, then one partial vector (a scalar tail through the ``s_act``
    switch: 3.7 against 0.8 us for 160 channels of 4x4).
    """
    return f"""static {NOINLINE} void {key}(int tid, int nt, float* restrict A, const int* k) {{
  const float* S = A + k[0]; float* D = A + k[1]; const float* R = A + k[2];
  const int oh = k[4], ow = k[5], T = k[6], wq = k[7];
  const int dp = k[8], dr = k[9], dof = k[10], rp = k[11], rr = k[12], rof = k[13];
  const int act = k[14], hr = k[15];
{_ROW_WALK_BEGIN}
    float* d = D + (long)co * dp + y * dr + dof;
    int x = 0;
    if (hr) {{
      for (; x + VL <= ow; x += VL) VSTORE(d + x, v_act(VADD(VLOAD(s + x), VLOAD(r + x)), act));
      if (x < ow) VSTOREM(d + x, v_act(VADD(VLOADM(s + x, ow - x), VLOADM(r + x, ow - x)), act), ow - x);
    }} else {{
      for (; x + VL <= ow; x += VL) VSTORE(d + x, v_act(VLOAD(s + x), act));
      if (x < ow) VSTOREM(d + x, v_act(VLOADM(s + x, ow - x), act), ow - x);
    }}
{_ROW_WALK_END}
}}
"""


#: A crop epilogue whose destination is stored phase-split (``layout.plan_split2``): output row
#: ``y`` is padded row ``y + 1`` of phase ``(y + 1) & 1``; its even columns go to phase column
#: 1 (starting at 0), its odd ones to phase column 0 (starting at 1, after the left padding).
#: Parameter array ``k``: scratch, dst, res, rows (cout * oh), oh, ow, T, wq (scratch row
#: stride), phase plane size, phase row width, cout, res channel stride / row stride / offset,
#: act, has_res.
CROP_SPLIT2_TEMPLATE = f"""static {NOINLINE} void crop_split2(int tid, int nt, float* restrict A, const int* k) {{
  const float* S = A + k[0]; float* D = A + k[1]; const float* R = A + k[2];
  const int oh = k[4], ow = k[5], T = k[6], wq = k[7], plane = k[8], dwq = k[9], cout = k[10];
  const int rp = k[11], rr = k[12], rof = k[13], act = k[14], hr = k[15];
  const long phase = (long)cout * plane;
{_ROW_WALK_BEGIN}
    float* row = D + (long)co * plane + ((y + 1) & 1) * 2 * phase + ((y + 1) >> 1) * dwq;
    float* d1 = row + phase;  /* phase b = 1: columns 0, 2, 4, ... at 0, 1, 2, ... */
    float* d0 = row + 1;      /* phase b = 0: columns 1, 3, 5, ... at 1, 2, 3, ... */
    int x = 0;
    for (; x + 2 * VL <= ow; x += 2 * VL) {{
      vf u = VLOAD(s + x), v = VLOAD(s + x + VL);
      if (hr) {{ u = VADD(u, VLOAD(r + x)); v = VADD(v, VLOAD(r + x + VL)); }}
      u = v_act(u, act); v = v_act(v, act);
      VSTORE(d1 + x / 2, VEVEN(u, v)); VSTORE(d0 + x / 2, VODD(u, v));
    }}
    for (; x + VL <= ow; x += VL) {{  /* one vector left (16-wide rows with AVX-512) */
      vf u = VLOAD(s + x);
      if (hr) u = VADD(u, VLOAD(r + x));
      u = v_act(u, act);
      VSTORE_EO(d1 + x / 2, d0 + x / 2, u);
    }}
    for (; x < ow; ++x) {{
      const float val = s_act(s[x] + (hr ? r[x] : 0.f), act);
      if (x & 1) d0[x / 2] = val; else d1[x / 2] = val;
    }}
{_ROW_WALK_END}
}}
"""


def sig(name: str) -> str:
    """C signature of a step function ``name(tid, nt, W, I, A)``."""
    return (f"static {NOINLINE} void {name}(int tid, int nt, const float* restrict W, "
            "const int* restrict I, float* restrict A)")
