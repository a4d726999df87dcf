"""The per-device latency table: layer settings -> measured per-layer latency (versioned JSON).

A :class:`LatencyTable` is what ``build_lut`` writes and ``lut`` / ``predictor`` read. Each
:class:`TableEntry` is one :class:`LayerSetting` (layer type, channels, feature-map size, scheme,
rate, block size) measured on a test model of ``cascade`` identical layers; ``latency_ms`` is the
per-layer time (total / cascade). The file is plain JSON (never pickle)::

    {"format": "npas-latency-table", "version": 1, "device": "...", "backend": "...",
     "machine": {...}, "created": "...", "cascade": 10, "threads": 1, "noise": {...},
     "entries": [{"layer_type": "conv3x3", "channels": 64, "fmap": 16, "scheme": "pattern",
                  "rate": 4.0, "block": null, "latency_ms": 0.21, "rel_iqr": 0.02, "runs": 50}]}

A table made for another device or backend version is refused unless ``force=True``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from npas_env.errors import CacheError, InvalidConfig
from npas_env.io import atomic_write_text

TABLE_FORMAT = "npas-latency-table"
TABLE_VERSION = 1
#: Layer types of the mapping paper's latency model (TODAES 5.2.1) plus FC.
LAYER_TYPES = ("conv1x1", "conv3x3", "conv5x5", "dw3x3", "fc")
KERNEL_OF = {"conv1x1": 1, "conv3x3": 3, "conv5x5": 5, "dw3x3": 3, "fc": 1}


class TableMismatch(CacheError):
    """A latency table was built for another device or backend version."""


@dataclass(frozen=True)
class LayerSetting:
    """One row key of the table.

    Attributes:
        layer_type: one of :data:`LAYER_TYPES`.
        channels: input = output channels (features for ``fc``).
        fmap: input = output feature-map height = width (1 for ``fc``).
        scheme: a ``Scheme`` value; ``"dense"`` for rate 1.
        rate: compression rate >= 1.
        block: (p, q) for block schemes, else None.
    """

    layer_type: str
    channels: int
    fmap: int
    scheme: str = "dense"
    rate: float = 1.0
    block: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.layer_type not in LAYER_TYPES:
            raise InvalidConfig(f"layer_type must be one of {LAYER_TYPES}, got {self.layer_type!r}")
        if self.channels < 1 or self.fmap < 1 or not self.rate >= 1.0:
            raise InvalidConfig(f"bad layer setting {self}: channels, fmap >= 1 and rate >= 1")
        object.__setattr__(self, "rate", float(self.rate))
        if self.block is not None:
            object.__setattr__(self, "block", (int(self.block[0]), int(self.block[1])))

    @property
    def family(self) -> tuple[str, str, tuple[int, int] | None]:
        """The categorical part of the key: (layer type, scheme, block)."""
        return (self.layer_type, self.scheme, self.block)

    @property
    def macs(self) -> int:
        """Dense multiply-accumulates of one layer (batch 1, stride 1, same padding)."""
        k = KERNEL_OF[self.layer_type]
        per_out = k * k if self.layer_type == "dw3x3" else self.channels * k * k
        return self.channels * per_out * self.fmap * self.fmap

    def key(self) -> str:
        return json.dumps([self.layer_type, self.channels, self.fmap, self.scheme, self.rate,
                           list(self.block) if self.block else None])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["block"] = list(self.block) if self.block else None
        return data


@dataclass(frozen=True)
class TableEntry:
    """A measured setting: per-layer latency and its noise (relative inter-quartile range)."""

    setting: LayerSetting
    latency_ms: float
    rel_iqr: float = 0.0
    runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**self.setting.to_dict(), "latency_ms": self.latency_ms,
                "rel_iqr": self.rel_iqr, "runs": self.runs}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableEntry:
        block = data.get("block")
        setting = LayerSetting(str(data["layer_type"]), int(data["channels"]), int(data["fmap"]),
                               str(data.get("scheme", "dense")), float(data.get("rate", 1.0)),
                               tuple(block) if block else None)  # type: ignore[arg-type]
        latency = float(data["latency_ms"])
        if not (math.isfinite(latency) and latency > 0):
            raise ValueError(f"latency_ms must be > 0, got {latency}")
        return cls(setting, latency, float(data.get("rel_iqr", 0.0)), int(data.get("runs", 0)))


@dataclass
class LatencyTable:
    """Per-device latency table (see the module docstring for the file format).

    Attributes:
        device: user-chosen device name (e.g. ``"zen5-1t"``).
        backend: compiler/backend version string the table was measured with.
        machine: free-form machine description (CPU, cores, OS).
        created: ISO creation date (UTC).
        cascade: identical layers per test model.
        threads: threads used while measuring.
        entries: key -> entry.
    """

    device: str
    backend: str
    machine: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: utc_now())
    cascade: int = 10
    threads: int = 1
    entries: dict[str, TableEntry] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: TableEntry) -> None:
        self.entries[entry.setting.key()] = entry

    def __contains__(self, setting: LayerSetting) -> bool:
        return setting.key() in self.entries

    def noise(self) -> dict[str, float]:
        """Summary of the per-setting relative IQRs (median, p90, max) and the entry count."""
        return noise_summary(e.rel_iqr for e in self.entries.values())

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "device": self.device,
                "backend": self.backend, "machine": self.machine, "created": self.created,
                "cascade": self.cascade, "threads": self.threads, "noise": self.noise(),
                "entries": [e.to_dict() for e in self.entries.values()]}

    def save(self, path: str | Path) -> None:
        """Write the table as JSON atomically (a crash never leaves a half-written file)."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> LatencyTable:
        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            raise CacheError(f"{source} is not an npas latency table (expected 'format': "
                             f"{TABLE_FORMAT!r}); build one with `npas build-lut`")
        if data.get("version") != TABLE_VERSION:
            raise CacheError(f"{source} has table version {data.get('version')!r}; this npas-env "
                             f"reads version {TABLE_VERSION}. Rebuild it with `npas build-lut`")
        table = cls(str(data.get("device", "")), str(data.get("backend", "")),
                    dict(data.get("machine") or {}), str(data.get("created", "")),
                    int(data.get("cascade", 10)), int(data.get("threads", 1)))
        for idx, raw in enumerate(data.get("entries") or []):
            try:
                table.add(TableEntry.from_dict(raw))
            except (KeyError, TypeError, ValueError) as exc:
                raise CacheError(f"{source}: entry {idx} is malformed ({exc}): {raw!r}") from None
        return table

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None, backend: str | None = None,
             force: bool = False) -> LatencyTable:
        """Read a table file and check it was made for ``device`` / ``backend`` (if given).

        Raises:
            CacheError: the file is missing, truncated, not JSON or not a latency table.
            TableMismatch: other device or backend version and ``force`` is False.
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
            data = json.loads(text)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CacheError(f"cannot read latency table {path}: {type(exc).__name__}: {exc}. "
                             "The file is missing, truncated or not JSON; rebuild it with "
                             "`npas build-lut` (reruns resume from its last complete state)") from None
        table = cls.from_dict(data, source=str(path))
        table.check(device=device, backend=backend, force=force)
        return table

    def check(self, *, device: str | None = None, backend: str | None = None,
              force: bool = False) -> None:
        """Refuse (or with ``force``, warn about) a table made for another device or backend."""
        problems = []
        if device is not None and device != self.device:
            problems.append(f"device {self.device!r} (wanted {device!r})")
        if backend is not None and backend != self.backend:
            problems.append(f"backend {self.backend!r} (running {backend!r})")
        if not problems:
            return
        msg = f"latency table was built for {' and '.join(problems)}"
        if not force:
            raise TableMismatch(msg + "; rebuild it with `npas build-lut` on this device, or pass "
                                "force=True to use it anyway")
        warnings.warn(msg + "; used anyway because force=True", stacklevel=3)


def noise_summary(rel_iqrs: Iterable[float]) -> dict[str, float]:
    """Entry count and median / p90 / max of per-entry relative IQRs."""
    values = sorted(rel_iqrs)
    if not values:
        return {"entries": 0}
    return {"entries": len(values), "median_rel_iqr": values[len(values) // 2],
            "p90_rel_iqr": values[min(len(values) - 1, int(0.9 * len(values)))],
            "max_rel_iqr": values[-1]}


def utc_now() -> str:
    """The current UTC time, ISO 8601 (table creation dates)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat()


def backend_version() -> str:
    """Identifier of the local measuring backend (generator version + C compiler + ISA).

    New kernels change every timing, so a table built with another generator version is refused
    like one from another device (unless forced).
    """
    try:
        from compiler_backend.codegen import GENERATOR_VERSION
        from compiler_backend.compile import resolve_isa
        from compiler_backend.toolchain import compiler_version, find_compiler

        cc = compiler_version(find_compiler())
        return f"npas-compiler-v{GENERATOR_VERSION}/{cc}/{resolve_isa().name}"
    except Exception:  # no compiler / backend: measurements come from torch eager
        import torch

        return f"torch-eager/{torch.__version__}"
