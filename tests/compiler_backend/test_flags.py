"""Template copies with the activation / residual flags written in (``compiler_backend.flags``)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler_backend import compile_model
from compiler_backend.flags import call_values, copy_name, flag_slots, written_in

from .test_fastpaths import _ref

TEMPLATE = """static void sk_x(int tid, const int* k) {
  const int nblk = k[3], act = k[5], hr = k[6];
  const int eact = k[7];
  use(v_act(y, act), hr, eact);
}
"""


def test_flag_slots_and_copy_text() -> None:
    assert flag_slots(TEMPLATE) == {"act": 5, "hr": 6, "eact": 7}
    values = call_values(TEMPLATE, [9, 9, 9, 9, 9, 2, 1, 3])
    assert values == {"act": 2, "hr": 1, "eact": 3}
    name = copy_name("sk_x", values)
    assert name == "sk_x_act2_hr1_eact3"
    text = written_in("sk_x", TEMPLATE, values)
    assert f"static void {name}(int tid" in text
    assert "nblk = k[3], act = 2, hr = 1;" in text and "eact = 3;" in text
    assert copy_name("pad", call_values("void pad(const int* k) { int n = k[0]; }", [4])) == "pad"
    with pytest.raises(ValueError, match="defines no function"):
        written_in("other", TEMPLATE, values)


class Acts(nn.Module):
    """Four convs of one shape (one kernel template), each with another activation, and a
    residual add into the last."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1)
        self.c = nn.ModuleList(nn.Conv2d(16, 16, 3, 1, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        b = self.c[0](a)
        c = F.relu(self.c[1](b))
        d = F.relu6(self.c[2](c))
        return F.hardswish(self.c[3](d) + b)


@pytest.mark.parametrize("threads", [1, 2])
def test_each_activation_and_residual_gets_its_copy(threads: int, compiler_cache) -> None:
    torch.manual_seed(0)
    model = Acts().eval()
    gen = torch.Generator().manual_seed(2)
    masks = {f"c.{i}": (torch.rand(16 // 8, 1, 3, 3, generator=gen) < 0.5).repeat(8, 16, 1, 1)
             for i in range(4)}
    x = torch.randn(2, 3, 12, 16)
    cm = compile_model(model, x, masks, threads=threads, cache_dir=compiler_cache, verify=False)
    got, want = cm(x), _ref(model, masks, x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    src = cm.program.source
    assert not re.search(r"\b(act|eact|hr) = k\[", src)  # every flag is written in
    copies = set(re.findall(r"void \w+?_act(\d)_hr(\d)\w*\(", src))
    assert {("0", "0"), ("1", "0"), ("2", "0"), ("3", "1")} <= copies
