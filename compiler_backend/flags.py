"""Template copies with their run-time flags written in.

Kernel templates read the activation (``act``; ``eact`` for the expand part of ``exdw``) and
whether a residual is added (``hr``) from their parameter array, and test them at every store.
GCC does not unswitch loops that large, so the tests stay in the hot loops and split them into
many small blocks. Each template is instead emitted once per combination of flag values its
calls pass, with the values written in, and the tests fold away.

Same-process A/B, AMD Zen 4, 1 thread (``v_act`` fixed against the run-time switch):
ResNet-20 block 8x 139.3 -> 131.3 us, MobileNetV2 block 8x 553 -> 530 us, 4x 844 -> 808 us;
ResNet-20 unpruned unchanged (its tiles do far more FMAs per store).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

#: A template's read of a flag from its parameter array ``k``.
FLAG_READ = re.compile(r"\b(act|eact|hr) = k\[(\d+)\]")


def flag_slots(text: str) -> dict[str, int]:
    """Flag name -> its index in the parameter array, for each flag template ``text`` reads."""
    return {m.group(1): int(m.group(2)) for m in FLAG_READ.finditer(text)}


def copy_name(key: str, values: Mapping[str, int]) -> str:
    """Name of template ``key``'s copy for these flag values (``key`` itself without flags)."""
    return key + "".join(f"_{flag}{value}" for flag, value in values.items())


def call_values(text: str, args: Sequence[int]) -> dict[str, int]:
    """The flag values a call of template ``text`` with parameter array ``args`` passes."""
    return {flag: int(args[i]) for flag, i in flag_slots(text).items()}


def written_in(key: str, text: str, values: Mapping[str, int]) -> str:
    """Template ``key``'s C text renamed to its copy for ``values``, the flags constants."""
    text, n = re.subn(rf"\bvoid {re.escape(key)}\(", f"void {copy_name(key, values)}(", text,
                      count=1)
    if n != 1:
        raise ValueError(f"template {key!r} defines no function named {key!r}")
    return FLAG_READ.sub(lambda m: f"{m.group(1)} = {values[m.group(1)]}", text)
