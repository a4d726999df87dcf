from __future__ import annotations

import pytest
import torch
from torch import nn

from npas_env import InvalidModel, LayerKind, analyze_model, extract_layers, layers_fingerprint


def test_extract_layers_describes_every_layer(tiny_net, example_input):
    layers = extract_layers(tiny_net, example_input)
    names = [s.name for s in layers]
    assert names == ["stem", "block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2",
                     "dw", "pw", "conv5", "fc"]
    by_name = {s.name: s for s in layers}
    assert by_name["dw"].kind is LayerKind.DEPTHWISE and by_name["dw"].stride == (2, 2)
    assert by_name["dw"].output_hw == (8, 8) and by_name["dw"].input_hw == (16, 16)
    assert by_name["conv5"].kernel_size == (5, 5)
    assert by_name["fc"].kind is LayerKind.LINEAR and by_name["fc"].in_channels == 32
    assert by_name["stem"].macs == 16 * 3 * 9 * 16 * 16
    assert by_name["fc"].macs == 32 * 10
    assert by_name["pw"].params == 16 * 32 + 32
    assert [s.index for s in layers] == list(range(len(layers)))


def test_residual_outputs_are_coupled(tiny_net, example_input):
    by_name = {s.name: s for s in extract_layers(tiny_net, example_input)}
    group = by_name["stem"].coupled_group
    assert group is not None
    assert by_name["block1.conv2"].coupled_group == group == by_name["block2.conv2"].coupled_group
    assert by_name["block1.conv1"].coupled_group is None
    assert by_name["fc"].coupled_group is None


def test_concat_couples_and_input_join_marks_fixed():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 4, 1)
            self.b = nn.Conv2d(3, 4, 1)
            self.c = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return torch.cat([self.a(x), self.b(x)], 1), self.c(x) + x

    layers = {s.name: s for s in extract_layers(Net(), torch.randn(1, 3, 4, 4))}
    assert layers["a"].coupled_group == layers["b"].coupled_group is not None
    assert layers["c"].coupled_with_fixed and not layers["a"].coupled_with_fixed


def test_grouped_conv_and_linear_after_flatten():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    layers = extract_layers(model, torch.randn(2, 4, 6, 6))
    assert layers[0].kind is LayerKind.GROUPED and layers[0].weight_shape == (8, 2, 3, 3)
    assert layers[1].kind is LayerKind.LINEAR and layers[1].in_channels == 128


def test_untraceable_model_names_the_module():
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    model = nn.Sequential(nn.Conv2d(3, 3, 1), Branchy())
    with pytest.raises(InvalidModel, match=r"'1'.*Branchy.*leaf_modules"):
        extract_layers(model, torch.randn(1, 3, 4, 4))
    layers = extract_layers(model, torch.randn(1, 3, 4, 4), leaf_modules=["1"])
    assert [s.name for s in layers] == ["0"]


def test_mismatched_example_input_is_clear(tiny_net):
    with pytest.raises(InvalidModel, match="does not fit"):
        extract_layers(tiny_net, torch.randn(1, 5, 16, 16))
    with pytest.raises(InvalidModel, match="torch.Tensor"):
        extract_layers(tiny_net, [1, 2, 3])  # type: ignore[arg-type]


def test_unsupported_layers_are_reported_and_left_out():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(2), nn.Conv1d(4, 4, 1))
    with pytest.warns(UserWarning, match="Conv1d"):
        graph = analyze_model(model, torch.randn(1, 3, 4, 4))
    assert [s.name for s in graph.layers] == ["0"] and graph.unsupported == ["2 (Conv1d)"]


def test_fingerprint_depends_on_structure(tiny_net, example_input):
    a = layers_fingerprint(extract_layers(tiny_net, example_input))
    b = layers_fingerprint(extract_layers(tiny_net, torch.randn(1, 3, 32, 32)))
    assert a != b and len(a) == 16
