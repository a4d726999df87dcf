"""Tuning records: the per-layer kernel configuration and the tuner's settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from npas_env.errors import InvalidConfig

#: Kernel families a ``KernelConfig`` can name.
FAMILIES = ("spatial", "channel", "taps", "quads", "sweep", "masked", "winograd")


@dataclass(frozen=True)
class KernelConfig:
    """How one conv / linear layer is generated.

    Attributes:
        family: ``spatial`` (rows x output pixels, vectorised along pixels), ``channel``
            (GEMV style, vectorised along output channels; for Linear and tiny maps) or
            ``taps`` (one-row blocks in bands of output rows over kernel-column groups, for
            pattern-like sparsity at stride 1: ``compiler_backend.taps``) or ``quads`` (rows
            over quads of kept taps, for pattern-like sparsity on maps of at most a vector of
            pixels: ``compiler_backend.quads``), ``sweep`` (input-stationary one-row blocks:
            ``compiler_backend.sweep``) or ``masked`` (spatial tiles over the real pixels of
            a plain 8-wide map, padding by masked loads: ``compiler_backend.masked``) or
            ``winograd`` (F(2x2, 3x3) for dense 3x3 / stride-1 convs:
            ``compiler_backend.winograd``).
        p_max: largest row-block height P for the spatial and masked families (8, 4, 2 or 1).
        v: vectors per tile: along pixels for the spatial and masked families (tile width =
            v * lanes),
            along output channels for the channel family (blocks of v * lanes rows), per
            band row for the taps family, per quad for the quad family.
        threads: threads this layer uses (1 or the model's thread count).
    """

    family: str = "spatial"
    p_max: int = 8
    v: int = 2
    threads: int = 1

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise InvalidConfig(f"family must be one of {', '.join(map(repr, FAMILIES))}, got "
                                f"{self.family!r}")
        if (self.p_max not in (1, 2, 4, 8) or not 1 <= self.v <= 8 or self.threads < 1
                or (self.family in ("taps", "quads", "sweep", "winograd") and self.p_max != 1)):
            raise InvalidConfig(f"bad kernel config {self}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class TuningConfig:
    """Settings of the per-layer auto-tuner.

    Attributes:
        generations: GA generations (each is one compile of all candidates + one measurement).
        population: candidates per layer and generation.
        repeats: timed runs per measurement (median of per-layer profile times).
        seed: RNG seed of the GA.
        use_log: read / write the persistent tuning log.
    """

    generations: int = 3
    population: int = 4
    repeats: int = 20
    seed: int = 0
    use_log: bool = True

    def __post_init__(self) -> None:
        if self.generations < 1 or self.population < 1 or self.repeats < 1:
            raise InvalidConfig(f"tuning settings must be >= 1, got {self}")
