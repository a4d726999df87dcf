"""The 56 candidate patterns and the data-driven per-model pattern set."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from npas_env.errors import InvalidConfig, InvalidModel
from npas_env.pruning import (
    DEFAULT_PATTERNS,
    build_pattern_set,
    check_pattern_set,
    default_pattern_set,
)


def _key(pattern: torch.Tensor) -> tuple[bool, ...]:
    return tuple(pattern.flatten().tolist())


def test_default_patterns_are_the_56_center_candidates():
    assert DEFAULT_PATTERNS.shape == (56, 3, 3) and DEFAULT_PATTERNS.dtype == torch.bool
    assert (DEFAULT_PATTERNS.reshape(56, 9).sum(dim=1) == 4).all()
    assert DEFAULT_PATTERNS[:, 1, 1].all()
    assert len({_key(p) for p in DEFAULT_PATTERNS}) == 56


def test_default_order_starts_gaussian_like():
    cross = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    for pattern in DEFAULT_PATTERNS[:4]:  # T-shapes: center + 3 of the 4 cross neighbours
        assert not (pattern & ~cross).any()
    for pattern in DEFAULT_PATTERNS[4:8]:  # 2x2 squares containing the center
        rows, cols = pattern.nonzero(as_tuple=True)
        assert rows.max() - rows.min() == 1 and cols.max() - cols.min() == 1


def _brute_force(weights: list[torch.Tensor], n: int) -> list[tuple[bool, ...]]:
    votes: Counter[tuple[bool, ...]] = Counter()
    for weight in weights:
        for kernel in weight.reshape(-1, 9).abs():
            neighbours = [i for i in range(9) if i != 4]
            top = sorted(neighbours, key=lambda i: (-float(kernel[i]), i))[:3]
            mask = torch.zeros(9, dtype=torch.bool)
            mask[[4, *top]] = True
            votes[tuple(mask.tolist())] += 1
    rank = {_key(p): i for i, p in enumerate(DEFAULT_PATTERNS)}
    return sorted(rank, key=lambda k: (-votes[k], rank[k]))[:n]


@pytest.mark.parametrize("num_patterns", [4, 8, 16])
def test_build_pattern_set_matches_brute_force_count(num_patterns, gen):
    weights = [torch.randn(6, 5, 3, 3, generator=gen), torch.randn(4, 6, 3, 3, generator=gen)]
    patterns = build_pattern_set(weights, num_patterns)
    assert patterns.shape == (num_patterns, 3, 3)
    assert [_key(p) for p in patterns] == _brute_force(weights, num_patterns)


def test_dominant_pattern_comes_first(gen):
    target = DEFAULT_PATTERNS[40]
    weight = torch.rand(8, 8, 3, 3, generator=gen) * 0.1 + target.float() * 5
    assert torch.equal(build_pattern_set([weight], 8)[0], target)


def test_few_kernels_are_padded_in_default_order(gen):
    assert torch.equal(build_pattern_set([], 8), DEFAULT_PATTERNS[:8])
    weight = torch.rand(1, 1, 3, 3, generator=gen)
    patterns = build_pattern_set([weight], 8)
    assert len({_key(p) for p in patterns}) == 8
    rest = [p for p in DEFAULT_PATTERNS if not torch.equal(p, patterns[0])][:7]
    assert all(torch.equal(a, b) for a, b in zip(patterns[1:], rest, strict=True))


def test_non_3x3_weights_are_ignored(gen):
    weight = torch.randn(4, 4, 3, 3, generator=gen)
    others = [torch.randn(4, 4, 1, 1, generator=gen), torch.randn(4, 4, generator=gen)]
    assert torch.equal(build_pattern_set([weight]), build_pattern_set([*others, weight]))


def test_build_is_deterministic(gen):
    weights = [torch.randn(8, 8, 3, 3, generator=gen)]
    assert torch.equal(build_pattern_set(weights), build_pattern_set([w.clone() for w in weights]))


@pytest.mark.parametrize("num_patterns", [0, 57, 2.5])
def test_bad_num_patterns(num_patterns):
    with pytest.raises(InvalidConfig, match="num_patterns"):
        build_pattern_set([], num_patterns)  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig):
        default_pattern_set(num_patterns)  # type: ignore[arg-type]


def test_nan_kernels_raise(gen):
    weight = torch.randn(2, 2, 3, 3, generator=gen)
    weight[1, 1, 1, 1] = float("inf")
    with pytest.raises(InvalidModel):
        build_pattern_set([weight])


@pytest.mark.parametrize("bad", [torch.zeros(0, 3, 3, dtype=torch.bool), torch.ones(2, 2, 2),
                                 torch.ones(1, 3, 3, dtype=torch.bool)])
def test_check_pattern_set_rejects_malformed(bad):
    with pytest.raises(InvalidConfig):
        check_pattern_set(bad)
