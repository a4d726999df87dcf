"""The 3x3 kernel-pattern set of pattern-based pruning (PatDNN / PCONV, TODAES section 2.1).

A pattern keeps 4 of the 9 entries of a 3x3 kernel: the center plus 3 of its 8 neighbours, so
there are C(8, 3) = 56 candidates. A model's pattern set is data-driven: for every pretrained 3x3
kernel the candidate "center + its 3 largest-|w| neighbours" is counted, and the ``num_patterns``
most frequent candidates form the set. Ties, and padding when the model has too few kernels, follow
the fixed Gaussian-like :data:`DEFAULT_PATTERNS` order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from npas_env.errors import InvalidConfig, InvalidModel

#: Flat indices (row * 3 + col) of the 8 neighbours of the center of a 3x3 kernel.
NEIGHBOURS: tuple[int, ...] = (0, 1, 2, 3, 5, 6, 7, 8)
CENTER = 4
#: Entries kept by every pattern.
PATTERN_NNZ = 4
MAX_PATTERNS = math.comb(len(NEIGHBOURS), PATTERN_NNZ - 1)  # 56


def _candidate_sort_key(combo: tuple[int, ...]) -> tuple[float, int, tuple[int, ...]]:
    """Gaussian-likeness of "center + combo": closer neighbours first, then compact shapes.

    Key: (-sum of Gaussian weights exp(-d^2 / 2) of the neighbours, -number of edge-adjacent
    neighbour pairs, combo) so the 4 T-shapes (3 cross neighbours) come first, then the 4 2x2
    squares (2 cross neighbours + the corner between them), then the rest.
    """
    coords = [divmod(i, 3) for i in combo]
    gauss = sum(math.exp(-((r - 1) ** 2 + (c - 1) ** 2) / 2) for r, c in coords)
    adjacent = sum(abs(r1 - r2) + abs(c1 - c2) == 1
                   for (r1, c1), (r2, c2) in itertools.combinations(coords, 2))
    return (-round(gauss, 9), -adjacent, combo)


def _candidate_combos() -> tuple[tuple[int, ...], ...]:
    combos = itertools.combinations(NEIGHBOURS, PATTERN_NNZ - 1)
    return tuple(sorted(combos, key=_candidate_sort_key))


_COMBOS = _candidate_combos()


def _combos_to_masks(combos: Sequence[tuple[int, ...]]) -> torch.Tensor:
    flat = torch.zeros(len(combos), 9, dtype=torch.bool)
    for row, combo in enumerate(combos):
        flat[row, [CENTER, *combo]] = True
    return flat.reshape(len(combos), 3, 3)


#: All 56 candidate patterns, bool [56, 3, 3], in the default (Gaussian-like) order.
#: ``DEFAULT_PATTERNS[:n]`` is the pattern set used when a model has no 3x3 kernels.
DEFAULT_PATTERNS: torch.Tensor = _combos_to_masks(_COMBOS)

# Lookup: 8-bit code over NEIGHBOURS (bit k set = neighbour k kept) -> candidate index.
_CODE_TO_INDEX = torch.full((256,), -1, dtype=torch.long)
for _idx, _combo in enumerate(_COMBOS):
    _CODE_TO_INDEX[sum(1 << NEIGHBOURS.index(i) for i in _combo)] = _idx


def default_pattern_set(num_patterns: int = 8) -> torch.Tensor:
    """The first ``num_patterns`` entries of :data:`DEFAULT_PATTERNS` (a copy), bool [n, 3, 3]."""
    _check_num_patterns(num_patterns)
    return DEFAULT_PATTERNS[:num_patterns].clone()


def _check_num_patterns(num_patterns: int) -> None:
    if not isinstance(num_patterns, int) or not 1 <= num_patterns <= MAX_PATTERNS:
        raise InvalidConfig(f"num_patterns must be an int in 1..{MAX_PATTERNS}, got {num_patterns!r}")


def kernel_candidates(weight: torch.Tensor) -> torch.Tensor:
    """Index into :data:`DEFAULT_PATTERNS` of "center + top-3 |w| neighbours" for each kernel.

    Args:
        weight: 3x3 conv weight [P, C, 3, 3] (any float dtype).

    Returns:
        long tensor of shape [P * C]. Equal magnitudes are broken by position (row-major).
    """
    flat = weight.detach().reshape(-1, 9).abs().float()
    neighbours = flat[:, list(NEIGHBOURS)]
    top = torch.argsort(neighbours, dim=1, descending=True, stable=True)[:, : PATTERN_NNZ - 1]
    codes = (torch.ones_like(top) << top).sum(dim=1)
    return _CODE_TO_INDEX[codes]


def build_pattern_set(weights: Sequence[torch.Tensor], num_patterns: int = 8) -> torch.Tensor:
    """Choose a model's pattern set from its pretrained 3x3 kernels.

    Every 3x3 kernel votes for the candidate "center + its 3 largest-|w| neighbours"; the
    ``num_patterns`` candidates with the most votes win. Ties (and candidates nobody voted for, used
    to pad the set when the model has few kernels) are ordered by :data:`DEFAULT_PATTERNS`, so the
    result is deterministic.

    Args:
        weights: conv weights; tensors whose last two dims are not 3x3 are ignored.
        num_patterns: size of the set, 1..56 (TODAES / PatDNN use 8 or 16).

    Returns:
        bool tensor [num_patterns, 3, 3]; each pattern has 4 True entries including the center,
        most frequent first.

    Raises:
        InvalidConfig: ``num_patterns`` is out of range.
        InvalidModel: a 3x3 weight contains NaN or inf.
    """
    _check_num_patterns(num_patterns)
    votes = torch.zeros(MAX_PATTERNS, dtype=torch.long)
    for weight in weights:
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2 or tuple(weight.shape[-2:]) != (3, 3):
            continue
        if not torch.isfinite(weight).all():
            raise InvalidModel(f"a 3x3 weight of shape {tuple(weight.shape)} contains NaN or inf; "
                               "the model is broken, reload or retrain it")
        votes += torch.bincount(kernel_candidates(weight), minlength=MAX_PATTERNS)
    order = sorted(range(MAX_PATTERNS), key=lambda i: (-int(votes[i]), i))
    return DEFAULT_PATTERNS[order[:num_patterns]].clone()


def check_pattern_set(pattern_set: torch.Tensor) -> torch.Tensor:
    """Validate a pattern set and return it as a bool tensor [n, 3, 3].

    Raises:
        InvalidConfig: wrong shape, empty, or a pattern without exactly 4 kept entries.
    """
    if not isinstance(pattern_set, torch.Tensor) or pattern_set.dim() != 3 \
            or tuple(pattern_set.shape[1:]) != (3, 3) or pattern_set.shape[0] == 0:
        shape = tuple(pattern_set.shape) if isinstance(pattern_set, torch.Tensor) else type(pattern_set).__name__
        raise InvalidConfig(f"pattern_set must be a bool tensor [n, 3, 3] with n >= 1, got {shape}; "
                            "build one with build_pattern_set()")
    patterns = pattern_set.bool()
    counts = patterns.reshape(len(patterns), 9).sum(dim=1)
    bad = (counts != PATTERN_NNZ).nonzero().flatten().tolist()
    if bad:
        raise InvalidConfig(f"every pattern must keep exactly {PATTERN_NNZ} entries; patterns {bad} keep "
                            f"{counts[bad].tolist()}")
    return patterns
