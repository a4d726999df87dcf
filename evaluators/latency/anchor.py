"""Timing against a reference model run in the same rounds (the dense model of the context).

A shared or virtualised CPU switches between speed states that last seconds (on the KVM guest
this package is developed on, one plan measured 0.48 ms and then 0.64 ms a second later, each
with a 1-5 % spread). Two measurements of the same model minutes apart therefore disagree far
more than their own spread says. Timing the model and a fixed reference alternately, round by
round, and keeping their ratio cancels the state: the ratio repeats where the milliseconds do
not (``docs/benchmarks/latency.md``). Callers turn the ratio back into milliseconds with one
reference latency measured once, so every plan of a search is on the same scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class _Timing(Protocol):
    median_ms: float


class Timeable(Protocol):
    """Anything with ``compiler_backend``'s ``benchmark(warmup, repeats, min_seconds)``."""

    def benchmark(self, warmup: int = ..., repeats: int = ..., min_seconds: float = ...) -> _Timing: ...


@dataclass(frozen=True)
class AnchoredTiming:
    """One model timed between reference runs.

    Attributes:
        ratio: median over rounds of model time / mean of the reference runs around it.
        ratio_iqr: inter-quartile range of the per-round ratios.
        model_ms: median of the model's per-round medians (raw, state-dependent).
        reference_ms: median of the reference's per-round medians (raw).
        rounds: rounds timed.
    """

    ratio: float
    ratio_iqr: float
    model_ms: float
    reference_ms: float
    rounds: int


def _median_ms(target: Timeable, warmup: int, repeats: int, min_seconds: float) -> float:
    return float(target.benchmark(warmup, repeats, min_seconds).median_ms)


def time_anchored(model: Timeable, reference: Timeable, *, rounds: int = 5, repeats: int = 10,
                  min_seconds: float = 0.0, warmup: int = 2) -> AnchoredTiming:
    """Time ``reference, model, reference, model, ..., reference`` (``rounds`` model runs).

    Each segment is ``repeats`` calls (and at least ``min_seconds``); a round's ratio divides the
    model's median by the mean of the two reference medians around it.
    """
    if rounds < 1 or repeats < 1:
        raise ValueError(f"rounds and repeats must be >= 1, got {rounds}, {repeats}")
    refs = [_median_ms(reference, warmup, repeats, min_seconds)]
    mods = []
    for _ in range(rounds):
        mods.append(_median_ms(model, warmup, repeats, min_seconds))
        refs.append(_median_ms(reference, warmup, repeats, min_seconds))
    around = (np.asarray(refs[:-1]) + np.asarray(refs[1:])) / 2
    ratios = np.asarray(mods) / around
    q25, q50, q75 = np.percentile(ratios, [25, 50, 75])
    return AnchoredTiming(float(q50), float(q75 - q25), float(np.median(mods)), float(np.median(refs)),
                          rounds)
