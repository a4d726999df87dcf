"""Target ISA selection and the C prelude that hides it behind a few vector macros.

The generator writes every kernel against ``vf`` / ``VLOAD`` / ``VFMA`` ... ; the prelude maps
them to AVX-512 (16 lanes), AVX2+FMA (8 lanes), AArch64 NEON (4 lanes, the papers' mobile
target) or portable C (8 lanes, ``#pragma omp simd`` loops).

- ``VEVEN(a, b)`` / ``VODD(a, b)``: the even / odd lanes of ``a`` then ``b``;
  ``VZIPLO(a, b)`` / ``VZIPHI(a, b)``: the first / second halves of ``a`` and ``b``
  interleaved (``a0 b0 a1 b1 ...``); ``VSTORE_EO(e, o, v)`` stores the even lanes of ``v`` at
  ``e`` and the odd ones at ``o`` (half a vector each).
- ``VGATHER(b, ix)`` loads lane ``i`` from ``b[ix[i]]``, ``VSCATTER(b, ix, v)`` stores it
  there; ``VBCAST4(p)`` repeats the 4 floats at ``p`` in every group of 4 lanes;
  ``VAND(v, m)`` keeps the lanes of ``v`` whose mask ``m`` is all ones (bitwise and).
- ``VSTOREM_AT(p, v, lo, n)`` stores lanes ``lo .. lo + n`` of ``v`` at ``p + lo``, and
  ``VSTORE_PART(p, v, lo, n)`` the same for literal ``n`` of 4 or 8 and ``lo`` a multiple of
  it (on AVX-512 an extract and a plain 128 / 256-bit store, not a masked store:
  MobileNetV2's 4x4 expand convs 11.3 -> 8.5 us each; elsewhere ``VSTOREM_AT``).
- ``SMAX(a, b)`` / ``SMIN(a, b)`` are scalar max / min without a branch (the scalar
  epilogues' activations: a data-dependent branch per output cost MobileNetV2's 4x4 1x1
  layers half their time).
- The AVX-512 prelude also has half-width (8-lane) ``hf`` / ``HL`` / ``HLOAD`` / ... for
  ``kernels.half_width``, and lane masks ``vm``: ``VKEEP(p)`` (the lanes whose int at ``p``
  is non-zero), ``VSTOREC(p, v, m)`` (lanes ``m`` of ``v`` stored packed from ``p`` on),
  ``VLOADX(p, m)`` (consecutive floats from ``p`` into lanes ``m``).
- ``VLOADZ(p, m)``: lanes ``m`` (an integer bit mask) of the vector at ``p``, the others zero
  and unread (every ISA; AVX2 by ``VMASKMOVPS``, which does not fault on masked-off lanes).
- ``VREG(x)`` keeps a loaded vector in a register (gcc otherwise folds the load into every
  FMA that reads it: the tap-column kernel's row reuse then vanished, 570 us became 700).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass(frozen=True)
class Isa:
    """A code-generation target.

    Attributes:
        name: ``avx512`` / ``avx2`` / ``neon`` / ``generic``.
        lanes: floats per vector register.
        max_acc: accumulator registers the micro-kernel may use (P * V <= max_acc).
        registers: vector registers the ISA has.
    """

    name: str
    lanes: int
    max_acc: int
    registers: int


ISAS = {"avx512": Isa("avx512", 16, 24, 32), "avx2": Isa("avx2", 8, 12, 16),
        "neon": Isa("neon", 4, 24, 32), "generic": Isa("generic", 8, 12, 16)}

#: C compiler flags selecting each ISA when compiling for another machine (``export``);
#: on this machine ``-march=native`` does it.
CROSS_FLAGS = {"avx512": ("-march=skylake-avx512",), "avx2": ("-march=haswell",),
               "neon": ("-march=armv8-a",), "generic": ()}


@lru_cache(maxsize=1)
def detect_isa() -> Isa:
    """The best ISA the CPU supports, from /proc/cpuinfo flags (generic if unknown)."""
    if platform.machine().lower() in ("aarch64", "arm64"):
        return ISAS["neon"]  # Advanced SIMD is part of every AArch64 core
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ISAS["generic"]
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if {"avx512f", "avx512vl"} <= flags:
        return ISAS["avx512"]
    if {"avx2", "fma"} <= flags:
        return ISAS["avx2"]
    return ISAS["generic"]


_COMMON = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <omp.h>
/* PART: slice tid of nt. Its empty volatile asm marks every step as having side effects: GCC
   12.2 once judged a pooling step pure (a rewritten address read as a null dereference) and
   deleted its call (see toolchain.SAFETY_FLAGS). */
#define PART(N) __asm__ volatile(""); \
                const int lo = tid < nt ? (int)((long)(N) * tid / nt) : 0; \
                const int hi = tid < nt ? (int)((long)(N) * (tid + 1) / nt) : 0;
/* NPAS_PLAIN: the plain index of wide-row pixel P (rows of wq, the first ow real) or, on a
   junk column, of the next row's first pixel */
#define NPAS_PLAIN(P, wq, ow) ((P) / (wq) * (ow) + ((P) % (wq) < (ow) ? (P) % (wq) : (ow)))
"""

