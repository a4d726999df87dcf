"""The per-call thread-count policies, on a simulated clock and host."""

from __future__ import annotations

import pytest

from compiler_backend.threads import AdaptiveThreads, FixedThreads


def _drive(policy: AdaptiveThreads, ms: dict[int, float], calls: int,
           now: float = 0.0) -> tuple[list[int], float]:
    """Run ``calls`` back-to-back calls whose length depends only on the thread count."""
    seq = []
    for _ in range(calls):
        t = policy.choose()
        end = now + ms[t] * 1e-3
        policy.record(t, now, end)
        seq.append(t)
        now = end + 1e-6
    return seq, now


def test_fixed_threads_counts_calls() -> None:
    policy = FixedThreads(2)
    for _ in range(3):
        policy.record(policy.choose(), 0.0, 1.0)
    assert policy.choose() == 2 and policy.counts == {2: 3}


def test_adaptive_threads_settle_on_the_faster_count_and_follow_the_host() -> None:
    policy = AdaptiveThreads(2)
    near, far = {1: 0.43, 2: 0.30}, {1: 0.42, 2: 0.52}
    seq, now = _drive(policy, near, 400)
    assert policy.best() == 2 and seq[-300:].count(1) <= 0.05 * 300
    seq, now = _drive(policy, far, 400, now)  # the host moves the vCPUs apart
    assert policy.best() == 1 and seq[-300:].count(2) <= 0.1 * 300
    seq, _ = _drive(policy, near, 400, now)  # ... and back: only tries can see it
    assert policy.best() == 2 and seq[-300:].count(1) <= 0.1 * 300


def test_adaptive_threads_try_rarely_when_the_other_count_is_much_slower() -> None:
    policy = AdaptiveThreads(2, overhead=0.01)
    seq, _ = _drive(policy, {1: 11.0, 2: 6.5}, 2000)
    # a try costs 3 calls of ~4.5 ms extra: at 1 % of the run time, about every 1.35 s
    extra = seq[10:].count(1) * 4.5e-3
    assert extra <= 0.02 * sum(6.5e-3 if t == 2 else 11e-3 for t in seq[10:])


def test_adaptive_threads_try_keeps_two_calls_after_a_warm_up() -> None:
    policy = AdaptiveThreads(2, overhead=0.01, min_interval_s=0.0)
    _, now = _drive(policy, {1: 1.0, 2: 0.5}, 6)
    assert policy.best() == 2
    seq, _ = _drive(policy, {1: 0.4, 2: 0.5}, 600, now)  # 1 thread got faster: a try sees it
    first_try = seq.index(1)
    assert seq[first_try:first_try + 3] == [1, 1, 1] and policy.best() == 1
    assert seq[first_try + 3:].count(2) <= 0.1 * len(seq[first_try + 3:])


@pytest.mark.parametrize("kwargs", [{"max_threads": 1}, {"max_threads": 2, "window": 1},
                                    {"max_threads": 2, "overhead": 0.0},
                                    {"max_threads": 2, "min_interval_s": 2.0,
                                     "max_interval_s": 1.0}])
def test_adaptive_threads_reject_bad_settings(kwargs) -> None:
    with pytest.raises(ValueError, match="got"):
        AdaptiveThreads(**kwargs)
