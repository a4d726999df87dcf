"""Structural properties, exact rates and magnitude order of every pruning scheme's mask."""

from __future__ import annotations

import math

import pytest
import torch

from npas_env.errors import InvalidAction, InvalidConfig, InvalidModel
from npas_env.plan import Scheme
from npas_env.pruning import DEFAULT_PATTERNS, keep_top_groups, prune_mask
from npas_env.search_space import NPAS_RATES

PATTERNS = DEFAULT_PATTERNS[:8]


def _kept(mask: torch.Tensor) -> int:
    return int(mask.sum())


def _assert_rate(mask: torch.Tensor, rate: float, group: float) -> None:
    """Kept count is within half a group of numel / rate (at least one group is kept)."""
    target = mask.numel() / rate
    assert abs(_kept(mask) - target) <= group / 2 + 1e-9 or (_kept(mask) <= group and target < group)


# ------------------------------------------------------------------------ keep_top_groups
def test_keep_top_groups_rounds_half_up_and_keeps_prefix():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.7])
    keep = keep_top_groups(scores, torch.ones(4, dtype=torch.long), 2.5)
    assert keep.tolist() == [False, True, True, True]


def test_keep_top_groups_keeps_at_least_one_group():
    keep = keep_top_groups(torch.tensor([1.0, 2.0]), torch.tensor([5, 5]), 0.1)
    assert keep.tolist() == [False, True]


def test_keep_top_groups_breaks_ties_by_index():
    keep = keep_top_groups(torch.ones(6), torch.ones(6, dtype=torch.long), 3)
    assert keep.tolist() == [True, True, True, False, False, False]


@pytest.mark.parametrize("target", [0.0, 7.0, 13.5, 40.0])
def test_keep_top_groups_fast_path_matches_stable_sort(target, gen):
    scores = torch.randint(0, 4, (40,), generator=gen).float()
    keep = keep_top_groups(scores, torch.ones(40, dtype=torch.long), target)
    count = min(max(math.floor(target + 0.5), 1), 40)
    expected = torch.zeros(40, dtype=torch.bool)
    expected[torch.argsort(scores, descending=True, stable=True)[:count]] = True
    assert torch.equal(keep, expected)


# ------------------------------------------------------------------------ all schemes
@pytest.mark.parametrize("scheme", ["unstructured", "filter", "pattern", "block_punched"])
def test_rate_one_and_dense_are_all_true(scheme, gen):
    weight = torch.randn(4, 3, 3, 3, generator=gen)
    assert prune_mask(weight, scheme, 1.0, (2, 2)).all()
    assert prune_mask(weight, Scheme.DENSE, 10.0).all()


@pytest.mark.parametrize("scheme", ["unstructured", "filter", "pattern", "block_punched", "block_based"])
def test_mask_is_deterministic_bool_of_weight_shape(scheme, gen):
    shape = (8, 4, 1, 1) if scheme == "block_based" else (8, 4, 3, 3)
    weight = torch.randn(*shape, generator=gen)
    first = prune_mask(weight, scheme, 3.0, (4, 2), pattern_set=PATTERNS)
    second = prune_mask(weight.clone(), scheme, 3.0, (4, 2), pattern_set=PATTERNS)
    assert first.dtype == torch.bool and first.shape == weight.shape
    assert torch.equal(first, second)


def test_equal_weights_give_exact_counts():
    weight = torch.ones(10, 10)
    assert _kept(prune_mask(weight, "unstructured", 3.0)) == 33


# ------------------------------------------------------------------------ unstructured
@pytest.mark.parametrize("rate", NPAS_RATES)
def test_unstructured_rate_and_magnitude_order(rate, gen):
    weight = torch.randn(7, 5, 3, 3, generator=gen)
    mask = prune_mask(weight, "unstructured", rate)
    assert _kept(mask) == math.floor(weight.numel() / rate + 0.5)
    if not mask.all():
        assert weight.abs()[mask].min() >= weight.abs()[~mask].max()


# ------------------------------------------------------------------------ filter
@pytest.mark.parametrize("rate", NPAS_RATES)
@pytest.mark.parametrize("shape", [(20, 3, 3, 3), (30, 12)])
def test_filter_prunes_whole_rows_by_l2(rate, shape, gen):
    weight = torch.randn(*shape, generator=gen)
    mask = prune_mask(weight, "filter", rate)
    rows = mask.reshape(shape[0], -1)
    assert (rows.all(dim=1) | ~rows.any(dim=1)).all(), "rows must be all kept or all pruned"
    _assert_rate(mask, rate, rows.shape[1])
    kept = rows.all(dim=1)
    norms = weight.reshape(shape[0], -1).norm(dim=1)
    if not kept.all():
        assert norms[kept].min() >= norms[~kept].max()