_AVX512 = r"""
#include <immintrin.h>
#define VL 16
typedef __m512 vf;
#define VMASK(n) ((__mmask16)((1u << (n)) - 1u))
#define VLOAD(p) _mm512_loadu_ps(p)
#define VLOADM(p, n) _mm512_maskz_loadu_ps(VMASK(n), (p))
#define VSTORE(p, v) _mm512_storeu_ps((p), (v))
#define VSTOREM(p, v, n) _mm512_mask_storeu_ps((p), VMASK(n), (v))
#define VSTOREM_AT(p, v, lo, n) _mm512_mask_storeu_ps((p), (__mmask16)(VMASK(n) << (lo)), (v))
#define VSTORE_PART(p, v, lo, n) VSTORE_PART_##n((p), (v), (lo))
#define VSTORE_PART_4(p, v, lo) _mm_storeu_ps((p) + (lo), _mm512_extractf32x4_ps((v), (lo) / 4))
#define VSTORE_PART_8(p, v, lo) _mm256_storeu_ps((p) + (lo), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), (lo) / 8)))
typedef __mmask16 vm;
#define VKEEP(p) _mm512_test_epi32_mask(_mm512_loadu_si512((const void*)(p)), _mm512_set1_epi32(-1))
#define VSTOREC(p, v, m) _mm512_mask_storeu_ps((p), VMASK(__builtin_popcount(m)), _mm512_maskz_compress_ps((m), (v)))
#define VLOADX(p, m) _mm512_maskz_expandloadu_ps((m), (p))
#define VLOADZ(p, m) _mm512_maskz_loadu_ps((__mmask16)(m), (p))
#define VSET1(x) _mm512_set1_ps(x)
#define VZERO() _mm512_setzero_ps()
#define VREG(x) __asm__("" : "+v"(x))
#define VFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define VADD(a, b) _mm512_add_ps((a), (b))
#define VSUB(a, b) _mm512_sub_ps((a), (b))
#define VMUL(a, b) _mm512_mul_ps((a), (b))
#define VMAX(a, b) _mm512_max_ps((a), (b))
#define VMIN(a, b) _mm512_min_ps((a), (b))
#define VAND(a, m) _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(a), _mm512_castps_si512(m)))
#define SMAX(a, b) _mm_cvtss_f32(_mm_max_ss(_mm_set_ss(a), _mm_set_ss(b)))
#define SMIN(a, b) _mm_cvtss_f32(_mm_min_ss(_mm_set_ss(a), _mm_set_ss(b)))
#define HL 8
typedef __m256 hf;
#define HLOAD(p) _mm256_loadu_ps(p)
#define HSTORE(p, v) _mm256_storeu_ps((p), (v))
#define HSET1(x) _mm256_set1_ps(x)
#define HZERO() _mm256_setzero_ps()
#define HFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define HADD(a, b) _mm256_add_ps((a), (b))
#define VGATHER(b, ix) _mm512_i32gather_ps(_mm512_loadu_si512((const void*)(ix)), (b), 4)
#define VSCATTER(b, ix, v) _mm512_i32scatter_ps((b), _mm512_loadu_si512((const void*)(ix)), (v), 4)
#define VBCAST4(p) _mm512_broadcast_f32x4(_mm_loadu_ps(p))
#define VEVEN(a, b) __builtin_shufflevector((a), (b), 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
#define VODD(a, b) __builtin_shufflevector((a), (b), 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)
#define VZIPLO(a, b) __builtin_shufflevector((a), (b), 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23)
#define VZIPHI(a, b) __builtin_shufflevector((a), (b), 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31)
#define VSTORE_EO(e, o, v) do { const __m512 p_ = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15), (v)); \
    _mm256_storeu_ps((e), _mm512_castps512_ps256(p_)); \
    _mm256_storeu_ps((o), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(p_), 1))); } while (0)
"""

