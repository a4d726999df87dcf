"""Filter-type surgery: replace a kxk conv by a 1x1 conv, a depthwise-separable pair or identity.

These are the NPAS architecture choices (:class:`~npas_env.plan.FilterType`). Every replacement
keeps the layer's input and output shapes and is initialised from the pretrained weights:

* ``CONV1X1``: a 1x1 conv (same stride and groups, padding 0) holding the central tap.
* ``DW_SEPARABLE``: depthwise kxk (same stride / padding / dilation) followed by pointwise 1x1,
  set from a rank-1 SVD of each input channel's slice so their product is the best rank-1
  approximation of the pretrained kernel.
* ``SKIP``: ``nn.Identity()``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import cast

import torch
from torch import nn

from npas_env.errors import InvalidAction, InvalidPlan
from npas_env.plan import FilterType


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d size attribute (typed ``tuple[int, ...]``, always a pair at runtime)."""
    return cast("tuple[int, int]", value)


def _is_same_padding(conv: nn.Conv2d) -> bool:
    if conv.padding == "same":
        return True
    if isinstance(conv.padding, str):  # "valid"
        return tuple(conv.kernel_size) == (1, 1)
    return all(2 * p == d * (k - 1) for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size, strict=True))


def _require_conv(module: nn.Module, what: str) -> nn.Conv2d:
    if not isinstance(module, nn.Conv2d):
        raise InvalidAction(f"filter type {what} needs an nn.Conv2d, got {type(module).__name__}")
    return module


