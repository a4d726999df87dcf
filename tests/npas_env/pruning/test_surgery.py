"""Filter-type surgery: shapes are kept and the pretrained weights are reused optimally."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from npas_env.errors import InvalidAction, InvalidPlan
from npas_env.plan import FilterType
from npas_env.pruning import (
    apply_filter_types,
    rank1_factors,
    replace_filter_type,
    to_conv1x1,
    to_dw_separable,
    to_skip,
)


def _conv(gen: torch.Generator, cin=4, cout=6, k=3, stride=1, padding=1, dilation=1, bias=True) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
        if bias:
            conv.bias.copy_(torch.randn(cout, generator=gen))
    return conv


CONFIGS = [dict(k=3, stride=1, padding=1), dict(k=3, stride=2, padding=1), dict(k=5, stride=1, padding=2),
           dict(k=3, stride=1, padding=2, dilation=2), dict(k=3, stride=2, padding=1, bias=False)]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("filter_type", [FilterType.CONV1X1, FilterType.DW_SEPARABLE])
def test_replacement_keeps_output_shape(cfg, filter_type, gen):
    conv = _conv(gen, **cfg)
    x = torch.randn(2, 4, 9, 9, generator=gen)
    new = replace_filter_type(conv, filter_type)
    assert new(x).shape == conv(x).shape


@pytest.mark.parametrize("cfg", CONFIGS)
def test_conv1x1_is_the_central_tap(cfg, gen):
    conv = _conv(gen, **cfg)
    new = to_conv1x1(conv)
    k = cfg["k"]
    assert new.kernel_size == (1, 1) and new.padding == (0, 0) and new.stride == conv.stride
    assert torch.equal(new.weight[:, :, 0, 0], conv.weight[:, :, k // 2, k // 2])
    center = torch.zeros(k, k)
    center[k // 2, k // 2] = 1
    x = torch.randn(1, 4, 9, 9, generator=gen)
    expected = F.conv2d(x, conv.weight * center, conv.bias, conv.stride, conv.padding, conv.dilation)
    assert torch.allclose(new(x), expected, atol=1e-5)


def test_conv1x1_keeps_groups(gen):
    conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
    new = to_conv1x1(conv)
    assert new.groups == 2 and new.weight.shape == (8, 2, 1, 1)


def test_conv1x1_needs_same_padding(gen):
    with pytest.raises(InvalidAction, match="same"):
        to_conv1x1(_conv(gen, padding=0))


@pytest.mark.parametrize("cfg", CONFIGS)
def test_dw_separable_is_best_rank1_per_channel(cfg, gen):
    conv = _conv(gen, **cfg)
    pair = to_dw_separable(conv)
    depthwise, pointwise = pair[0], pair[1]
    assert depthwise.groups == 4 and depthwise.bias is None
    assert depthwise.stride == conv.stride and depthwise.padding == conv.padding
    assert depthwise.dilation == conv.dilation and pointwise.kernel_size == (1, 1)
    # effective kernel of the pair: W'[o, i] = pw[o, i] * dw[i]
    effective = pointwise.weight[:, :, :, :] * depthwise.weight[:, 0][None]
    weight = conv.weight.detach()
    for i in range(weight.shape[1]):
        mat = weight[:, i].reshape(weight.shape[0], -1).double()
        s = torch.linalg.svdvals(mat)
        error = (mat - effective[:, i].reshape(mat.shape).double()).square().sum()
        assert torch.allclose(error, s[1:].square().sum(), rtol=1e-4, atol=1e-6)
    x = torch.randn(1, 4, 9, 9, generator=gen)
    expected = F.conv2d(x, effective, conv.bias, conv.stride, conv.padding, conv.dilation)
    assert torch.allclose(pair(x), expected, atol=1e-4)


def test_dw_separable_reproduces_rank1_kernels_exactly(gen):
    conv = _conv(gen, cin=3, cout=5)
    u, v = torch.randn(5, 3, generator=gen), torch.randn(3, 9, generator=gen)
    with torch.no_grad():
        conv.weight.copy_((u[:, :, None] * v[None]).reshape(5, 3, 3, 3))
    x = torch.randn(1, 3, 7, 7, generator=gen)
    assert torch.allclose(to_dw_separable(conv)(x), conv(x), atol=1e-4)


def test_rank1_factors_are_deterministic_with_fixed_sign(gen):
    weight = torch.randn(6, 4, 3, 3, generator=gen)
    dw1, pw1 = rank1_factors(weight)
    dw2, pw2 = rank1_factors(weight.clone())
    assert torch.equal(dw1, dw2) and torch.equal(pw1, pw2)
    flat = dw1.reshape(4, 9)
    assert (flat.gather(1, flat.abs().argmax(dim=1, keepdim=True)) > 0).all()


def test_dw_separable_needs_regular_conv():
    with pytest.raises(InvalidAction, match="groups"):
        to_dw_separable(nn.Conv2d(4, 4, 3, padding=1, groups=2))


def test_skip_is_identity_and_checked(gen):
    assert isinstance(to_skip(_conv(gen, cin=4, cout=4)), nn.Identity)
    with pytest.raises(InvalidAction, match="in == out"):
        to_skip(_conv(gen, cin=4, cout=6))
    with pytest.raises(InvalidAction, match="stride"):
        to_skip(_conv(gen, cin=4, cout=4, stride=2))


def test_non_conv_modules_are_rejected():
    with pytest.raises(InvalidAction, match="Conv2d"):
        replace_filter_type(nn.Linear(4, 4), FilterType.CONV1X1)


def test_apply_filter_types_works_on_a_copy(gen):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1),
                          nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)))
    new = apply_filter_types(model, {"0": "dw_separable", "1.0": FilterType.CONV1X1,
                                     "1.1": FilterType.SKIP})
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[1][1], nn.Conv2d)
    assert isinstance(new[0], nn.Sequential) and new[1][0].kernel_size == (1, 1)
    assert isinstance(new[1][1], nn.Identity)
    x = torch.randn(1, 3, 6, 6, generator=gen)
    assert new(x).shape == model(x).shape


def test_apply_filter_types_names_the_layer(gen):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(InvalidAction, match="'0'"):
        apply_filter_types(model, {"0": FilterType.SKIP})
    with pytest.raises(InvalidPlan, match="no submodule"):
        apply_filter_types(model, {"5": FilterType.SKIP})