def test_filter_scores_override_norms(gen):
    weight = torch.randn(6, 4, generator=gen)
    scores = torch.tensor([0.0, 5.0, 1.0, 4.0, 2.0, 3.0])
    mask = prune_mask(weight, "filter", 2.0, filter_scores=scores)
    assert mask.all(dim=1).tolist() == [False, True, False, True, False, True]


def test_filter_keeps_one_filter_on_tiny_layers(gen):
    mask = prune_mask(torch.randn(2, 3, 3, 3, generator=gen), "filter", 10.0)
    assert mask.all(dim=(1, 2, 3)).sum() == 1


def test_filter_scores_shape_is_checked(gen):
    with pytest.raises(InvalidAction, match="filter_scores"):
        prune_mask(torch.randn(6, 4, generator=gen), "filter", 2.0, filter_scores=torch.ones(5))


# ------------------------------------------------------------------------ pattern
def _is_pattern(kernel: torch.Tensor, patterns: torch.Tensor) -> bool:
    return any(torch.equal(kernel, p) for p in patterns)


@pytest.mark.parametrize("rate", NPAS_RATES)
def test_pattern_kernels_are_patterns_removed_or_dense(rate, gen):
    weight = torch.randn(12, 10, 3, 3, generator=gen)
    mask = prune_mask(weight, "pattern", rate, pattern_set=PATTERNS)
    kernels = mask.reshape(-1, 3, 3)
    counts = kernels.reshape(-1, 9).sum(dim=1)
    for kernel, count in zip(kernels, counts.tolist(), strict=True):
        if count == 4:
            assert kernel[1, 1] and _is_pattern(kernel, PATTERNS)
        else:
            assert count in ((0,) if rate >= 2.25 else (9,)), f"kernel with {count} entries"
    group = 4 if rate >= 2.25 else 5
    if rate > 1.0:
        _assert_rate(mask, rate, group)


@pytest.mark.parametrize("rate", [r for r in NPAS_RATES if r >= 2.25])
def test_pattern_choice_and_connectivity_follow_magnitude(rate, gen):
    weight = torch.randn(12, 10, 3, 3, generator=gen)
    mask = prune_mask(weight, "pattern", rate, pattern_set=PATTERNS)
    energy = weight.reshape(-1, 9).square()
    best = (energy @ PATTERNS.reshape(-1, 9).float().T).max(dim=1).values
    kernels = mask.reshape(-1, 9)
    kept = kernels.any(dim=1)
    kept_energy = (energy * kernels).sum(dim=1)
    assert torch.allclose(kept_energy[kept], best[kept]), "each kept kernel uses its best pattern"
    if not kept.all():
        assert best[kept].min() >= best[~kept].max()


@pytest.mark.parametrize("rate", [2.0])
def test_pattern_below_2_25_patterns_least_lossy_kernels(rate, gen):
    weight = torch.randn(12, 10, 3, 3, generator=gen)
    mask = prune_mask(weight, "pattern", rate, pattern_set=PATTERNS)
    energy = weight.reshape(-1, 9).square()
    loss = energy.sum(dim=1) - (energy @ PATTERNS.reshape(-1, 9).float().T).max(dim=1).values
    patterned = mask.reshape(-1, 9).sum(dim=1) == 4
    assert patterned.any() and not patterned.all()
    assert loss[patterned].max() <= loss[~patterned].min()


def test_pattern_uses_only_given_set(gen):
    weight = torch.randn(6, 6, 3, 3, generator=gen)
    one = DEFAULT_PATTERNS[5:6]
    kernels = prune_mask(weight, "pattern", 3.0, pattern_set=one).reshape(-1, 3, 3)
    assert all(torch.equal(k, one[0]) for k in kernels if k.any())


@pytest.mark.parametrize("shape", [(4, 4, 5, 5), (4, 4, 1, 1), (8, 4)])
def test_pattern_needs_3x3(shape, gen):
    with pytest.raises(InvalidAction, match="3x3"):
        prune_mask(torch.randn(*shape, generator=gen), "pattern", 3.0)


def test_pattern_set_is_validated(gen):
    bad = torch.zeros(2, 3, 3, dtype=torch.bool)
    with pytest.raises(InvalidConfig, match="exactly 4"):
        prune_mask(torch.randn(4, 4, 3, 3, generator=gen), "pattern", 3.0, pattern_set=bad)


# ------------------------------------------------------------------------ block-punched
def _blocks(rows: int, cols: int, p: int, q: int):
    p, q = p or rows, q or cols
    for i in range(0, rows, p):
        for j in range(0, cols, q):
            yield slice(i, i + p), slice(j, j + q)


