"""Split-K at two threads: a pointwise conv over channels each thread wrote half of.

At two threads a depthwise step (``exdw``, or the masked depthwise kernel) splits its
channels: thread 0 writes one half of the expanded tensor, thread 1 the other. The pointwise
(projection) conv reading it splits its output rows, so each thread reads every input channel,
half of them from the other core's cache: on MobileNetV2's 8x8 blocks 288-576 channels of 64
pixels against 64-160 output channels. Here each thread instead runs the conv over the input
channels it wrote itself (a partial conv of all output rows: thread 0's adds the bias and the
residual into the output, thread 1's goes to a scratch map), and a second step adds the
scratch into the output, each thread over half of the output channels. What crosses the cores
is half of the output, not half of the input.

Only on maps of at most ``MAX_PIXELS`` pixels: the second step and the partial conv's extra
output stores cost more than they save on larger ones. MobileNetV2 at 2 threads, AMD Zen 4
under AVX2, same process, rotated rounds (C driver, threads pinned, placed near): block 4x 559
-> 502 us, block 8x 332 -> 308 us; with 16x16 maps too 505 -> 549 and 312 -> 319 (one run).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from compiler_backend.heuristics import is_pointwise
from compiler_backend.ir import ConvOp

#: Largest output map (pixels) a split-K conv may have.
MAX_PIXELS = 64


def eligible(op: ConvOp, first: np.ndarray | None) -> bool:
    """Whether ``op`` runs split-K: a pointwise conv without activation (the two partial sums
    add up to the output) on a small map, whose input's channels ``first`` (those thread 0
    wrote; None: unknown) and the rest both feed it."""
    if first is None or op.act is not None or op.groups != 1 or not is_pointwise(op):
        return False
    _, oh, ow = op.out_shape
    used = first[np.flatnonzero(op.kept.any(axis=(0, 2, 3)))]  # thread 0 wrote it, per input
    return oh * ow <= MAX_PIXELS and bool(used.any()) and not bool(used.all())


def halves(op: ConvOp, first: np.ndarray, scratch: int) -> tuple[ConvOp, ConvOp]:
    """Thread 0's partial conv (the input channels ``first``, with the bias and residual, into
    the output) and thread 1's (the other channels, into buffer ``scratch``)."""
    keep0 = op.kept & first[None, :, None, None]
    keep1 = op.kept & ~first[None, :, None, None]
    a = dataclasses.replace(op, weight=op.weight * keep0, kept=keep0)
    b = dataclasses.replace(op, weight=op.weight * keep1, kept=keep1, dst=scratch, res=None,
                            bias=np.zeros_like(op.bias))
    return a, b


def first_of_groups(channels: np.ndarray, group: int, count: int) -> np.ndarray:
    """The channels (of ``count``) that slice 0 of 2 computes when a step's items are groups
    of ``group`` slots (``channels``: each slot's channel, -1 for none)."""
    slots = channels[:group * ((channels.size // group) // 2)]
    first = np.zeros(count, bool)
    first[slots[slots >= 0]] = True
    return first


def first_of_channels(count: int) -> np.ndarray:
    """The channels slice 0 of 2 computes when a step's items are the channels."""
    first = np.zeros(count, bool)
    first[:count // 2] = True
    return first


def sum_source(sig: str, out: tuple[int, int, int, int], scratch: tuple[int, int, int, int],
               shape: tuple[int, int, int]) -> str:
    """The step (C signature ``sig``) adding ``scratch`` into ``out`` over its slice's
    channels; each map given as (arena offset, channel stride, row stride, offset of pixel
    (0, 0))."""
    c, h, w = shape
    (yo, ycs, yrs, y0), (so, scs, srs, s0) = out, scratch
    return (f"{sig} {{\n  (void)W; (void)I;\n  PART({c})\n"
            f"  for (int c = lo; c < hi; ++c) for (int i = 0; i < {h}; ++i) {{\n"
            f"    float* restrict y = A + {yo + y0} + (long)c * {ycs} + i * {yrs};\n"
            f"    const float* restrict s = A + {so + s0} + (long)c * {scs} + i * {srs};\n"
            f"    for (int j = 0; j < {w}; ++j) y[j] += s[j];\n  }}\n}}\n")