def to_conv1x1(conv: nn.Conv2d) -> nn.Conv2d:
    """A 1x1 conv (same stride, groups; padding 0) initialised with the central tap of ``conv``.

    Raises:
        InvalidAction: ``conv`` is not a Conv2d or its padding is not "same" (the output size would
            change).
    """
    conv = _require_conv(conv, FilterType.CONV1X1.value)
    if not _is_same_padding(conv):
        raise InvalidAction(f"1x1 replacement keeps the output size only for 'same' padding; got "
                            f"kernel {conv.kernel_size}, padding {conv.padding}, dilation {conv.dilation}")
    weight = conv.weight
    new = nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=_pair(conv.stride), padding=0,
                    groups=conv.groups, bias=conv.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    kh, kw = conv.kernel_size
    with torch.no_grad():
        new.weight.copy_(weight[:, :, kh // 2, kw // 2, None, None])
        if conv.bias is not None:
            assert new.bias is not None  # built with bias=True
            new.bias.copy_(conv.bias)
    return new.train(conv.training)


def rank1_factors(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-1 split of each input channel of a conv weight [P, Q, kh, kw].

    For each input channel i, ``W[:, i]`` seen as a P x (kh*kw) matrix is approximated by
    ``s u v^T`` (its top singular triple). Signs are fixed so the largest-|.| entry of v is
    positive, which makes the result deterministic.

    Returns:
        (depthwise [Q, 1, kh, kw] = sqrt(s) v, pointwise [P, Q, 1, 1] = sqrt(s) u), in the
        weight's dtype.
    """
    out_ch, in_ch, kh, kw = weight.shape
    mats = weight.detach().double().permute(1, 0, 2, 3).reshape(in_ch, out_ch, kh * kw)
    u, s, vh = torch.linalg.svd(mats, full_matrices=False)
    u1, s1, v1 = u[:, :, 0], s[:, 0], vh[:, 0, :]  # [Q, P], [Q], [Q, kk]
    pivot = v1.gather(1, v1.abs().argmax(dim=1, keepdim=True))
    sign = torch.where(pivot < 0, -1.0, 1.0).to(v1.dtype)
    root = s1.sqrt()[:, None]
    depthwise = (sign * root * v1).reshape(in_ch, 1, kh, kw)
    pointwise = (sign * root * u1).T.reshape(out_ch, in_ch, 1, 1)
    return depthwise.to(weight.dtype), pointwise.to(weight.dtype)


def to_dw_separable(conv: nn.Conv2d) -> nn.Sequential:
    """Depthwise kxk + pointwise 1x1 pair approximating ``conv`` (rank-1 per input channel).

    Index 0 is the depthwise conv (no bias), index 1 the pointwise conv (carries the bias).

    Raises:
        InvalidAction: ``conv`` is not a regular (groups == 1) Conv2d.
    """
    conv = _require_conv(conv, FilterType.DW_SEPARABLE.value)
    if conv.groups != 1:
        raise InvalidAction(f"depthwise-separable replacement needs a regular conv (groups=1), got "
                            f"groups={conv.groups}")
    weight = conv.weight
    kwargs = {"device": weight.device, "dtype": weight.dtype}
    padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
    depthwise = nn.Conv2d(conv.in_channels, conv.in_channels, _pair(conv.kernel_size),
                          stride=_pair(conv.stride), padding=padding, dilation=_pair(conv.dilation),
                          groups=conv.in_channels,
                          bias=False, padding_mode=conv.padding_mode, **kwargs)
    pointwise = nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None, **kwargs)
    dw_weight, pw_weight = rank1_factors(weight)
    with torch.no_grad():
        depthwise.weight.copy_(dw_weight)
        pointwise.weight.copy_(pw_weight)
        if conv.bias is not None:
            assert pointwise.bias is not None  # built with bias=True
            pointwise.bias.copy_(conv.bias)
    return nn.Sequential(depthwise, pointwise).train(conv.training)


def to_skip(conv: nn.Conv2d) -> nn.Identity:
    """Identity replacing ``conv``; only valid where the conv keeps the tensor shape.

    Raises:
        InvalidAction: in != out channels, stride != 1 or the padding is not "same".
    """
    conv = _require_conv(conv, FilterType.SKIP.value)
    if conv.in_channels != conv.out_channels or tuple(conv.stride) != (1, 1) or not _is_same_padding(conv):
        raise InvalidAction(f"skip needs in == out channels, stride 1 and 'same' padding; got "
                            f"{conv.in_channels}->{conv.out_channels}, stride {conv.stride}, "
                            f"padding {conv.padding}")
    return nn.Identity()


def replace_filter_type(module: nn.Module, filter_type: FilterType | str) -> nn.Module:
    """The replacement module for ``filter_type`` (KEEP returns ``module`` itself)."""
    filter_type = FilterType(filter_type)
    if filter_type is FilterType.KEEP:
        return module
    if filter_type is FilterType.CONV1X1:
        return to_conv1x1(module)  # type: ignore[arg-type]
    if filter_type is FilterType.DW_SEPARABLE:
        return to_dw_separable(module)  # type: ignore[arg-type]
    return to_skip(module)  # type: ignore[arg-type]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at qualified ``name`` (e.g. ``"layer1.0.conv1"``) in place."""
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
        model.get_submodule(name)
    except AttributeError:
        raise InvalidPlan(f"model has no submodule {name!r}") from None
    setattr(parent, child, module)


def apply_filter_types(model: nn.Module, filter_types: Mapping[str, FilterType | str]) -> nn.Module:
    """A deep copy of ``model`` with the named convs replaced by their filter type.

    Args:
        model: the original model (not modified).
        filter_types: qualified module name -> filter type; KEEP entries are no-ops.

    Returns:
        The modified copy.

    Raises:
        InvalidPlan: a name does not exist in the model.
        InvalidAction: a filter type does not fit its module.
    """
    new = copy.deepcopy(model)
    for name, filter_type in filter_types.items():
        if FilterType(filter_type) is FilterType.KEEP:
            continue
        try:
            old = new.get_submodule(name)
        except AttributeError:
            raise InvalidPlan(f"model has no submodule {name!r}") from None
        try:
            replacement = replace_filter_type(old, filter_type)
        except InvalidAction as exc:
            raise InvalidAction(f"layer {name!r}: {exc}") from None
        set_submodule(new, name, replacement)
    return new