@pytest.mark.parametrize("rate", NPAS_RATES)
@pytest.mark.parametrize(("shape", "block"), [((8, 8, 3, 3), (4, 4)), ((10, 6, 3, 3), (4, 4)),
                                              ((8, 6, 5, 5), (2, 3)), ((8, 8, 1, 1), (4, 2)),
                                              ((6, 4, 3, 3), (0, 0)), ((6, 4, 3, 3), (1, 1))])
def test_block_punched_same_positions_per_block(rate, shape, block, gen):
    weight = torch.randn(*shape, generator=gen)
    mask = prune_mask(weight, "block_punched", rate, block)
    scores, kept_flags = [], []
    for rs, cs in _blocks(shape[0], shape[1], *block):
        sub = mask[rs, cs]
        assert (sub == sub[:1, :1]).all(), "all kernels of a block share kernel positions"
        scores.append(weight[rs, cs].norm(dim=(0, 1)).flatten())
        kept_flags.append(sub[0, 0].flatten())
    p, q = block[0] or shape[0], block[1] or shape[1]
    _assert_rate(mask, rate, p * q)
    score, kept = torch.cat(scores), torch.cat(kept_flags)
    if not kept.all():
        assert score[kept].min() >= score[~kept].max()


def test_block_punched_rejects_linear(gen):
    with pytest.raises(InvalidAction, match="block_based"):
        prune_mask(torch.randn(8, 8, generator=gen), "block_punched", 2.0, (4, 4))


# ------------------------------------------------------------------------ block-based
@pytest.mark.parametrize("rate", NPAS_RATES)
@pytest.mark.parametrize(("shape", "block"), [((12, 20), (4, 8)), ((10, 7), (4, 4)),
                                              ((16, 8, 1, 1), (8, 4)), ((6, 9), (0, 0))])
def test_block_based_rows_of_a_block_share_columns(rate, shape, block, gen):
    weight = torch.randn(*shape, generator=gen)
    mask = prune_mask(weight, "block_based", rate, block).reshape(shape[0], shape[1])
    matrix = weight.reshape(shape[0], shape[1])
    p = block[0] or shape[0]
    scores, kept_flags = [], []
    for i in range(0, shape[0], p):
        seg = mask[i:i + p]
        assert (seg == seg[:1]).all(), "rows of a block share kept columns"
        scores.append(matrix[i:i + p].norm(dim=0))
        kept_flags.append(seg[0])
    _assert_rate(mask, rate, p)
    score, kept = torch.cat(scores), torch.cat(kept_flags)
    if not kept.all():
        assert score[kept].min() >= score[~kept].max()


@pytest.mark.parametrize("rate", NPAS_RATES)
def test_block_based_both_axes_gives_outer_product_blocks(rate, gen):
    weight = torch.randn(16, 24, generator=gen)
    mask = prune_mask(weight, "block_based", rate, (4, 8), axis="both")
    for rs, cs in _blocks(16, 24, 4, 8):
        sub = mask[rs, cs]
        rows, cols = sub.any(dim=1), sub.any(dim=0)
        assert torch.equal(sub, rows[:, None] & cols[None, :]), "block = kept rows x kept columns"
    _assert_rate(mask, rate, 8)


@pytest.mark.parametrize("shape", [(4, 4, 3, 3), (4, 4, 5, 5)])
def test_block_based_rejects_kxk_conv(shape, gen):
    with pytest.raises(InvalidAction, match="block_punched"):
        prune_mask(torch.randn(*shape, generator=gen), "block_based", 2.0, (2, 2))


# ------------------------------------------------------------------------ validation
@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"scheme": "nope"}, InvalidAction, "unknown scheme"),
    ({"rate": 0.5}, InvalidAction, "rate"),
    ({"rate": float("nan")}, InvalidAction, "rate"),
    ({"scheme": "block_punched", "block_size": None}, InvalidAction, "block_size"),
    ({"scheme": "block_punched", "block_size": (-1, 2)}, InvalidAction, "block_size"),
    ({"axis": "rows"}, InvalidAction, "axis"),
])
def test_bad_arguments_raise(kwargs, error, match, gen):
    args = {"scheme": "unstructured", "rate": 2.0, "block_size": (2, 2), **kwargs}
    weight = torch.randn(4, 4, 3, 3, generator=gen)
    with pytest.raises(error, match=match):
        prune_mask(weight, args.pop("scheme"), args.pop("rate"), args.pop("block_size"), **args)


def test_nan_weight_is_an_invalid_model(gen):
    weight = torch.randn(4, 4, 3, 3, generator=gen)
    weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidModel, match="NaN"):
        prune_mask(weight, "unstructured", 2.0)


@pytest.mark.parametrize("weight", [torch.ones(4, 4, dtype=torch.long), torch.ones(4), [1.0, 2.0]])
def test_non_weight_inputs_raise(weight):
    with pytest.raises(InvalidAction):
        prune_mask(weight, "unstructured", 2.0)
