"""Padded-layout decisions (``layout.plan_padded``) on MobileNet-style tails."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_backend import compile_model
from compiler_backend.compile import lower_model
from compiler_backend.ir import ConvOp
from compiler_backend.layout import plan_padded

LANES = 16  # the decision under test is made for 16-lane vectors, whatever this host has


class _TinyTail(nn.Module):
    """A 4x4-map residual inverted block, then a second block reading its output: a
    MobileNetV2 tail (features.17-19) in small."""

    def __init__(self, c: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 1, 1)
        self.e1, self.d1, self.p1 = (nn.Conv2d(c, hidden, 1), nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden),
                                     nn.Conv2d(hidden, c, 1))
        self.e2, self.d2, self.p2 = (nn.Conv2d(c, hidden, 1), nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden),
                                     nn.Conv2d(hidden, 2 * c, 1))
        self.fc = nn.Linear(2 * c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = x + self.p1(F.relu6(self.d1(F.relu6(self.e1(x)))))
        y = self.p2(F.relu6(self.d2(F.relu6(self.e2(x)))))
        return self.fc(y.mean((2, 3)))


@pytest.mark.parametrize("threads", [1, 2])
def test_a_depthwise_output_read_only_by_a_gathering_pointwise_conv_stays_plain(threads: int) -> None:
    """On a 4x4 map a pointwise conv copies a padded input into per-tap planes
    (``gathers_taps``) and crops its output, so padding the depthwise output costs a copy and
    saves nothing. Before generator v41 the depthwise output and the block output kept each
    other padded at 2 threads (MobileNetV2 block 8x: a copy and a crop pass per tail block)."""
    torch.manual_seed(0)
    graph = lower_model(_TinyTail().eval(), torch.randn(1, 3, 4, 4))
    convs = {op.name: op for op in graph.ops if isinstance(op, ConvOp)}
    padded = plan_padded(graph, LANES, threads)
    assert convs["e1"].dst in padded and convs["e2"].dst in padded  # the depthwise inputs
    assert convs["d1"].dst not in padded and convs["p1"].dst not in padded


def test_a_thin_expand_conv_reads_its_input_plain() -> None:
    """A padded 4x4 input would cost the expand conv a copy and a crop of its padded output
    (it stores that by rows from a plain input); its few junk columns were the only cost
    counted before generator v41, and the stem's crop outweighed them."""
    graph = lower_model(_TinyTail(c=8, hidden=16).eval(), torch.randn(1, 3, 4, 4))
    convs = {op.name: op for op in graph.ops if isinstance(op, ConvOp)}
    padded = plan_padded(graph, LANES, 1)
    assert convs["stem"].dst not in padded and convs["e1"].dst in padded


@pytest.mark.parametrize("threads", [1, 2])
def test_tiny_tail_matches_torch(threads: int, compiler_cache) -> None:
    torch.manual_seed(0)
    net = _TinyTail().eval()
    x = torch.randn(2, 3, 4, 4)
    cm = compile_model(net, x, threads=threads, cache_dir=compiler_cache)
    with torch.no_grad():
        ref = net(x)
    assert torch.allclose(cm.run(x), ref, rtol=1e-4, atol=1e-5)
