"""Thread count per call: fixed, or whichever of 1 and N threads ran faster recently.

On a cloud VM the host moves the vCPUs (``compiler_backend.peak.core_pair``): for a second or
two at a time the two vCPUs of this machine sit on one physical core or far apart, and a
2-thread run of a sparse model then costs more than a 1-thread one (ResNet-20 block 4x: 0.53
ms against 0.40 at 1 thread, and 0.30 at 2 threads when placed well). A library compiled for N
threads runs on any count up to N, so the runtime can follow the host.
"""

from __future__ import annotations

from collections import deque

from npas_env.errors import InvalidConfig


class FixedThreads:
    """Always the same thread count."""

    def __init__(self, threads: int) -> None:
        self.threads = int(threads)
        self._calls = 0

    @property
    def counts(self) -> dict[int, int]:
        """Calls run so far per thread count."""
        return {self.threads: self._calls}

    def choose(self) -> int:
        """Thread count of the next call."""
        return self.threads

    def record(self, threads: int, start: float, end: float, samples: int = 1) -> None:
        """Counts the call; nothing to learn."""
        self._calls += 1


class AdaptiveThreads:
    """Per call, 1 thread or ``max_threads``: the one whose last ``window`` timed calls had the
    lower median.

    The other count is tried again once the calls since the last try have run long enough
    that trying it costs about ``overhead`` of their time (three calls, each about the gap
    between the medians slower), at most ``max_interval_s`` of run time; and tries are at
    least ``min_interval_s`` of wall time apart. A try is three calls: the first moves the
    data between the cores' caches and wakes the worker and is not kept; the other two
    replace that count's older times (the host may have moved the vCPUs since), and only then
    is the choice made again. A new policy starts with a try of each count.
    """

    def __init__(self, max_threads: int, window: int = 5, overhead: float = 0.01,
                 min_interval_s: float = 0.02, max_interval_s: float = 1.0) -> None:
        if max_threads < 2:
            raise InvalidConfig(f"adaptive threads need max_threads >= 2, got {max_threads}")
        if window < 2 or not 0 < overhead < 1 or not 0 <= min_interval_s <= max_interval_s:
            raise InvalidConfig(f"need window >= 2, 0 < overhead < 1 and 0 <= min_interval_s "
                                f"<= max_interval_s, got {window}, {overhead}, {min_interval_s} "
                                f"and {max_interval_s}")
        self.threads = int(max_threads)
        self.overhead = overhead
        self.min_interval_s, self.max_interval_s = min_interval_s, max_interval_s
        self._times = (deque[float](maxlen=window), deque[float](maxlen=window))  # 1, max
        self._median = [0.0, 0.0]
        self._calls = [0, 0]
        self._last_try = 0.0
        self._busy_s = 0.0
        self._try_left = 3  # calls left in a try: 3 (the warm-up), 2, 1 (kept)
        self._next = self.threads  # the first try: it also starts the worker threads

    @property
    def counts(self) -> dict[int, int]:
        """Calls run so far per thread count."""
        return {1: self._calls[0], self.threads: self._calls[1]}

    def best(self) -> int:
        """The count with the lower recent median (the larger one until both have data)."""
        if self._times[0] and self._times[1] and self._median[0] < self._median[1]:
            return 1
        return self.threads

    def choose(self) -> int:
        """Thread count of the next call (decided when the last one was recorded)."""
        return self._next

    def record(self, threads: int, start: float, end: float, samples: int = 1) -> None:
        """One call of ``samples`` samples with ``threads`` threads from ``start`` to ``end``
        (``time.perf_counter`` seconds); decides the next call's count."""
        arm = 0 if threads == 1 else 1 if threads == self.threads else -1
        if arm < 0:
            return
        self._calls[arm] += 1
        if self._try_left == 3:  # a try's warm-up call: run the same count again
            self._try_left = 2
            return
        times = self._times[arm]
        if self._try_left == 2:
            times.clear()
        times.append((end - start) / max(samples, 1))
        self._median[arm] = sorted(times)[len(times) // 2]
        self._busy_s += end - start
        if self._try_left:
            self._try_left -= 1
            if self._try_left:
                return
        self._next = self._decide(end)

    def _decide(self, now: float) -> int:
        if not self._times[0]:  # the first try of 1 thread
            self._try_left = 3
            return 1
        b = 0 if self._median[0] < self._median[1] else 1
        gap = self._median[1 - b] - self._median[b]
        busy = min(self.max_interval_s, 3 * gap / self.overhead)
        if self._busy_s >= busy and now - self._last_try >= self.min_interval_s:
            self._last_try, self._busy_s, self._try_left = now, 0.0, 3
            b = 1 - b
        return 1 if b == 0 else self.threads


ThreadPolicy = FixedThreads | AdaptiveThreads