# AVX2 through GCC vector extensions and builtins: the same instructions as <immintrin.h>
# without parsing it (that header alone costs ~0.5 s of every model compile).
_AVX2 = r"""
#define VL 8
typedef float vf __attribute__((vector_size(32)));
typedef float vfu __attribute__((vector_size(32), aligned(4), may_alias));
typedef int vi __attribute__((vector_size(32)));
typedef int viu __attribute__((vector_size(32), aligned(4), may_alias));
static const int32_t npas_mask_tab[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
#define VMASK(n) (*(const viu*)(npas_mask_tab + 8 - (n)))
#define VLOAD(p) (*(const vfu*)(p))
#define VLOADM(p, n) __builtin_ia32_maskloadps256((const vf*)(p), VMASK(n))
#define VSTORE(p, v) (*(vfu*)(p) = (v))
/* Partial store of lanes [0, n) by 16 / 8 / 4-byte pieces: VMASKMOVPS to memory is
   microcoded on AMD Zen (a dozen cycles or more per store, against one per piece here). */
typedef float vf4 __attribute__((vector_size(16)));
typedef float vf4u __attribute__((vector_size(16), aligned(4), may_alias));
typedef float vf2u __attribute__((vector_size(8), aligned(4), may_alias));
static inline void npas_storem(float* p, vf v, int n) {
  if (n >= 8) { *(vfu*)p = v; return; }
  vf4 h = __builtin_shufflevector(v, v, 0, 1, 2, 3);
  if (n & 4) { *(vf4u*)p = h; h = __builtin_shufflevector(v, v, 4, 5, 6, 7); p += 4; }
  if (n & 2) { *(vf2u*)p = __builtin_shufflevector(h, h, 0, 1); h = __builtin_shufflevector(h, h, 2, 3, 2, 3); p += 2; }
  if (n & 1) *p = h[0];
}
#define VSTOREM(p, v, n) npas_storem((p), (v), (n))
/* VLOADZ(p, m): lanes of the bit mask m (a literal: the lane vector folds to a constant) */
static inline vi npas_lanes(unsigned m) { return (vi){-(int)(m & 1), -(int)(m >> 1 & 1), -(int)(m >> 2 & 1), -(int)(m >> 3 & 1), -(int)(m >> 4 & 1), -(int)(m >> 5 & 1), -(int)(m >> 6 & 1), -(int)(m >> 7 & 1)}; }
#define VLOADZ(p, m) __builtin_ia32_maskloadps256((const vf*)(p), npas_lanes(m))
/* Lanes [lo, lo + n) at p + lo: rotated down by a permute, then stored in pieces. Through a
   stack copy and memcpy instead, gcc kept every accumulator of the kernel calling it in memory
   (MobileNetV2's 8x8 expand convs: 25 GFLOP/s). */
static const int32_t npas_rot_tab[16] = {0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7};
static inline void VSTOREM_AT(float* p, vf v, int lo, int n) {
  if (lo) v = __builtin_ia32_permvarsf256(v, *(const viu*)(npas_rot_tab + lo));
  npas_storem(p + lo, v, n);
}
#define VSTORE_PART(p, v, lo, n) VSTORE_PART_##n((p), (v), (lo))
#define VSTORE_PART_8(p, v, lo) VSTORE((p) + (lo), (v))
#define VSTORE_PART_4(p, v, lo) (*(vf4u*)((p) + (lo)) = (lo) ? __builtin_shufflevector((v), (v), 4, 5, 6, 7) : __builtin_shufflevector((v), (v), 0, 1, 2, 3))
static inline vf VGATHER(const float* b, const int* ix) { vf r; for (int i = 0; i < VL; ++i) r[i] = b[ix[i]]; return r; }
static inline void VSCATTER(float* b, const int* ix, vf v) { for (int i = 0; i < VL; ++i) b[ix[i]] = v[i]; }
#define VBCAST4(p) __builtin_ia32_vbroadcastf128_ps256((const vf4*)(p))
#define VSET1(x) npas_set1((float)(x))
static inline vf npas_set1(float x) { return (vf){x, x, x, x, x, x, x, x}; }
#define VZERO() ((vf){0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f})
#define VREG(x) __asm__("" : "+x"(x))
#define VFMA(a, b, c) __builtin_ia32_vfmaddps256((a), (b), (c))
#define VADD(a, b) ((a) + (b))
#define VSUB(a, b) ((a) - (b))
#define VMUL(a, b) ((a) * (b))
#define VMAX(a, b) __builtin_ia32_maxps256((a), (b))
#define VMIN(a, b) __builtin_ia32_minps256((a), (b))
#define VAND(a, m) ((vf)((vi)(a) & (vi)(m)))
#define SMAX(a, b) __builtin_ia32_maxss((vf4){(a)}, (vf4){(b)})[0]
#define SMIN(a, b) __builtin_ia32_minss((vf4){(a)}, (vf4){(b)})[0]
#define VEVEN(a, b) __builtin_shufflevector((a), (b), 0, 2, 4, 6, 8, 10, 12, 14)
#define VODD(a, b) __builtin_shufflevector((a), (b), 1, 3, 5, 7, 9, 11, 13, 15)
#define VZIPLO(a, b) __builtin_shufflevector((a), (b), 0, 8, 1, 9, 2, 10, 3, 11)
#define VZIPHI(a, b) __builtin_shufflevector((a), (b), 4, 12, 5, 13, 6, 14, 7, 15)
#define VSTORE_EO(e, o, v) do { const vf p_ = __builtin_shufflevector((v), (v), 0, 2, 4, 6, 1, 3, 5, 7); \
    *(vf4u*)(e) = __builtin_shufflevector(p_, p_, 0, 1, 2, 3); \
    *(vf4u*)(o) = __builtin_shufflevector(p_, p_, 4, 5, 6, 7); } while (0)
"""

