"""Per-layer pruning decisions and whole-model plans (JSON-serializable, replayable)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from npas_env.errors import InvalidAction, InvalidPlan

PLAN_FORMAT = "npas-plan/1"

#: A block size (p, q): p rows/filters x q columns/input channels. 0 means "the whole dimension".
BlockSize = tuple[int, int]


class Scheme(str, Enum):
    """Pruning regularity (TODAES section 2.1 / 4.1)."""

    DENSE = "dense"
    UNSTRUCTURED = "unstructured"
    FILTER = "filter"
    PATTERN = "pattern"
    BLOCK_PUNCHED = "block_punched"
    BLOCK_BASED = "block_based"

    @property
    def uses_block(self) -> bool:
        return self in (Scheme.BLOCK_PUNCHED, Scheme.BLOCK_BASED)


class FilterType(str, Enum):
    """NPAS architecture dimension: what kernel a layer keeps."""

    KEEP = "keep"                  # the pretrained kernel as it is
    CONV1X1 = "1x1"                # kxk conv -> 1x1 conv (weights: central tap)
    DW_SEPARABLE = "dw_separable"  # kxk conv -> depthwise kxk + pointwise 1x1 (rank-1 split)
    SKIP = "skip"                  # identity (only where in == out channels and stride 1)


@dataclass(frozen=True)
class LayerAction:
    """The decision for one layer.

    Attributes:
        scheme: pruning regularity; rate 1.0 always means dense.
        rate: compression rate >= 1 (1.0 = unpruned, 10.0 = keep 1/10 of the weights).
        block_size: (p, q) for block schemes, else None. 0 means the whole dimension.
        filter_type: kernel replacement applied before pruning.
    """

    scheme: Scheme = Scheme.DENSE
    rate: float = 1.0
    block_size: BlockSize | None = None
    filter_type: FilterType = FilterType.KEEP

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "scheme", Scheme(self.scheme))
            object.__setattr__(self, "filter_type", FilterType(self.filter_type))
        except ValueError as exc:
            raise InvalidAction(f"{exc}; valid schemes: {[s.value for s in Scheme]}, "
                                f"filter types: {[f.value for f in FilterType]}") from None
        if not isinstance(self.rate, (int, float)) or not math.isfinite(self.rate) or self.rate < 1.0:
            raise InvalidAction(f"rate is a compression rate >= 1 (1 = dense), got {self.rate!r}")
        object.__setattr__(self, "rate", float(self.rate))
        if self.block_size is not None:
            bs = tuple(self.block_size)
            if len(bs) != 2 or not all(isinstance(v, int) and v >= 0 for v in bs):
                raise InvalidAction(f"block_size must be two ints >= 0 (0 = whole dim), got {self.block_size!r}")
            object.__setattr__(self, "block_size", (int(bs[0]), int(bs[1])))
        if self.scheme.uses_block and self.block_size is None and self.rate > 1.0:
            raise InvalidAction(f"scheme {self.scheme.value} needs a block_size, e.g. (8, 16)")

    @property
    def is_dense(self) -> bool:
        return self.rate == 1.0 or self.scheme is Scheme.DENSE

    def to_dict(self) -> dict[str, Any]:
        return {"scheme": self.scheme.value, "rate": self.rate,
                "block_size": list(self.block_size) if self.block_size else None,
                "filter_type": self.filter_type.value}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerAction:
        if not isinstance(data, dict):
            raise InvalidPlan(f"a layer action must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"scheme", "rate", "block_size", "filter_type"}
        if unknown:
            raise InvalidPlan(f"unknown keys in layer action: {sorted(unknown)}")
        bs = data.get("block_size")
        return cls(scheme=data.get("scheme", "dense"), rate=data.get("rate", 1.0),
                   block_size=tuple(bs) if bs is not None else None,  # type: ignore[arg-type]
                   filter_type=data.get("filter_type", "keep"))

    def __str__(self) -> str:
        if self.is_dense and self.filter_type is FilterType.KEEP:
            return "dense"
        text = "dense" if self.is_dense else f"{self.scheme.value} {self.rate:g}x"
        if self.block_size and not self.is_dense and self.scheme.uses_block:
            bh, bw = self.block_size
            text += " whole-matrix blocks" if (bh, bw) == (0, 0) else f" {bh}x{bw}"
        if self.filter_type is not FilterType.KEEP:
            text = f"[{self.filter_type.value}] {text}"
        return text


DENSE = LayerAction()


@dataclass(frozen=True)
class PruningPlan:
    """A decision for every prunable layer of one model, in layer order.

    Attributes:
        actions: one LayerAction per layer.
        layer_names: qualified module names, same order.
        arch_fingerprint: hash of the model's layer structure; replay on another model fails.
        metadata: free-form JSON-able extras (model name, search id...).
    """

    actions: tuple[LayerAction, ...]
    layer_names: tuple[str, ...]
    arch_fingerprint: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "actions", tuple(self.actions))
        object.__setattr__(self, "layer_names", tuple(self.layer_names))
        if len(self.actions) != len(self.layer_names):
            raise InvalidPlan(f"plan has {len(self.actions)} actions for {len(self.layer_names)} layers")
        for action in self.actions:
            if not isinstance(action, LayerAction):
                raise InvalidPlan(f"plan entries must be LayerAction, got {type(action).__name__}")

    def __len__(self) -> int:
        return len(self.actions)

    def __iter__(self) -> Iterator[LayerAction]:
        return iter(self.actions)

    def __getitem__(self, idx: int) -> LayerAction:
        return self.actions[idx]

    def items(self) -> Iterator[tuple[str, LayerAction]]:
        return zip(self.layer_names, self.actions)

    def key(self) -> str:
        """A canonical string identifying the decisions (used for hashing and caching)."""
        return json.dumps([self.arch_fingerprint, [a.to_dict() for a in self.actions]], sort_keys=True)

    @classmethod
    def dense(cls, layer_names: Sequence[str], arch_fingerprint: str = "") -> PruningPlan:
        return cls(tuple(DENSE for _ in layer_names), tuple(layer_names), arch_fingerprint)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "arch_fingerprint": self.arch_fingerprint,
                "metadata": self.metadata,
                "layers": [{"name": n, **a.to_dict()} for n, a in self.items()]}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Any) -> PruningPlan:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise InvalidPlan(f"not an npas plan (expected 'format': {PLAN_FORMAT!r})")
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise InvalidPlan("plan 'layers' must be a list")
        names, actions = [], []
        for entry in layers:
            if not isinstance(entry, dict) or "name" not in entry:
                raise InvalidPlan(f"each plan layer needs a 'name', got {entry!r}")
            entry = dict(entry)
            names.append(str(entry.pop("name")))
            try:
                actions.append(LayerAction.from_dict(entry))
            except InvalidAction as exc:
                raise InvalidPlan(f"layer {names[-1]!r}: {exc}") from None
        return cls(tuple(actions), tuple(names), str(data.get("arch_fingerprint", "")),
                   dict(data.get("metadata") or {}))

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InvalidPlan(f"plan is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON atomically (temp file + rename)."""
        from npas_env.io import atomic_write_text

        atomic_write_text(Path(path), self.to_json(indent=2))

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidPlan(f"cannot read plan file {path}: {exc}") from None
        return cls.from_json(text)
