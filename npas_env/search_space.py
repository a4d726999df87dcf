"""The per-layer action space: which (filter type, scheme, rate, block size) a layer may take.

An action is a 4-vector of indices ``[filter_type, scheme, rate, block_size]`` into the tuples
of a :class:`SearchSpace`. Masks follow sb3-contrib's ``MultiDiscrete`` layout: the per-dimension
boolean masks concatenated. Because dimensions are masked independently, a few combinations are
canonicalized when decoded (documented in :meth:`SearchSpace.decode`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from npas_env.errors import InvalidAction, InvalidConfig
from npas_env.layers import LayerKind, LayerSpec
from npas_env.plan import BlockSize, FilterType, LayerAction, Scheme

NPAS_RATES: tuple[float, ...] = (1.0, 2.0, 2.5, 3.0, 5.0, 7.0, 10.0)
DEFAULT_BLOCK_SIZES: tuple[BlockSize, ...] = ((1, 1), (4, 4), (8, 4), (4, 16), (8, 16), (16, 32), (0, 0))
ALL_SCHEMES: tuple[Scheme, ...] = (Scheme.UNSTRUCTURED, Scheme.FILTER, Scheme.PATTERN,
                                   Scheme.BLOCK_PUNCHED, Scheme.BLOCK_BASED)
ALL_FILTER_TYPES: tuple[FilterType, ...] = (FilterType.KEEP, FilterType.CONV1X1,
                                            FilterType.DW_SEPARABLE, FilterType.SKIP)


@dataclass(frozen=True)
class SearchSpace:
    """What the agent may choose per layer.

    Attributes:
        filter_types: kernel choices (NPAS architecture dimension); KEEP must be first.
        schemes: pruning regularities.
        rates: compression rates; 1.0 (dense) must be present.
        block_sizes: (p, q) candidates for block schemes; 0 = whole dimension.
        prune_depthwise: allow pruning depthwise 3x3 layers (TODAES leaves them dense).
        num_patterns: size of the per-model 3x3 pattern set (4..16).
    """

    filter_types: tuple[FilterType, ...] = ALL_FILTER_TYPES
    schemes: tuple[Scheme, ...] = ALL_SCHEMES
    rates: tuple[float, ...] = NPAS_RATES
    block_sizes: tuple[BlockSize, ...] = DEFAULT_BLOCK_SIZES
    prune_depthwise: bool = False
    num_patterns: int = 8
    _scheme_idx: dict[Scheme, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("filter_types", "schemes", "rates", "block_sizes"):
            if not getattr(self, name):
                raise InvalidConfig(f"search space {name} must not be empty")
        object.__setattr__(self, "filter_types", tuple(FilterType(f) for f in self.filter_types))
        object.__setattr__(self, "schemes", tuple(Scheme(s) for s in self.schemes))
        object.__setattr__(self, "block_sizes", tuple((int(p), int(q)) for p, q in self.block_sizes))
        if self.filter_types[0] is not FilterType.KEEP:
            raise InvalidConfig("search space filter_types must start with FilterType.KEEP")
        if 1.0 not in self.rates or any(r < 1.0 for r in self.rates):
            raise InvalidConfig(f"rates must be >= 1 and include 1.0 (dense), got {self.rates}")
        if Scheme.DENSE in self.schemes:
            raise InvalidConfig("Scheme.DENSE is implied by rate 1.0; do not list it in schemes")
        if not 4 <= self.num_patterns <= 16:
            raise InvalidConfig(f"num_patterns must be in 4..16, got {self.num_patterns}")
        object.__setattr__(self, "_scheme_idx", {s: i for i, s in enumerate(self.schemes)})

    @property
    def nvec(self) -> np.ndarray:
        """Sizes of the four action dimensions (for ``gymnasium.spaces.MultiDiscrete``)."""
        return np.array([len(self.filter_types), len(self.schemes), len(self.rates),
                         len(self.block_sizes)], dtype=np.int64)

    # ----------------------------------------------------------------------------- masks
    def allowed_filter_types(self, layer: LayerSpec) -> list[FilterType]:
        ok = [FilterType.KEEP]
        regular = layer.kind is LayerKind.CONV
        if regular and layer.kernel_size != (1, 1):
            ok.append(FilterType.DW_SEPARABLE)
            same = all(2 * p == d * (k - 1) for p, d, k in
                       zip(layer.padding, layer.dilation, layer.kernel_size))
            if same:  # a 1x1 conv keeps the output size only for "same" padding
                ok.append(FilterType.CONV1X1)
        if (regular and layer.in_channels == layer.out_channels and layer.stride == (1, 1)
                and layer.input_hw == layer.output_hw):
            ok.append(FilterType.SKIP)
        return [f for f in self.filter_types if f in ok]

    def allowed_schemes(self, layer: LayerSpec, decided: Sequence[tuple[LayerSpec, LayerAction]] = ()) -> list[Scheme]:
        ok = {Scheme.UNSTRUCTURED}
        if layer.is_conv:
            ok.add(Scheme.BLOCK_PUNCHED)
        if layer.kind is LayerKind.LINEAR or layer.is_pointwise:
            ok.add(Scheme.BLOCK_BASED)
        if layer.kernel_size == (3, 3) and layer.kind in (LayerKind.CONV, LayerKind.GROUPED):
            ok.add(Scheme.PATTERN)
        if self._filter_consistent(layer, decided) is not False and not layer.coupled_with_fixed:
            ok.add(Scheme.FILTER)
        forced = self._group_filter_rate(layer, decided)
        if forced is not None:  # an earlier group member chose filter pruning: follow it
            ok = {Scheme.FILTER}
        return [s for s in self.schemes if s in ok] or [self.schemes[0]]

    def allowed_rates(self, layer: LayerSpec, decided: Sequence[tuple[LayerSpec, LayerAction]] = ()) -> list[float]:
        if layer.is_depthwise and not self.prune_depthwise:
            return [1.0]
        forced = self._group_filter_rate(layer, decided)
        if forced is not None:
            return [forced]
        return list(self.rates)

    def allowed_block_sizes(self, layer: LayerSpec) -> list[BlockSize]:
        rows, cols = layer.out_channels, layer.in_channels // layer.groups
        ok = [b for b in self.block_sizes
              if (b[0] == 0 or (b[0] <= rows and rows % b[0] == 0))
              and (b[1] == 0 or (b[1] <= cols and cols % b[1] == 0))]
        return ok or [self.block_sizes[-1]]

    def action_mask(self, layer: LayerSpec,
                    decided: Sequence[tuple[LayerSpec, LayerAction]] = ()) -> np.ndarray:
        """Boolean mask of shape (sum(nvec),), MultiDiscrete layout, for ``layer``.

        Args:
            layer: the layer being decided.
            decided: (spec, action) pairs of the layers decided earlier in the episode.
        """
        parts = [
            [f in self.allowed_filter_types(layer) for f in self.filter_types],
            [s in self.allowed_schemes(layer, decided) for s in self.schemes],
            [r in self.allowed_rates(layer, decided) for r in self.rates],
            [b in self.allowed_block_sizes(layer) for b in self.block_sizes],
        ]
        if self._group_filter_rate(layer, decided) is not None:
            parts[0] = [f is FilterType.KEEP for f in self.filter_types]
        return np.concatenate([np.asarray(p, dtype=bool) for p in parts])

    def _group_members(self, layer: LayerSpec, decided: Sequence[tuple[LayerSpec, LayerAction]]):
        if layer.coupled_group is None:
            return []
        return [a for s, a in decided if s.coupled_group == layer.coupled_group]

    def _filter_consistent(self, layer: LayerSpec, decided) -> bool | None:
        """False if an earlier group member was decided without filter pruning."""
        members = self._group_members(layer, decided)
        if not members:
            return None
        return all(a.scheme is Scheme.FILTER and not a.is_dense for a in members)

    def _group_filter_rate(self, layer: LayerSpec, decided) -> float | None:
        members = self._group_members(layer, decided)
        if members and members[0].scheme is Scheme.FILTER and not members[0].is_dense:
            return members[0].rate
        return None

    # ------------------------------------------------------------------ encode / decode
    def decode(self, layer: LayerSpec, action: Sequence[int] | np.ndarray,
               decided: Sequence[tuple[LayerSpec, LayerAction]] = (), *, check: bool = True) -> LayerAction:
        """Turn an index vector into a :class:`LayerAction` for ``layer``.

        Canonicalization: rate 1.0 gives a dense action (scheme and block ignored); the block
        size is dropped for non-block schemes; when the kernel becomes 1x1 (filter type 1x1 or
        depthwise-separable, whose pruned part is the pointwise conv) pattern becomes unstructured
        (TODAES: pattern on 1x1 equals unstructured) and block-punched becomes block-based.

        Raises:
            InvalidAction: the vector has the wrong shape, an index is out of range, or (with
                ``check``) it selects a masked choice.
        """
        vec = np.asarray(action).reshape(-1)
        nvec = self.nvec
        if vec.shape != (4,) or not np.issubdtype(vec.dtype, np.integer) and not np.all(np.mod(vec, 1) == 0):
            raise InvalidAction(f"action must be 4 integers [filter_type, scheme, rate, block], got {action!r}")
        idx = vec.astype(np.int64)
        if np.any(idx < 0) or np.any(idx >= nvec):
            raise InvalidAction(f"action {idx.tolist()} out of range; dimension sizes are {nvec.tolist()}")
        if check:
            mask = self.action_mask(layer, decided)
            offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
            bad = [d for d in range(4) if not mask[offsets[d] + idx[d]]]
            if bad:
                names = ["filter_type", "scheme", "rate", "block_size"]
                raise InvalidAction(f"action {idx.tolist()} is masked for layer {layer.name!r} "
                                    f"(dimension {', '.join(names[d] for d in bad)}); use "
                                    "env.action_masks() to see the allowed choices")
        return self.canonical(layer, LayerAction(
            scheme=self.schemes[idx[1]], rate=self.rates[idx[2]],
            block_size=self.block_sizes[idx[3]], filter_type=self.filter_types[idx[0]]))

    def canonical(self, layer: LayerSpec, action: LayerAction) -> LayerAction:
        """Apply the decode canonicalization rules to an action for ``layer``."""
        ft = action.filter_type
        if action.is_dense:
            return LayerAction(filter_type=ft)
        scheme = action.scheme
        becomes_1x1 = ft in (FilterType.CONV1X1, FilterType.DW_SEPARABLE) or layer.is_pointwise
        if ft is FilterType.SKIP:
            return LayerAction(filter_type=ft)
        if becomes_1x1 and layer.is_conv:
            scheme = {Scheme.PATTERN: Scheme.UNSTRUCTURED,
                      Scheme.BLOCK_PUNCHED: Scheme.BLOCK_BASED}.get(scheme, scheme)
        block = action.block_size if scheme.uses_block else None
        return LayerAction(scheme=scheme, rate=action.rate, block_size=block, filter_type=ft)

    def encode(self, action: LayerAction) -> np.ndarray:
        """Index vector of ``action`` (dense actions map to rate 1.0 and the first scheme/block)."""
        try:
            f = self.filter_types.index(action.filter_type)
            r = self.rates.index(action.rate)
            s = 0 if action.is_dense else self._scheme_idx[action.scheme]
            b = self.block_sizes.index(action.block_size) if (action.block_size and not action.is_dense) else 0
        except (ValueError, KeyError):
            raise InvalidAction(f"action {action} is not in this search space") from None
        return np.array([f, s, r, b], dtype=np.int64)


def sample_masked_action(nvec: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random allowed action for a flattened MultiDiscrete ``mask``."""
    action = np.empty(len(nvec), dtype=np.int64)
    start = 0
    for dim, size in enumerate(nvec):
        allowed = np.flatnonzero(mask[start:start + size])
        action[dim] = rng.choice(allowed)
        start += size
    return action
