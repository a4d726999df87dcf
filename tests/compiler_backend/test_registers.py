"""Generated kernels keep their accumulators in registers: on x86 no FMA reads the stack.

Session 32 found two ways the AVX2 code lost this: a partial-store helper going through a stack
copy (gcc then kept every accumulator of the calling kernel in memory: MobileNetV2's 8x8
expand convs ran at 25 GFLOP/s instead of 77) and a tile needing 19 of the 16 registers. Both
showed as FMAs with a stack operand in the library's disassembly.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest
import torch

from compiler_backend import compile_model
from compiler_backend.compile import resolve_isa
from npas_env.zoo import build_model

from .lanes import EIGHT_LANES
from .test_zoo_equality import _block_masks

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or shutil.which("objdump") is None,
    reason="reads x86 disassembly (objdump)")

FMA_FROM_STACK = re.compile(r"vfn?m(?:add|sub)\w*\s+-?0x[0-9a-f]+\(%rsp\)")


def stack_fmas(library: str) -> dict[str, int]:
    """Function name -> FMAs reading a stack operand, from ``objdump -d``."""
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", library], capture_output=True,
                          text=True, check=True).stdout
    found = {}
    for fn in re.finditer(r"<(\w+)>:\n(.*?)(?:\n\n|\Z)", text, re.S):
        n = len(FMA_FROM_STACK.findall(fn.group(2)))
        if n:
            found[fn.group(1)] = n
    return found


@pytest.mark.parametrize("isa", sorted({resolve_isa().name, EIGHT_LANES}))
@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "block4x"])
def test_no_kernel_fma_reads_the_stack(isa: str, pruned: bool, compiler_cache) -> None:
    """MobileNetV2 (every kernel family its blocks take: expand tiles storing rows into padded
    and phase-split buffers, depthwise bands and planes, 2 x 6 tiles at block 4x on AVX2),
    dense and block 4x, on the host's ISA and on AVX2."""
    torch.manual_seed(0)
    model = build_model("mobilenetv2").eval()
    masks = _block_masks(model) if pruned else None
    cm = compile_model(model, torch.randn(1, 3, 32, 32), masks, isa=isa, verify=False,
                       cache_dir=compiler_cache)
    assert stack_fmas(str(cm.artifact.path)) == {}
