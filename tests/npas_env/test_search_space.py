from __future__ import annotations

import numpy as np
import pytest

from npas_env import (
    FilterType,
    InvalidAction,
    InvalidConfig,
    LayerAction,
    Scheme,
    SearchSpace,
    extract_layers,
)


@pytest.fixture
def layers(tiny_net, example_input):
    return {s.name: s for s in extract_layers(tiny_net, example_input)}


def _allowed(space, mask, dim):
    off = int(np.sum(space.nvec[:dim]))
    return np.flatnonzero(mask[off:off + space.nvec[dim]]).tolist()


def test_mask_rules_per_layer_type(layers):
    space = SearchSpace()
    pattern = space.schemes.index(Scheme.PATTERN)
    block_based = space.schemes.index(Scheme.BLOCK_BASED)
    conv3 = space.action_mask(layers["block1.conv1"])
    assert pattern in _allowed(space, conv3, 1)
    assert block_based not in _allowed(space, conv3, 1)
    fc = space.action_mask(layers["fc"])
    assert pattern not in _allowed(space, fc, 1) and block_based in _allowed(space, fc, 1)
    assert _allowed(space, fc, 0) == [0]  # only KEEP for Linear
    dw = space.action_mask(layers["dw"])
    assert _allowed(space, dw, 2) == [space.rates.index(1.0)]  # depthwise stays dense
    conv5 = space.action_mask(layers["conv5"])
    assert pattern not in _allowed(space, conv5, 1)
    skip = space.filter_types.index(FilterType.SKIP)
    assert skip in _allowed(space, conv3, 0) and skip not in _allowed(space, space.action_mask(layers["stem"]), 0)


def test_block_sizes_must_divide_the_layer(layers):
    space = SearchSpace()
    stem_blocks = [space.block_sizes[i] for i in _allowed(space, space.action_mask(layers["stem"]), 3)]
    assert (4, 16) not in stem_blocks and (0, 0) in stem_blocks  # 3 input channels
    assert all(b[1] in (0, 1, 3) for b in stem_blocks)


def test_coupled_layers_follow_the_first_filter_decision(layers):
    space = SearchSpace()
    first = LayerAction(Scheme.FILTER, 2.0)
    decided = [(layers["stem"], first)]
    mask = space.action_mask(layers["block1.conv2"], decided)
    assert _allowed(space, mask, 1) == [space.schemes.index(Scheme.FILTER)]
    assert _allowed(space, mask, 2) == [space.rates.index(2.0)]
    other = [(layers["stem"], LayerAction(Scheme.UNSTRUCTURED, 2.0))]
    mask = space.action_mask(layers["block1.conv2"], other)
    assert space.schemes.index(Scheme.FILTER) not in _allowed(space, mask, 1)


def test_decode_canonicalizes(layers):
    space = SearchSpace()
    f1x1, pattern, punched = (space.filter_types.index(FilterType.CONV1X1),
                              space.schemes.index(Scheme.PATTERN), space.schemes.index(Scheme.BLOCK_PUNCHED))
    rate5 = space.rates.index(5.0)
    a = space.decode(layers["block1.conv1"], [f1x1, pattern, rate5, 4])
    assert a.scheme is Scheme.UNSTRUCTURED and a.filter_type is FilterType.CONV1X1 and a.block_size is None
    b = space.decode(layers["block1.conv1"], [f1x1, punched, rate5, 4])
    assert b.scheme is Scheme.BLOCK_BASED and b.block_size == space.block_sizes[4]
    dense = space.decode(layers["block1.conv1"], [0, punched, space.rates.index(1.0), 4])
    assert dense.is_dense and dense.block_size is None
    assert np.array_equal(space.encode(a), [f1x1, space.schemes.index(Scheme.UNSTRUCTURED), rate5, 0])


def test_decode_rejects_bad_actions(layers):
    space = SearchSpace()
    with pytest.raises(InvalidAction, match="out of range"):
        space.decode(layers["fc"], [0, 0, 99, 0])
    with pytest.raises(InvalidAction, match="4 integers"):
        space.decode(layers["fc"], [0, 0])
    with pytest.raises(InvalidAction, match="masked"):
        space.decode(layers["fc"], [0, space.schemes.index(Scheme.PATTERN), 1, 0])


def test_search_space_validates():
    with pytest.raises(InvalidConfig):
        SearchSpace(rates=(2.0, 3.0))
    with pytest.raises(InvalidConfig):
        SearchSpace(num_patterns=40)
    with pytest.raises(InvalidConfig):
        SearchSpace(filter_types=(FilterType.SKIP,))
    small = SearchSpace(filter_types=(FilterType.KEEP,), schemes=(Scheme.UNSTRUCTURED,))
    assert small.nvec.tolist() == [1, 1, 7, 7]
