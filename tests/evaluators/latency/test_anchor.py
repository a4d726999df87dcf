"""time_anchored: the ratio to a reference timed in the same rounds survives speed-state changes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from evaluators.latency.anchor import time_anchored


class Machine:
    """A CPU whose speed state changes every few calls (as the KVM guest's does)."""

    def __init__(self, states: list[float]) -> None:
        self.states, self.calls = states, 0

    def speed(self) -> float:
        self.calls += 1
        return self.states[(self.calls // 3) % len(self.states)]


@dataclass
class Fake:
    ms: float
    machine: Machine

    def benchmark(self, warmup: int = 0, repeats: int = 1, min_seconds: float = 0.0) -> object:
        class T:
            median_ms = self.ms * self.machine.speed()
        return T()


def test_ratio_cancels_speed_states() -> None:
    machine = Machine([1.0, 1.0, 1.35, 1.35])  # state changes slower than one round
    t = time_anchored(Fake(0.5, machine), Fake(2.0, machine), rounds=7, repeats=1)
    assert t.rounds == 7
    assert t.model_ms > 0 and t.reference_ms > 0
    assert 0.22 < t.ratio < 0.28  # 0.25 up to the rounds that straddle a state change
    steady = time_anchored(Fake(0.5, Machine([1.3])), Fake(2.0, Machine([1.3])), rounds=3)
    assert steady.ratio == pytest.approx(0.25) and steady.ratio_iqr == pytest.approx(0.0)
    assert steady.model_ms == pytest.approx(0.65)


def test_bad_rounds_are_rejected() -> None:
    with pytest.raises(ValueError, match="rounds"):
        time_anchored(Fake(1, Machine([1])), Fake(1, Machine([1])), rounds=0)
