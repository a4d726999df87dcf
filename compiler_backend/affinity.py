"""Hold a timing thread on one CPU, so a measurement is not spoiled by migrations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def hold_cpu() -> Iterator[None]:
    """Pin the calling thread to the first CPU it may use for the ``with`` block, then restore.

    On the 2-vCPU guest of the benchmarks, idle threads of other runtimes (ONNX Runtime's
    spinning pool, torch's OpenMP threads) made the scheduler move the timing thread between
    cores, each move costing it its L1 / L2. ResNet-20 at 4x, 2 threads, held / free: ours
    0.30 / 0.44 ms, ONNX Runtime dense 0.70 / 0.85 ms. Our pool's workers reset their mask
    to the one the process had when the library was loaded (``kernels.POOL_TEMPLATE``), so a
    pool started inside the block does not inherit the one-CPU mask; other libraries' threads
    would: warm them up before entering. A held thread cannot escape a CPU that another busy
    thread occupies, so use it where every runtime is timed under the same hold (the
    benchmarks), not inside a search process. Does nothing where thread affinity is
    unsupported, when the thread is already on one CPU, or with ``NPAS_PIN_THREADS=0``.
    """
    get = getattr(os, "sched_getaffinity", None)
    put = getattr(os, "sched_setaffinity", None)
    if get is None or put is None or os.environ.get("NPAS_PIN_THREADS") == "0":
        yield
        return
    saved = get(0)
    if len(saved) < 2:
        yield
        return
    put(0, {min(saved)})
    try:
        yield
    finally:
        put(0, saved)
