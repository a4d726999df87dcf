"""Lower a traced model (torch.fx) to the backend IR, then fold BN and fuse epilogues.

Supported natively: Conv2d (any kernel, stride, padding, groups; dilation 1), Linear on vectors,
BatchNorm (folded into the producing conv, else a per-channel affine), ReLU / ReLU6 / Hardswish,
add / mul (same shape or per-channel broadcast), max / avg / adaptive-avg pooling, flatten / view
/ dropout / identity (aliases), channel concat. Anything else becomes a :class:`FallbackOp` that
PyTorch runs inside the same runtime.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.node import map_aggregate

from compiler_backend.ir import (
    AffineOp,
    AffineStage,
    BufRef,
    ConcatOp,
    ConvOp,
    EltwiseOp,
    EnvRef,
    FallbackOp,
    Graph,
    PoolOp,
)
from npas_env.errors import BackendError

_ACT_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish"}
_ACT_FUNCS = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish",
              torch.relu_: "relu"}
_ACT_METHODS = {"relu": "relu", "relu_": "relu"}
_ALIAS_MODULES = (nn.Flatten, nn.Dropout, nn.Identity, nn.Dropout2d)
_ALIAS_METHODS = {"view", "reshape", "flatten", "contiguous", "squeeze", "unsqueeze"}
_ALIAS_FUNCS = {torch.flatten, torch.reshape, F.dropout, torch.squeeze, torch.unsqueeze}
_ADD = {operator.add, operator.iadd, torch.add}
_MUL = {operator.mul, operator.imul, torch.mul}


def _meta_shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    dtype = getattr(meta, "dtype", None)
    if shape is None or dtype != torch.float32:
        return None
    return tuple(int(s) for s in shape)


class _Lowerer:
    """Walks the fx graph once; keeps node -> buffer id / Python value maps."""

    def __init__(self, gm: fx.GraphModule, masks: Mapping[str, torch.Tensor]) -> None:
        self.gm, self.masks = gm, masks
        self.graph = Graph()
        self.buf: dict[fx.Node, int] = {}
        self.const: dict[fx.Node, Any] = {}
        self.env: set[fx.Node] = set()

    # ------------------------------------------------------------------ helpers
    def _sample_shape(self, node: fx.Node) -> tuple[int, ...] | None:
        shape = _meta_shape(node)
        return None if shape is None or len(shape) < 1 or shape[0] != 1 else shape[1:]

    def _new(self, node: fx.Node) -> int:
        shape = self._sample_shape(node)
        assert shape is not None
        idx = self.graph.new_buffer(shape)
        self.buf[node] = idx
        return idx

    def _arg_buf(self, arg: Any) -> int | None:
        return self.buf.get(arg) if isinstance(arg, fx.Node) else None

    # ------------------------------------------------------------------ entry
    def run(self) -> Graph:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.graph.input >= 0:
                    raise BackendError("only models with a single tensor input are supported")
                self.graph.input = self._new(node)
            elif node.op == "output":
                out = node.args[0]
                if not isinstance(out, fx.Node) or out not in self.buf:
                    raise BackendError("the model output must be a single float32 tensor")
                self.graph.output = self.buf[out]
                self.graph.output_shape = self.graph.buffers[self.buf[out]].shape
            elif node.op == "get_attr" or not self._lower(node):
                self._fallback(node)
        return self.graph

    def _lower(self, node: fx.Node) -> bool:
        if any(isinstance(a, fx.Node) and a in self.env for a in node.all_input_nodes):
            return False
        if node.op == "call_method" and node.target in ("size", "dim"):
            return self._size(node)
        if node.op == "call_function" and node.target is getattr and node.args[1] == "shape":
            return False
        if self._sample_shape(node) is None:
            return False
        if node.op == "call_module":
            return self._module(node, self.gm.get_submodule(str(node.target)))
        if node.op == "call_function":
            return self._function(node)
        if node.op == "call_method":
            return self._method(node)
        return False

    def _size(self, node: fx.Node) -> bool:
        src = node.args[0]
        shape = _meta_shape(src) if isinstance(src, fx.Node) else None
        if shape is None:
            return False
        shape = (1, *shape[1:])
        if node.target == "dim":
            self.const[node] = len(shape)
        elif len(node.args) > 1 or "dim" in node.kwargs:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
            if not isinstance(dim, int):  # a computed dim: leave the call to PyTorch
                return False
            self.const[node] = shape[dim]
        else:
            self.const[node] = torch.Size(shape)
        return True

    # ------------------------------------------------------------------ modules
    def _module(self, node: fx.Node, mod: nn.Module) -> bool:
        src = self._arg_buf(node.args[0]) if node.args else None
        if src is None or len(node.args) != 1 or node.kwargs:
            return False
        if isinstance(mod, nn.Conv2d):
            return self._conv(node, mod, src)
        if isinstance(mod, nn.Linear):
            return self._linear(node, mod, src)
        if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
            return self._batchnorm(node, mod, src)
        if type(mod) in _ACT_MODULES:
            return self._act(node, src, _ACT_MODULES[type(mod)])
        if isinstance(mod, nn.Hardtanh) and (mod.min_val, mod.max_val) == (0.0, 6.0):
            return self._act(node, src, "relu6")
        if isinstance(mod, _ALIAS_MODULES):
            return self._alias(node, src)
        if isinstance(mod, nn.MaxPool2d):
            return self._pool(node, src, "max", mod.kernel_size, mod.stride, mod.padding,
                              mod.dilation, True, None)
        if isinstance(mod, nn.AvgPool2d):
            return self._pool(node, src, "avg", mod.kernel_size, mod.stride, mod.padding, 1,
                              mod.count_include_pad, mod.divisor_override)
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return self._adaptive(node, src)
        return False

    def _mask_for(self, name: str, weight: torch.Tensor) -> np.ndarray:
        mask = self.masks.get(name)
        w = weight.detach().float().cpu()
        if mask is None:
            kept = w != 0
        else:
            if tuple(mask.shape) != tuple(w.shape):
                raise BackendError(f"mask for layer {name!r} has shape {tuple(mask.shape)}, "
                                   f"weight has {tuple(w.shape)}")
            kept = mask.detach().cpu().bool() & (w != 0)
        return kept.numpy()

    def _conv(self, node: fx.Node, mod: nn.Conv2d, src: int) -> bool:
        in_shape = self.graph.buffers[src].shape
        if (len(in_shape) != 3 or isinstance(mod.padding, str) or mod.dilation != (1, 1)
                or mod.padding_mode != "zeros" or mod.stride[0] != mod.stride[1]):
            return False
        name = str(node.target)
        kept = self._mask_for(name, mod.weight)
        weight = mod.weight.detach().float().cpu().numpy() * kept
        bias = (mod.bias.detach().float().cpu().numpy() if mod.bias is not None
                else np.zeros(mod.out_channels, np.float32))
        dst = self._new(node)
        out_shape = cast("tuple[int, int, int]", self.graph.buffers[dst].shape)  # conv keeps CHW
        padding = cast("tuple[int, int]", tuple(mod.padding))  # str padding was rejected above
        self.graph.ops.append(ConvOp(name, src, dst, weight.astype(np.float32), bias.astype(np.float32),
                                     kept, in_shape, out_shape, mod.stride[0], padding, mod.groups))
        return True

    def _linear(self, node: fx.Node, mod: nn.Linear, src: int) -> bool:
        in_shape = self.graph.buffers[src].shape
        if len(in_shape) != 1:
            return False
        name = str(node.target)
        kept = self._mask_for(name, mod.weight)
        weight = mod.weight.detach().float().cpu().numpy() * kept
        bias = (mod.bias.detach().float().cpu().numpy() if mod.bias is not None
                else np.zeros(mod.out_features, np.float32))
        dst = self._new(node)
        k, n = mod.in_features, mod.out_features
        self.graph.ops.append(ConvOp(name, src, dst, weight.reshape(n, k, 1, 1).astype(np.float32),
                                     bias.astype(np.float32), kept.reshape(n, k, 1, 1), (k, 1, 1),
                                     (n, 1, 1), is_linear=True))
        return True

    def _batchnorm(self, node: fx.Node, mod: nn.BatchNorm1d | nn.BatchNorm2d, src: int) -> bool:
        if mod.running_mean is None or mod.running_var is None:
            return False
        var = mod.running_var.detach().double()
        scale = 1.0 / torch.sqrt(var + mod.eps)
        if mod.weight is not None:
            scale = scale * mod.weight.detach().double()
        shift = -mod.running_mean.detach().double() * scale
        if mod.bias is not None:
            shift = shift + mod.bias.detach().double()
        dst = self._new(node)
        self.graph.ops.append(AffineOp(str(node.target), src, dst, scale.float().numpy(),
                                       shift.float().numpy()))
        return True

    def _act(self, node: fx.Node, src: int, act: str) -> bool:
        dst = self._new(node)
        self.graph.ops.append(EltwiseOp(str(node.name), "act", src, None, dst, act=act))
        return True

    def _alias(self, node: fx.Node, src: int) -> bool:
        shape = self._sample_shape(node)
        src_shape = self.graph.buffers[src].shape
        if shape is None or int(np.prod(shape)) != int(np.prod(src_shape)):
            return False
        if shape == src_shape:
            self.buf[node] = src
            return True
        # same memory, new shape: a new buffer id sharing storage would complicate planning;
        # a copy-free alias is modelled by re-registering the buffer's shape.
        idx = self.graph.new_buffer(shape)
        self.graph.buffers[idx].numel = 0
        self.graph.buffers[idx].alias_of = src  # resolved to src's offset by the planner
        self.buf[node] = idx
        return True

    def _pool(self, node: fx.Node, src: int, op: str, k: Any, s: Any, p: Any, d: Any,
              cip: bool, divisor: int | None) -> bool:
        pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
        s = k if s is None else s
        if pair(d) != (1, 1) or len(self.graph.buffers[src].shape) != 3:
            return False
        dst = self._new(node)
        self.graph.ops.append(PoolOp(str(node.name), op, src, dst, pair(k), pair(s), pair(p), cip,
                                     divisor))
        return True

    def _adaptive(self, node: fx.Node, src: int) -> bool:
        if len(self.graph.buffers[src].shape) != 3:
            return False
        dst = self._new(node)
        self.graph.ops.append(PoolOp(str(node.name), "adaptive_avg", src, dst))
        return True

    # ------------------------------------------------------------------ functions / methods
    def _function(self, node: fx.Node) -> bool:
        t = node.target
        args = node.args
        src = self._arg_buf(args[0]) if args else None
        if t in _ACT_FUNCS and src is not None:
            return self._act(node, src, _ACT_FUNCS[t])
        if t in _ALIAS_FUNCS and src is not None:
            if t is F.dropout and node.kwargs.get("training", args[2] if len(args) > 2 else True):
                return False
            return self._alias(node, src)
        if (t in _ADD or t in _MUL) and len(args) == 2 and not node.kwargs:
            return self._binary(node, "add" if t in _ADD else "mul")
        if t in (torch.cat, torch.concat):
            return self._concat(node)
        if t is F.adaptive_avg_pool2d and src is not None:
            return self._adaptive(node, src)
        if t is torch.mean and src is not None:
            return self._mean(node, src)
        return False

    def _method(self, node: fx.Node) -> bool:
        src = self._arg_buf(node.args[0])
        if src is None:
            return False
        if node.target in _ACT_METHODS:
            return self._act(node, src, _ACT_METHODS[str(node.target)])
        if node.target in _ALIAS_METHODS:
            return self._alias(node, src)
        if node.target in ("add", "mul", "add_", "mul_") and len(node.args) == 2 and not node.kwargs:
            return self._binary(node, str(node.target).rstrip("_"))
        if node.target == "mean":
            return self._mean(node, src)
        return False

    def _mean(self, node: fx.Node, src: int) -> bool:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if len(self.graph.buffers[src].shape) != 3:
            return False
        dim_list = dims if isinstance(dims, (list, tuple)) else [dims]
        if not all(isinstance(d, int) for d in dim_list):  # dim=None or a computed dim
            return False
        if sorted(cast(int, d) % 4 for d in dim_list) != [2, 3]:
            return False
        dst = self._new(node)
        del keep
        self.graph.ops.append(PoolOp(str(node.name), "adaptive_avg", src, dst))
        return True

    def _binary(self, node: fx.Node, op: str) -> bool:
        a, b = (self._arg_buf(x) for x in node.args)
        if a is None or b is None:
            return False
        sa, sb = self.graph.buffers[a].shape, self.graph.buffers[b].shape
        out = self._sample_shape(node)
        assert out is not None  # _lower only gets here for nodes with a sample shape
        broadcast = False
        if sa != sb:
            if len(out) == 3 and sb == (out[0], 1, 1) and sa == out:
                broadcast = True
            elif len(out) == 3 and sa == (out[0], 1, 1) and sb == out:
                a, b, broadcast = b, a, True
            else:
                return False
        dst = self._new(node)
        self.graph.ops.append(EltwiseOp(str(node.name), op, a, b, dst, broadcast))
        return True

    def _concat(self, node: fx.Node) -> bool:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if not isinstance(tensors, (list, tuple)):
            return False
        found = [self._arg_buf(t) for t in tensors]
        srcs = [s for s in found if s is not None]
        out = self._sample_shape(node)
        if len(srcs) != len(found) or out is None or dim not in (1, -len(out)):
            return False
        dst = self._new(node)
        self.graph.ops.append(ConcatOp(str(node.name), srcs, dst))
        return True

    # ------------------------------------------------------------------ fallback
    def _fallback(self, node: fx.Node) -> None:
        def ref(a: Any) -> Any:
            if a in self.const:
                return self.const[a]
            if a in self.buf:
                return BufRef(self.buf[a])
            if a in self.env:
                return EnvRef(a.name)
            raise BackendError(f"internal: node {a.name!r} used before definition")

        args = fx.map_arg(node.args, ref)
        kwargs = fx.map_arg(node.kwargs, ref)
        if node.op == "call_module":
            fn: Any = self.gm.get_submodule(str(node.target))
        elif node.op == "call_function":
            fn = node.target
        elif node.op == "get_attr":
            value = _fetch_attr(self.gm, str(node.target))
            fn, args, kwargs = (lambda v=value: v), (), {}
        else:
            fn = _MethodCall(str(node.target))
        shape = self._sample_shape(node)
        dst = self._new(node) if shape is not None and node.op != "get_attr" else None
        if dst is None:
            self.env.add(node)
        label = str(node.target) if node.op == "call_module" else node.name
        self.graph.ops.append(FallbackOp(label, fn, tuple(args), dict(kwargs), dst, node.name))


class _MethodCall:
    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, self.name)(*args, **kwargs)


def _fetch_attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def lower(gm: fx.GraphModule, masks: Mapping[str, torch.Tensor] | None = None) -> Graph:
    """Lower a shape-propagated (batch-1) GraphModule to the IR and run the fusion passes."""
    graph = _Lowerer(gm, masks or {}).run()
    fold_batchnorm(graph)
    fuse_epilogues(graph)
    return graph


# ---------------------------------------------------------------------- fusion passes
def _use_counts(graph: Graph) -> dict[int, int]:
    counts: dict[int, int] = {graph.output: 1}
    for op in graph.ops:
        for b in op_inputs(op):
            counts[b] = counts.get(b, 0) + 1
    for buf in graph.buffers:  # an alias counts as a use of its source
        if buf.alias_of is not None:
            counts[buf.alias_of] = counts.get(buf.alias_of, 0) + 1
    return counts


def op_inputs(op: Any) -> list[int]:
    """Arena buffers an op reads."""
    if isinstance(op, ConvOp):
        return [op.src] + ([op.res] if op.res is not None else [])
    if isinstance(op, AffineOp):
        return [op.src] + ([op.res] if op.res is not None else [])
    if isinstance(op, PoolOp):
        return [op.src]
    if isinstance(op, EltwiseOp):
        return [op.a] + ([op.b] if op.b is not None else [])
    if isinstance(op, ConcatOp):
        return list(op.srcs)
    if isinstance(op, FallbackOp):
        found: list[int] = []
        map_aggregate((op.args, op.kwargs),
                      lambda a: found.append(a.idx) if isinstance(a, BufRef) else None)
        return found
    return []


def fold_batchnorm(graph: Graph) -> None:
    """Fold every AffineOp whose input is a single-use ConvOp output into that conv."""
    uses = _use_counts(graph)
    producer = {op.dst: op for op in graph.ops if isinstance(op, ConvOp)}
    keep = []
    for op in graph.ops:
        conv = producer.get(op.src) if isinstance(op, AffineOp) else None
        if conv is not None and uses.get(conv.dst, 0) == 1 and conv.act is None and conv.res is None:
            conv.weight = (conv.weight * op.scale[:, None, None, None]).astype(np.float32)
            conv.bias = (conv.bias * op.scale + op.shift).astype(np.float32)
            conv.dst = op.dst
            producer[op.dst] = conv
            continue
        keep.append(op)
    graph.ops = keep


def fuse_epilogues(graph: Graph) -> None:
    """Fuse residual adds into convs and affine ops, activations into their producers, and
    chains of affine ops into one."""
    ops = list(graph.ops)
    i = 0
    while i < len(ops):
        op = ops[i]
        uses = _use_counts(Graph(graph.buffers, ops, graph.input, graph.output))
        producers = {o.dst: j for j, o in enumerate(ops) if hasattr(o, "dst")}
        if isinstance(op, AffineOp) and op.res is None:
            j = producers.get(op.src)
            prev = ops[j] if j is not None else None
            if (j is not None and isinstance(prev, AffineOp) and prev.res is None
                    and uses.get(op.src, 0) == 1):
                op.pre = (*prev.pre, AffineStage(prev.scale, prev.shift, prev.act), *op.pre)
                op.src = prev.src
                ops.pop(j)
                continue
        if isinstance(op, EltwiseOp) and op.op == "act":
            j = producers.get(op.a)
            prev = ops[j] if j is not None else None
            if (isinstance(prev, (ConvOp, AffineOp, EltwiseOp)) and prev.act is None
                    and uses.get(op.a, 0) == 1 and not (isinstance(prev, EltwiseOp)
                                                        and prev.op == "mul")):
                prev.act, prev.dst = op.act, op.dst
                ops.pop(i)
                continue
        elif (isinstance(op, EltwiseOp) and op.op == "add" and op.b is not None
              and not op.broadcast and op.act is None):
            # into a conv's epilogue where either side can take it, else into an affine op
            convs = {buf for buf, j in producers.items() if isinstance(ops[j], ConvOp)}
            for mine, other in sorted(((op.a, op.b), (op.b, op.a)),
                                      key=lambda pair: pair[0] not in convs):
                j = producers.get(mine)
                if j is None:
                    continue
                prev = ops[j]
                if (isinstance(prev, (ConvOp, AffineOp)) and prev.act is None
                        and prev.res is None and uses.get(mine, 0) == 1 and other != mine
                        and graph.buffers[other].shape == graph.buffers[mine].shape):
                    prev.res, prev.dst = other, op.dst
                    ops[i] = prev
                    ops.pop(j)
                    i -= 1
                    break
        i += 1
    graph.ops = ops
