"""Prunable-layer extraction from any torch.fx-traceable model.

``extract_layers`` traces the model, propagates the example input's shapes, and returns one
:class:`LayerSpec` per Conv2d / Linear module in execution order. Layers whose outputs meet in a
residual add, an elementwise product or a concat are *coupled*: filter pruning must keep the same
filters in all of them.
"""

from __future__ import annotations

import hashlib
import json
import operator
import threading
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from npas_env.errors import InvalidModel

#: Modules with weights that we cannot prune yet: reported, left dense.
_WEIGHTED_UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                         nn.ConvTranspose3d, nn.Embedding, nn.Bilinear, nn.MultiheadAttention)
#: Functions that join several tensors channel-wise: their producers become coupled.
_JOINS = {operator.add, operator.iadd, operator.sub, operator.mul, operator.imul, torch.add,
          torch.sub, torch.mul, torch.cat, torch.concat, torch.stack}
_JOIN_METHODS = {"add", "add_", "sub", "mul", "mul_"}
_INPUT = "<input>"

#: torch.fx patches ``nn.Module.__call__`` process-wide while it traces, so a module called from
#: another thread at that moment fails ("module is not installed as a submodule"). Tracing holds
#: this lock, and so does every forward pass that may overlap with it (training, evaluation).
FX_TRACE_LOCK = threading.RLock()


class LayerKind(str, Enum):
    CONV = "conv"
    DEPTHWISE = "depthwise"
    GROUPED = "grouped"
    LINEAR = "linear"


@dataclass(frozen=True)
class LayerSpec:
    """Static description of one prunable layer.

    Attributes:
        name: qualified module name (``model.get_submodule(name)``).
        index: position among the prunable layers (execution order).
        kind: conv / depthwise / grouped / linear.
        in_channels, out_channels: channels (features for Linear).
        kernel_size, stride, padding, dilation: (h, w) pairs; (1, 1)/(0, 0) for Linear.
        groups: conv groups (1 for Linear).
        input_hw, output_hw: spatial size of the input / output feature map ((1, 1) for Linear;
            for Linear applied to extra leading dims their product is folded into output_hw[0]).
        macs: multiply-accumulates for batch 1.
        params: weight + bias parameter count.
        has_bias: whether the layer has a bias.
        coupled_group: id shared by layers whose outputs are joined (None if not joined).
        coupled_with_fixed: the group also contains a non-prunable producer (model input or an
            unsupported layer), so filter pruning cannot keep the group consistent.
    """

    name: str
    index: int
    kind: LayerKind
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    macs: int
    params: int
    has_bias: bool
    coupled_group: int | None = None
    coupled_with_fixed: bool = False

    @property
    def is_conv(self) -> bool:
        return self.kind is not LayerKind.LINEAR

    @property
    def is_depthwise(self) -> bool:
        return self.kind is LayerKind.DEPTHWISE

    @property
    def is_pointwise(self) -> bool:
        return self.is_conv and self.kernel_size == (1, 1)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind is LayerKind.LINEAR:
            return (self.out_channels, self.in_channels)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["kind"] = self.kind.value
        return data


@dataclass
class ModelGraph:
    """Result of tracing: the layers, what was left dense, and the traced module."""

    layers: list[LayerSpec]
    unsupported: list[str] = field(default_factory=list)
    graph_module: fx.GraphModule | None = None

    @property
    def fingerprint(self) -> str:
        return layers_fingerprint(self.layers)


def layers_fingerprint(layers: Sequence[LayerSpec]) -> str:
    """A short hash of the layer structure: names, kinds and shapes (not weights)."""
    rows = [[s.name, s.kind.value, s.in_channels, s.out_channels, list(s.kernel_size),
             list(s.stride), s.groups, list(s.input_hw)] for s in layers]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


