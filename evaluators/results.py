"""Result records of evaluations: values, never exceptions."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class AccuracyResult:
    """Outcome of one accuracy evaluation.

    Attributes:
        accuracy: top-1 accuracy as a fraction in [0, 1], or None on failure.
        error: why the evaluation failed (None if it succeeded).
        seconds: wall time spent.
        epochs: fine-tune epochs run.
        details: evaluator-specific extras (JSON-able).
    """

    accuracy: float | None
    error: str | None = None
    seconds: float = 0.0
    epochs: float = 0.0
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.error is None and not _finite_fraction(self.accuracy):
            object.__setattr__(self, "error", f"invalid accuracy value {self.accuracy!r}")
            object.__setattr__(self, "accuracy", None)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(cls, error: str, **kwargs: Any) -> AccuracyResult:
        return cls(None, error, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccuracyResult:
        return cls(**data)


@dataclass(frozen=True)
class LatencyResult:
    """Outcome of one latency measurement or prediction.

    Attributes:
        latency_ms: latency in milliseconds for batch 1, or None on failure.
        error: why it failed (None if it succeeded).
        spread_ms: dispersion of repeated runs (e.g. inter-quartile range), if measured.
        threads: thread count used, if known.
        extrapolated: the value lies outside the range a model was built on.
        details: evaluator-specific extras (JSON-able), e.g. per-layer times.
    """

    latency_ms: float | None
    error: str | None = None
    spread_ms: float | None = None
    threads: int | None = None
    extrapolated: bool = False
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        lat = self.latency_ms
        if self.error is None and not (isinstance(lat, (int, float)) and math.isfinite(lat) and lat > 0):
            object.__setattr__(self, "error", f"invalid latency value {lat!r}")
            object.__setattr__(self, "latency_ms", None)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(cls, error: str, **kwargs: Any) -> LatencyResult:
        return cls(None, error, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyResult:
        return cls(**data)


def _finite_fraction(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0