# AArch64 Advanced SIMD. Partial loads / stores go through a 4-float stack copy.
_NEON = r"""
#include <arm_neon.h>
#define VL 4
typedef float32x4_t vf;
static inline vf VLOADM(const float* p, int n) { float t[4] = {0.f, 0.f, 0.f, 0.f}; memcpy(t, p, (size_t)n * sizeof(float)); return vld1q_f32(t); }
#define VLOAD(p) vld1q_f32(p)
#define VSTORE(p, v) vst1q_f32((p), (v))
static inline void VSTOREM(float* p, vf v, int n) { float t[4]; vst1q_f32(t, v); memcpy(p, t, (size_t)n * sizeof(float)); }
static inline void VSTOREM_AT(float* p, vf v, int lo, int n) { float t[4]; vst1q_f32(t, v); memcpy(p + lo, t + lo, (size_t)n * sizeof(float)); }
static inline vf VLOADZ(const float* p, unsigned m) { float t[4]; for (int i = 0; i < 4; ++i) t[i] = m >> i & 1 ? p[i] : 0.f; return vld1q_f32(t); }
#define VSET1(x) vdupq_n_f32((float)(x))
#define VZERO() vdupq_n_f32(0.f)
#define VREG(x) __asm__("" : "+w"(x))
#define VFMA(a, b, c) vfmaq_f32((c), (a), (b))
#define VADD(a, b) vaddq_f32((a), (b))
#define VSUB(a, b) vsubq_f32((a), (b))
#define VMUL(a, b) vmulq_f32((a), (b))
#define VMAX(a, b) vmaxq_f32((a), (b))
#define VMIN(a, b) vminq_f32((a), (b))
#define VAND(a, m) vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(a), vreinterpretq_u32_f32(m)))
#define SMAX(a, b) fmaxf((a), (b))
#define SMIN(a, b) fminf((a), (b))
static inline vf VGATHER(const float* b, const int* ix) { const float t[4] = {b[ix[0]], b[ix[1]], b[ix[2]], b[ix[3]]}; return vld1q_f32(t); }
static inline void VSCATTER(float* b, const int* ix, vf v) { float t[4]; vst1q_f32(t, v); for (int i = 0; i < 4; ++i) b[ix[i]] = t[i]; }
#define VBCAST4(p) vld1q_f32(p)
#define VEVEN(a, b) vuzp1q_f32((a), (b))
#define VODD(a, b) vuzp2q_f32((a), (b))
#define VZIPLO(a, b) vzip1q_f32((a), (b))
#define VZIPHI(a, b) vzip2q_f32((a), (b))
#define VSTORE_EO(e, o, v) do { vst1_f32((e), vget_low_f32(vuzp1q_f32((v), (v)))); \
    vst1_f32((o), vget_low_f32(vuzp2q_f32((v), (v)))); } while (0)
"""