class _NamingTracer(fx.Tracer):
    """A tracer that remembers which module it was inside when tracing failed."""

    def __init__(self, leaf_modules: Sequence[type[nn.Module] | str] = ()) -> None:
        super().__init__()
        self._leaf_types = tuple(m for m in leaf_modules if isinstance(m, type))
        self._leaf_names = {m for m in leaf_modules if isinstance(m, str)}
        self.stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, self._leaf_types) or qualname in self._leaf_names:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):  # type: ignore[no-untyped-def]
        self.stack.append(self.path_of_module(m))
        result = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return result


def trace_model(model: nn.Module,
                leaf_modules: Sequence[type[nn.Module] | str] = ()) -> fx.GraphModule:
    """Symbolically trace ``model``; raise :class:`InvalidModel` naming the failing module."""
    if not isinstance(model, nn.Module):
        raise InvalidModel(f"expected a torch.nn.Module, got {type(model).__name__}")
    tracer = _NamingTracer(leaf_modules)
    try:
        with FX_TRACE_LOCK:
            graph = tracer.trace(model)
    except Exception as exc:  # fx raises many types (TraceError, TypeError, ...)
        where = tracer.stack[-1] if tracer.stack else "<root forward>"
        mod = model.get_submodule(where) if tracer.stack else model
        raise InvalidModel(
            f"torch.fx cannot trace module {where!r} ({type(mod).__name__}): {exc}. "
            f"Fix: pass leaf_modules=[{type(mod).__name__}] (or its name {where!r}) so it is kept "
            "as one opaque call, or remove data-dependent control flow from its forward().") from None
    return fx.GraphModule(model, graph)


def _pair(v: int | tuple[int, ...] | str) -> tuple[int, int]:
    if isinstance(v, str):  # padding="same"/"valid"
        return (0, 0)
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _conv_spec(name: str, idx: int, m: nn.Conv2d, inp: torch.Size, out: torch.Size) -> LayerSpec:
    if m.groups == 1:
        kind = LayerKind.CONV
    elif m.groups == m.in_channels and m.out_channels % m.in_channels == 0:
        kind = LayerKind.DEPTHWISE
    else:
        kind = LayerKind.GROUPED
    kh, kw = _pair(m.kernel_size)
    oh, ow = int(out[-2]), int(out[-1])
    macs = m.out_channels * (m.in_channels // m.groups) * kh * kw * oh * ow
    return LayerSpec(name, idx, kind, m.in_channels, m.out_channels, (kh, kw), _pair(m.stride),
                     _pair(m.padding), _pair(m.dilation), m.groups, (int(inp[-2]), int(inp[-1])),
                     (oh, ow), macs, sum(p.numel() for p in m.parameters(recurse=False)),
                     m.bias is not None)


def _linear_spec(name: str, idx: int, m: nn.Linear, out: torch.Size) -> LayerSpec:
    rows = 1
    for d in out[1:-1]:
        rows *= int(d)
    return LayerSpec(name, idx, LayerKind.LINEAR, m.in_features, m.out_features, (1, 1), (1, 1),
                     (0, 0), (1, 1), 1, (rows, 1), (rows, 1), m.in_features * m.out_features * rows,
                     sum(p.numel() for p in m.parameters(recurse=False)), m.bias is not None)


def _shape_of(node: fx.Node) -> torch.Size | None:
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "shape", None)


def _is_join(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _JOINS
    return node.op == "call_method" and node.target in _JOIN_METHODS


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
    return found


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, items: Sequence[str]) -> None:
        items = list(items)
        for other in items[1:]:
            self.parent[self.find(other)] = self.find(items[0])


def _couplings(gm: fx.GraphModule, prunable: set[str], unsupported: set[str]) -> _UnionFind:
    """Union layers whose output channels meet in a join op (add / mul / cat)."""
    sources: dict[fx.Node, set[str]] = {}
    uf = _UnionFind()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            sources[node] = {_INPUT}
        elif node.op == "get_attr":
            sources[node] = set()
        elif node.op == "call_module" and node.target in prunable:
            sources[node] = {str(node.target)}
        elif node.op == "call_module" and node.target in unsupported:
            sources[node] = {f"<fixed:{node.target}>"}
        else:
            srcs = set().union(*(sources.get(n, set()) for n in _tensor_inputs(node)))
            if _is_join(node) and len(srcs) > 1:
                uf.union(sorted(srcs))
            sources[node] = srcs
    return uf


