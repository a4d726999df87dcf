"""C text of the exported entry points: one ``seg_<k>`` per segment and ``run_batch``.

A segment runs its ops' steps in order: inline when it is single-threaded, else through the
worker pool (``kernels.POOL_TEMPLATE``) with per-step generation-tagged counters. Each segment
also exports its parallel steps one slice at a time (``seg_<k>_nsteps``, ``seg_<k>_slices``,
``seg_<k>_slice``, and the op of each step, ``seg_<k>_step_op``) for drivers that split the
work their own way.
"""

from __future__ import annotations


def work_items(lt: int, uneven: bool = False) -> int:
    """Slices of a step: one per thread (1 for single-threaded ops), or four per thread when
    its items carry unequal work (``uneven``; ``codegen._uneven``).

    With one slice each, a thread owns one contiguous share of every layer. On the 2-vCPU
    AVX-512 host a line written by one core and read by the other costs far more than a local
    one, and every boundary between the threads' shares leaks lines across (the hardware
    prefetchers run past it; ``benchmarks/bench_cross_core.py``). Against 2 slices per thread
    for passes and 4 for kernels, 2 threads, interleaved: ResNet-20 dense 433 -> 401 us, 4x 203
    -> 184, 8x 163 -> 147; MobileNetV2 dense 1402 -> 1342, 4x 769 -> 739, 8x 637 -> 604; VGG-16
    4x 1008 -> 976, 8x 651 -> 631. But where an even split of the items is an uneven split of
    the work, one thread waits: VGG-16 pattern 8x 1.73 -> 1.88 ms, unstructured 10x 1.64 ->
    1.79; the 3x3 128@28 layer at block 4x 290 -> 396 us (a short last pixel chunk); hence
    ``uneven``. A descheduled worker still loses a slice it has not started to the caller
    (two-ended grab).
    """
    return 1 if lt <= 1 else lt * (4 if uneven else 1)


def segment_source(si: int, ops: list[int], steps: dict[int, list[tuple[str, int]]]) -> str:
    """C text of ``seg_<si>`` running ``ops`` (each a list of (step function, items G)).

    Args:
        si: segment index (fallback ops separate segments).
        ops: op indices of the segment, in execution order.
        steps: per op its steps; steps of one op and of consecutive ops run strictly in order.
    """
    prof = ("if (npas_prof_on && tid == 0) {{ const double t1 = omp_get_wtime(); "
            "npas_prof[{k}] += t1 - npas_prof_t; npas_prof_t = t1; }}")
    serial, par = [], []
    n = 0
    for k in ops:
        for f, _ in steps[k]:
            serial.append(f"    {f}(0, 1, W, I, A);")
        serial.append("    " + prof.format(k=k))
        for f, g in steps[k]:
            par.append(f"    NPAS_STEP({n}, {f}, {g});")
            n += 1
        par.append("    " + prof.format(k=k))
    body_s, body_p = "\n".join(serial), "\n".join(par)
    any_par = any(g > 1 for k in ops for _, g in steps[k])
    table = [(f, g) for k in ops for f, g in steps[k]] or [("npas_no_step", 1)]
    owners = [k for k in ops for _ in steps[k]] or [-1]
    return f"""static void seg_{si}_job(long gen, int tid, const float* restrict W, const int* restrict I,
                      float* restrict A) {{
  if (npas_prof_on && tid == 0) npas_prof_t = omp_get_wtime();
{body_p}
}}

void seg_{si}(const float* restrict W, const int* restrict I, float* restrict A, int nt) {{
  if (nt <= 1 || {int(not any_par)}) {{  /* no multi-threaded step: run inline */
    const int tid = 0; if (npas_prof_on) npas_prof_t = omp_get_wtime();
{body_s}
  }} else {{
    npas_run(nt, seg_{si}_job, {max(n, 1)}, W, I, A);
  }}
}}

/* The parallel steps one slice at a time, for benchmarks that split the work their own way
   (``benchmarks/bench_thread_sharing.py``): step s has seg_{si}_slices(s) slices. */
static void (*const seg_{si}_fns[])(int, int, const float*, const int*, float*) = {{
    {", ".join(f for f, _ in table)}}};
static const int seg_{si}_groups[] = {{{", ".join(str(g) for _, g in table)}}};
static const int seg_{si}_owners[] = {{{", ".join(map(str, owners))}}};
int seg_{si}_nsteps(void) {{ return {n}; }}
int seg_{si}_slices(int s) {{ return s >= 0 && s < {n} ? seg_{si}_groups[s] : 0; }}
int seg_{si}_step_op(int s) {{ return s >= 0 && s < {n} ? seg_{si}_owners[s] : -1; }}
void seg_{si}_slice(int s, int g, const float* W, const int* I, float* A) {{
  if (s >= 0 && s < {n} && g >= 0 && g < seg_{si}_groups[s]) seg_{si}_fns[s](g, seg_{si}_groups[s], W, I, A);
}}
"""


BATCH_TEMPLATE = """void run_batch(const float* restrict W, const int* restrict I, float* restrict A, int nt,
               int n, const float* restrict x, float* restrict y) {{
  for (int i = 0; i < n; ++i) {{
    memcpy(A + {i_off}, x + (long)i * {n_in}, {n_in} * sizeof(float));
    seg_0(W, I, A, nt);
    memcpy(y + (long)i * {n_out}, A + {o_off}, {n_out} * sizeof(float));
  }}
}}
"""
