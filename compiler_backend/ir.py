"""The backend's small intermediate representation: per-sample buffers and lowered ops.

All activations are float32, one sample at a time, laid out NCHW without the batch dim (CHW, or
``(K,)`` for vectors). Every buffer lives in one float arena; ops read and write buffers by id.
Ops are mutable while the fusion passes run, then frozen in practice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Activations that can be fused as epilogues.
ACTIVATIONS = (None, "relu", "relu6", "hardswish")


@dataclass
class Buffer:
    """One region of the activation arena.

    Attributes:
        idx: buffer id.
        shape: per-sample shape (CHW or (K,)).
        numel: floats needed (may exceed prod(shape) for padded / wide-row scratch buffers).
        pinned: keep contents between runs (padded inputs whose zero borders must survive).
    """

    idx: int
    shape: tuple[int, ...]
    numel: int
    pinned: bool = False
    offset: int = -1
    alias_of: int | None = None  # same storage as another buffer (a view with a new shape)


@dataclass
class ConvOp:
    """Conv2d or Linear (as a 1x1 conv on a 1x1 map), BN folded, epilogue fused.

    ``weight`` is [Cout, Cin/groups, kh, kw] float32 with pruned entries set to zero; ``kept`` is
    the bool mask of the same shape that decides the sparse format.
    """

    name: str
    src: int
    dst: int
    weight: np.ndarray
    bias: np.ndarray
    kept: np.ndarray
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    act: str | None = None
    res: int | None = None
    is_linear: bool = False

    @property
    def kind(self) -> str:
        return "conv"


@dataclass(frozen=True)
class AffineStage:
    """One stage ``x = act(x * scale + shift)`` of an ``AffineOp``'s ``pre`` chain."""

    scale: np.ndarray
    shift: np.ndarray
    act: str | None = None


@dataclass
class AffineOp:
    """Per-channel ``y = act(x * scale + shift [+ res])`` (a BatchNorm that could not be
    folded), ``x`` first passed through the per-channel stages of ``pre``: a chain of
    BatchNorms and a residual add, as a skipped conv leaves them, runs as one pass."""

    name: str
    src: int
    dst: int
    scale: np.ndarray
    shift: np.ndarray
    act: str | None = None
    res: int | None = None
    pre: tuple[AffineStage, ...] = ()

    @property
    def kind(self) -> str:
        return "affine"


@dataclass
class EltwiseOp:
    """``dst = act(a <op> b)``; ``b`` may be per-channel ([C,1,1]) when ``broadcast``."""

    name: str
    op: str  # "add" | "mul" | "act" (unary: b is None)
    a: int
    b: int | None
    dst: int
    broadcast: bool = False
    act: str | None = None

    @property
    def kind(self) -> str:
        return "eltwise"


@dataclass
class PoolOp:
    """Max / average pooling, also adaptive average pooling (given as explicit windows)."""

    name: str
    op: str  # "max" | "avg" | "adaptive_avg"
    src: int
    dst: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    count_include_pad: bool = True
    divisor: int | None = None

    @property
    def kind(self) -> str:
        return "pool"


@dataclass
class ConcatOp:
    """Channel concat of CHW buffers (a copy into consecutive channel ranges)."""

    name: str
    srcs: list[int]
    dst: int

    @property
    def kind(self) -> str:
        return "concat"


@dataclass
class FallbackOp:
    """A node run by PyTorch inside the runtime (unsupported op or custom module).

    ``fn(*args, **kwargs)`` is called with ``args``/``kwargs`` where :class:`BufRef` marks arena
    tensors and :class:`EnvRef` marks Python values produced by earlier fallback ops.
    """

    name: str
    fn: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    dst: int | None  # arena buffer for a float32 tensor result, else the result stays in env
    env_key: str = ""

    @property
    def kind(self) -> str:
        return "fallback"


@dataclass(frozen=True)
class BufRef:
    idx: int


@dataclass(frozen=True)
class EnvRef:
    key: str


@dataclass
class Graph:
    """The lowered model: buffers, ops in execution order, input and output buffer ids."""

    buffers: list[Buffer] = field(default_factory=list)
    ops: list[Any] = field(default_factory=list)
    input: int = -1
    output: int = -1
    output_shape: tuple[int, ...] = ()
    #: Per conv whose dead output channels were cut (``dead_channels``): (computed, model's).
    cut_channels: dict[str, tuple[int, int]] = field(default_factory=dict)

    def new_buffer(self, shape: tuple[int, ...], numel: int | None = None,
                   pinned: bool = False) -> int:
        n = int(np.prod(shape)) if numel is None else int(numel)
        self.buffers.append(Buffer(len(self.buffers), tuple(int(s) for s in shape), n, pinned))
        return len(self.buffers) - 1
