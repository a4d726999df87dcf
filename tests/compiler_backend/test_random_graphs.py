"""Random small CNN graphs, compiled whole and run against PyTorch.

Each seed builds a graph no zoo model has: convs of kernel 1-7, stride 1-2, grouped and
depthwise, pruned by every scheme; BatchNorms that cannot fold; activations; pools; adds and
concats of earlier maps; squeeze-excite gates; odd map sizes down to 1x1. A 600-seed run of
the same generator found no mismatch at generator v39; these seeds keep it that way.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_backend import compile_model
from npas_env.pruning import prune_mask

ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
    "sigmoid": torch.sigmoid}
Shape = tuple[int, int, int]


def _batchnorm(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    bn.running_mean = torch.empty(c).uniform_(-1, 1)
    bn.running_var = torch.empty(c).uniform_(0.2, 2)
    with torch.no_grad():
        bn.weight.uniform_(-2, 2)
        bn.bias.uniform_(-1, 1)
    return bn


class RandomNet(nn.Module):
    """``steps`` random ops, each reading the last map or (30 %) an earlier one."""

    def __init__(self, rng: random.Random, shape: Shape, steps: int) -> None:
        super().__init__()
        self.mods = nn.ModuleList()
        self.prog: list[tuple[str, int, int, str]] = []  # (kind, module, input, act / other)
        shapes = [shape]
        for _ in range(steps):
            i = rng.randrange(len(shapes)) if rng.random() < 0.3 else len(shapes) - 1
            out = self._add_step(rng, i, shapes)
            if out is not None:
                shapes.append(out)
        self.fc = nn.Linear(shapes[-1][0], 5) if rng.random() < 0.5 else None

    def _module(self, kind: str, mod: nn.Module, i: int, extra: str) -> None:
        self.mods.append(mod)
        self.prog.append((kind, len(self.mods) - 1, i, extra))

    def _add_step(self, rng: random.Random, i: int, shapes: list[Shape]) -> Shape | None:
        c, h, w = shapes[i]
        act = rng.choice(list(ACTS))
        kind = rng.choice(["conv", "conv", "conv", "dw", "bn", "act", "pool", "add", "cat", "se"])
        if kind in ("conv", "dw"):
            k, s = rng.choice([1, 3, 3, 5, 7]), rng.choice([1, 1, 2])
            p = rng.choice([k // 2, k // 2, 0])
            if min(h, w) + 2 * p < k:
                return None
            if kind == "dw":
                g, co = c, c * rng.choice([1, 1, 2])
            else:
                co = rng.choice([1, 3, 8, 16, 17, 24, 32])
                g = rng.choice([d for d in (1, 2, 4) if c % d == 0 and co % d == 0])
            self._module("mod", nn.Conv2d(c, co, k, s, p, groups=g, bias=rng.random() < 0.5), i, act)
            return co, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if kind == "bn":
            self._module("mod", _batchnorm(c), i, act)
            return c, h, w
        if kind == "act":
            self.prog.append(("act", -1, i, act))
            return c, h, w
        if kind == "pool":
            if min(h, w) < 2:
                return None
            pool = rng.choice([nn.MaxPool2d(2), nn.AvgPool2d(2), nn.MaxPool2d(3, 2, 1),
                               nn.AvgPool2d(3, 1, 1)])
            self._module("mod", pool, i, "none")
            return tuple(pool(torch.zeros(1, c, h, w)).shape[1:])  # type: ignore[return-value]
        if kind == "se":
            self._module("se", nn.Conv2d(c, max(1, c // 4), 1), i, "")
            self.mods.append(nn.Conv2d(max(1, c // 4), c, 1))
            return c, h, w
        fits = [j for j, sh in enumerate(shapes)
                if j != i and (sh == (c, h, w) if kind == "add" else sh[1:] == (h, w))]
        if not fits:
            return None
        j = rng.choice(fits)
        self.prog.append((kind, j, i, act))
        return (c, h, w) if kind == "add" else (c + shapes[j][0], h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [x]
        for kind, m, i, extra in self.prog:
            t = maps[i]
            if kind == "mod":
                t = ACTS[extra](self.mods[m](t))
            elif kind == "act":
                t = ACTS[extra](t)
            elif kind == "add":
                t = ACTS[extra](t + maps[m])
            elif kind == "cat":
                t = torch.cat([t, maps[m]], 1)
            else:  # squeeze-excite
                gate = self.mods[m + 1](F.relu(self.mods[m](F.adaptive_avg_pool2d(t, 1))))
                t = t * torch.sigmoid(gate)
            maps.append(t)
        y = maps[-1]
        return y if self.fc is None else self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def random_case(seed: int) -> tuple[RandomNet, torch.Tensor, dict[str, torch.Tensor]]:
    """The net, its input and its masks for ``seed`` (masked weights zeroed)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    shape = (rng.choice([1, 3, 4]), rng.randint(1, 34), rng.randint(1, 34))
    net = RandomNet(rng, shape, rng.randint(2, 16)).eval()
    masks = {}
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and m.out_channels >= 8 and rng.random() < 0.6:
            three = m.kernel_size == (3, 3) and m.groups == 1
            scheme = rng.choice(["block", "unstructured", "pattern"] if three else
                                ["block", "unstructured"])
            if scheme == "block":
                scheme = "block_punched" if m.kernel_size != (1, 1) else "block_based"
            masks[name] = prune_mask(m.weight, scheme, rng.choice([2.0, 4.0, 8.0]), (8, 16))
            with torch.no_grad():
                m.weight.mul_(masks[name].float())
    return net, torch.randn(rng.choice([1, 1, 2]), *shape), masks


#: Seeds 5, 188, 596 and 830 between them lower to every op kind, fusion (affine chains and
#: residuals, conv residuals), kernel size, grouped / depthwise / stride-2 / masked conv, pool,
#: fallback and batch 2 that seeds 0-1499 lower to (not all of it reaches the output: seed 5's
#: affine residual feeds nothing the output reads; ``test_compile.py`` checks that fusion); the
#: rest are arbitrary.
SEEDS = (5, 188, 596, 830, *range(1000, 1012))


@pytest.mark.parametrize("seed", SEEDS)
def test_random_graph_matches_torch(seed: int, compiler_cache) -> None:
    net, x, masks = random_case(seed)
    with torch.no_grad():
        ref = net(x)
    for threads in (1, 2):
        cm = compile_model(net, x, masks, threads=threads, cache_dir=compiler_cache)
        err = float((cm.run(x) - ref).abs().max() / (ref.abs().max() + 1e-6))
        assert err < 1e-4, (threads, net.prog)