def analyze_model(model: nn.Module, example_input: torch.Tensor, *,
                  leaf_modules: Sequence[type[nn.Module] | str] = ()) -> ModelGraph:
    """Trace ``model`` and describe every prunable layer (see :func:`extract_layers`)."""
    if not isinstance(example_input, torch.Tensor):
        raise InvalidModel(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    gm = trace_model(model, leaf_modules)
    was_training = model.training
    try:
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except Exception as exc:
        raise InvalidModel(f"example input of shape {tuple(example_input.shape)} does not fit the "
                           f"model: {type(exc).__name__}: {exc}") from None
    finally:
        gm.train(was_training)
    layers: list[LayerSpec] = []
    unsupported: list[str] = []
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(str(node.target))
        inp_node = _tensor_inputs(node)[0] if _tensor_inputs(node) else None
        inp_shape = _shape_of(inp_node) if inp_node is not None else None
        out_shape = _shape_of(node)
        if isinstance(mod, nn.Conv2d) and inp_shape is not None and out_shape is not None:
            layers.append(_conv_spec(str(node.target), len(layers), mod, inp_shape, out_shape))
        elif isinstance(mod, nn.Linear) and out_shape is not None:
            layers.append(_linear_spec(str(node.target), len(layers), mod, out_shape))
        elif isinstance(mod, _WEIGHTED_UNSUPPORTED):
            unsupported.append(f"{node.target} ({type(mod).__name__})")
    names = [s.name for s in layers]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InvalidModel(f"modules {dup} are called more than once (weight sharing); pruning one "
                           "call would prune all. Use a separate module per call.")
    uf = _couplings(gm, set(names), {u.split(" ")[0] for u in unsupported})
    layers = _attach_groups(layers, uf)
    if unsupported:
        warnings.warn(f"left dense (unsupported layer types): {', '.join(unsupported)}", stacklevel=2)
    return ModelGraph(layers, unsupported, gm)


def _attach_groups(layers: list[LayerSpec], uf: _UnionFind) -> list[LayerSpec]:
    members: dict[str, list[str]] = {}
    for item in uf.parent:
        members.setdefault(uf.find(item), []).append(item)
    group_ids: dict[str, int] = {}
    result = []
    for spec in layers:
        root = uf.find(spec.name)
        group = members.get(root, [spec.name])
        if len(group) < 2:
            result.append(spec)
            continue
        gid = group_ids.setdefault(root, len(group_ids))
        fixed = any(m.startswith("<") for m in group)
        result.append(_replace(spec, coupled_group=gid, coupled_with_fixed=fixed))
    return result


def _replace(spec: LayerSpec, **changes: object) -> LayerSpec:
    from dataclasses import replace

    return replace(spec, **changes)  # type: ignore[arg-type]


def extract_layers(model: nn.Module, example_input: torch.Tensor, *,
                   leaf_modules: Sequence[type[nn.Module] | str] = ()) -> list[LayerSpec]:
    """List the prunable layers (Conv2d of any kernel/stride/groups, Linear) of ``model``.

    Args:
        model: any ``nn.Module`` that ``torch.fx`` can trace.
        example_input: one input batch (its shape fixes feature-map sizes and MACs).
        leaf_modules: module types or qualified names to keep opaque while tracing.

    Returns:
        One LayerSpec per prunable layer in execution order. Layers of unsupported types with
        weights are reported by a warning and left dense.

    Raises:
        InvalidModel: the model cannot be traced (the message names the module and the fix) or
            the example input does not fit it.
    """
    return analyze_model(model, example_input, leaf_modules=leaf_modules).layers