_GENERIC = r"""
#define VL 8
typedef struct { float v[VL]; } vf;
static inline vf VLOADM(const float* p, int n) { vf r; for (int i = 0; i < VL; ++i) r.v[i] = i < n ? p[i] : 0.f; return r; }
static inline vf VLOAD(const float* p) { vf r; _Pragma("omp simd") for (int i = 0; i < VL; ++i) r.v[i] = p[i]; return r; }
static inline void VSTORE(float* p, vf a) { _Pragma("omp simd") for (int i = 0; i < VL; ++i) p[i] = a.v[i]; }
static inline void VSTOREM(float* p, vf a, int n) { for (int i = 0; i < n; ++i) p[i] = a.v[i]; }
static inline void VSTOREM_AT(float* p, vf a, int lo, int n) { for (int i = lo; i < lo + n; ++i) p[i] = a.v[i]; }
static inline vf VLOADZ(const float* p, unsigned m) { vf r; for (int i = 0; i < VL; ++i) r.v[i] = m >> i & 1 ? p[i] : 0.f; return r; }
static inline vf VSET1(float x) { vf r; for (int i = 0; i < VL; ++i) r.v[i] = x; return r; }
static inline vf VZERO(void) { return VSET1(0.f); }
#define VREG(x) ((void)0)
static inline vf VFMA(vf a, vf b, vf c) { _Pragma("omp simd") for (int i = 0; i < VL; ++i) c.v[i] += a.v[i] * b.v[i]; return c; }
static inline vf VADD(vf a, vf b) { for (int i = 0; i < VL; ++i) a.v[i] += b.v[i]; return a; }
static inline vf VSUB(vf a, vf b) { for (int i = 0; i < VL; ++i) a.v[i] -= b.v[i]; return a; }
static inline vf VMUL(vf a, vf b) { for (int i = 0; i < VL; ++i) a.v[i] *= b.v[i]; return a; }
static inline vf VMAX(vf a, vf b) { for (int i = 0; i < VL; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i]; return a; }
static inline vf VMIN(vf a, vf b) { for (int i = 0; i < VL; ++i) a.v[i] = a.v[i] < b.v[i] ? a.v[i] : b.v[i]; return a; }
#define SMAX(a, b) ((a) > (b) ? (a) : (b))
#define SMIN(a, b) ((a) < (b) ? (a) : (b))
static inline vf VAND(vf a, vf m) { uint32_t x[VL], y[VL]; memcpy(x, a.v, sizeof x); memcpy(y, m.v, sizeof y); for (int i = 0; i < VL; ++i) x[i] &= y[i]; memcpy(a.v, x, sizeof x); return a; }
static inline vf VGATHER(const float* b, const int* ix) { vf r; for (int i = 0; i < VL; ++i) r.v[i] = b[ix[i]]; return r; }
static inline void VSCATTER(float* b, const int* ix, vf v) { for (int i = 0; i < VL; ++i) b[ix[i]] = v.v[i]; }
static inline vf VBCAST4(const float* p) { vf r; for (int i = 0; i < VL; ++i) r.v[i] = p[i & 3]; return r; }
static inline vf VEVEN(vf a, vf b) { vf r; for (int i = 0; i < VL; ++i) r.v[i] = 2 * i < VL ? a.v[2 * i] : b.v[2 * i - VL]; return r; }
static inline vf VODD(vf a, vf b) { vf r; for (int i = 0; i < VL; ++i) r.v[i] = 2 * i + 1 < VL ? a.v[2 * i + 1] : b.v[2 * i + 1 - VL]; return r; }
static inline vf VZIPLO(vf a, vf b) { vf r; for (int i = 0; i < VL; ++i) r.v[i] = i % 2 ? b.v[i / 2] : a.v[i / 2]; return r; }
static inline vf VZIPHI(vf a, vf b) { vf r; for (int i = 0; i < VL; ++i) r.v[i] = i % 2 ? b.v[(VL + i) / 2] : a.v[(VL + i) / 2]; return r; }
static inline void VSTORE_EO(float* e, float* o, vf a) { for (int i = 0; i < VL / 2; ++i) { e[i] = a.v[2 * i]; o[i] = a.v[2 * i + 1]; } }
"""

