"""Tests of NPAS phase 1 (replacing mobile-unfriendly operations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import fx, nn

from evaluators.accuracy.phase1 import phase1, replace_unfriendly_ops

torch.set_num_threads(1)


class Swish(nn.Module):  # a third-party style activation, matched by class name
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(ch, 2, 1), nn.Conv2d(2, ch, 1)
        self.act, self.gate = nn.SiLU(), nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class MobileBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.se = SqueezeExcite(4)
        self.swish = Swish()
        self.gelu = nn.GELU()
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.conv(x))
        x = self.swish(self.se(x))
        x = self.gelu(x) * x.sigmoid()
        return self.fc(x.mean((2, 3)))


def test_replace_modules_inside_se_blocks() -> None:
    model = MobileBlock()
    report = replace_unfriendly_ops(model, functions={})
    assert isinstance(report.model.se.gate, nn.Hardsigmoid)
    assert isinstance(report.model.se.act, nn.Hardswish)
    assert isinstance(report.model.swish, nn.Hardswish)
    assert isinstance(model.se.gate, nn.Sigmoid)  # the original is not modified
    assert {r.where for r in report.replaced} == {"se.act", "se.gate", "swish"}
    assert any(item.startswith("gelu (GELU)") for item in report.left)
    assert not report.traced


def test_replace_functional_calls_in_fx_graph() -> None:
    torch.manual_seed(0)
    model = MobileBlock().eval()
    report = replace_unfriendly_ops(model)
    assert report.traced and isinstance(report.model, fx.GraphModule)
    olds = sorted(r.old for r in report.replaced)
    assert "Tensor.sigmoid" in olds and "torch.nn.functional.silu" in olds
    targets = {n.target for n in report.model.graph.nodes if n.op == "call_function"}
    assert F.silu not in targets and torch.sigmoid not in targets
    assert F.hardswish in targets and F.hardsigmoid in targets
    assert report.model.get_submodule("se.gate").__class__ is nn.Hardsigmoid
    x = torch.randn(2, 1, 6, 6)
    assert report.model(x).shape == (2, 10)
    assert "replaced" in report.summary()


def test_swish_via_sigmoid_becomes_exact_hardswish() -> None:
    class Act(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(x)

    report = replace_unfriendly_ops(Act())
    x = torch.linspace(-5, 5, 101)
    assert torch.allclose(report.model(x), F.hardswish(x))


def test_custom_map_and_unknown_activation_reported() -> None:
    class Weird(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.clamp(min=0) ** 2

    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.GELU(), Weird())
    report = replace_unfriendly_ops(model, {nn.GELU: lambda m: nn.ReLU()})
    assert isinstance(report.model[1], nn.ReLU)
    assert report.left == ("2 (Weird): unknown parameter-free op, not rewritten",)


def test_phase1_finetunes_rewritten_model(context, data) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 10), nn.Sigmoid())
    result = phase1(model, data, epochs=1, max_train_batches=3)
    assert isinstance(result.model[1], nn.Hardswish) and isinstance(result.model[5], nn.Hardsigmoid)
    assert result.epochs == 1 and 0.0 <= result.accuracy_after <= 1.0
    untouched = phase1(context.model, data, epochs=1)
    assert untouched.epochs == 0 and untouched.accuracy_before == untouched.accuracy_after
