from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from torch import nn

from npas_env.errors import EvaluatorNotFound, InvalidModel
from npas_env.layers import LayerKind, extract_layers, trace_model
from npas_env.zoo import MODELS, CifarResNet, build_model

_FAST_KW = {"vgg16": {"width_mult": 0.125}, "mobilenetv2": {"width_mult": 0.25}}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_forward_and_layers(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, **_FAST_KW.get(name, {}))
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 7)
    trace_model(model)
    layers = extract_layers(model, x[:1])
    assert layers[-1].kind is LayerKind.LINEAR and layers[-1].out_channels == 7
    assert layers[0].is_conv and layers[0].in_channels == 3
    for name_, mod in model.named_modules():  # BatchNorm follows every conv
        if isinstance(mod, nn.Sequential):
            kids = list(mod.children())
            for a, b in zip(kids, kids[1:], strict=False):
                if isinstance(a, nn.Conv2d):
                    assert isinstance(b, nn.BatchNorm2d), f"{name_}: conv without BN"


def test_full_size_param_counts() -> None:
    counts = {n: sum(p.numel() for p in build_model(n).parameters()) for n in MODELS}
    assert counts["resnet20"] == 272_474 and counts["resnet56"] == 855_770
    assert 14.5e6 < counts["vgg16"] < 15e6 and 2.1e6 < counts["mobilenetv2"] < 2.4e6
    assert counts["small_cnn"] < 20_000


def test_small_cnn_has_depthwise_and_pointwise() -> None:
    layers = extract_layers(build_model("small_cnn"), torch.zeros(1, 3, 32, 32))
    kinds = [s.kind for s in layers]
    assert kinds.count(LayerKind.DEPTHWISE) == 1 and sum(s.is_pointwise for s in layers) == 1
    assert len(layers) == 5


def test_resnet20_option_b_coupling() -> None:
    layers = extract_layers(build_model("resnet20"), torch.zeros(1, 3, 32, 32))
    assert len(layers) == 22  # 19 3x3 convs + 2 shortcut 1x1 convs + fc
    groups: dict[int | None, set[str]] = defaultdict(set)
    for s in layers:
        groups[s.coupled_group].add(s.name)
    stage_of = {g: {n.split(".")[0] for n in names} for g, names in groups.items() if g is not None}
    assert sorted(map(sorted, stage_of.values())) == [["conv1", "layer1"], ["layer2"], ["layer3"]]
    for stage in ("layer2", "layer3"):
        expected = {f"{stage}.{i}.conv2" for i in range(3)} | {f"{stage}.0.shortcut.0"}
        assert expected in groups.values()
    assert all(s.coupled_group is None for s in layers if s.name.endswith("conv1") and "." in s.name)
    assert not any(s.coupled_with_fixed for s in layers)


def test_mobilenetv2_depthwise_and_stride1_stem() -> None:
    model = build_model("mobilenetv2", width_mult=0.5)
    layers = extract_layers(model, torch.zeros(1, 3, 32, 32))
    dw = [s for s in layers if s.is_depthwise]
    assert len(dw) == 17 and all(s.kernel_size == (3, 3) for s in dw)
    assert layers[0].stride == (1, 1) and layers[0].output_hw == (32, 32)
    assert layers[-2].output_hw == (4, 4)
    assert any(s.coupled_group is not None for s in layers)  # inverted residuals


def test_unknown_model_and_bad_options() -> None:
    with pytest.raises(EvaluatorNotFound, match="did you mean 'resnet20'") as info:
        build_model("resnet2")
    assert info.value.kind == "model"
    with pytest.raises(InvalidModel, match="no_such_option"):
        build_model("resnet20", no_such_option=1)
    with pytest.raises(InvalidModel, match="num_classes"):
        build_model("small_cnn", num_classes=0)
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=21)