_VACT = r"""
#ifndef VSTORE_PART  /* AVX-512 and AVX2 define their own */
#define VSTORE_PART(p, v, lo, n) VSTOREM_AT((p), (v), (lo), (n))
#endif
static inline float s_none(float x) { return x; }
static inline float s_relu(float x) { return SMAX(x, 0.f); }
static inline float s_relu6(float x) { return SMIN(SMAX(x, 0.f), 6.f); }
static inline float s_hardswish(float x) { return x * s_relu6(x + 3.f) * (1.f / 6.f); }
/* e_*: the same activations for ``#pragma omp simd`` loops, as comparisons gcc vectorizes
   (SMAX's maxss intrinsic kept those loops scalar: 5.4 us against 1.2 for a 16 x 32 x 32
   BatchNorm + ReLU); NaN gives 0, as with SMAX */
static inline float e_none(float x) { return x; }
static inline float e_relu(float x) { return x > 0.f ? x : 0.f; }
static inline float e_relu6(float x) { const float r = e_relu(x); return r < 6.f ? r : 6.f; }
static inline float e_hardswish(float x) { return x * e_relu6(x + 3.f) * (1.f / 6.f); }
static inline vf v_none(vf x) { return x; }
static inline vf v_relu(vf x) { return VMAX(x, VZERO()); }
static inline vf v_relu6(vf x) { return VMIN(VMAX(x, VZERO()), VSET1(6.f)); }
static inline vf v_hardswish(vf x) { return VMUL(VMUL(x, v_relu6(VADD(x, VSET1(3.f)))), VSET1(1.f / 6.f)); }
"""


def prelude(isa: Isa) -> str:
    """C text defining the vector macros for ``isa`` plus scalar / vector activations."""
    body = {"avx512": _AVX512, "avx2": _AVX2, "neon": _NEON, "generic": _GENERIC}[isa.name]
    return _COMMON + body + _VACT
