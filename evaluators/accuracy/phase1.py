"""NPAS phase 1: replace mobile-unfriendly operations, then fine-tune briefly.

Activations that need an exponential (sigmoid, swish/SiLU) are slow on mobile CPUs and GPUs. NPAS
replaces them with compiler-friendly piecewise-linear versions (spec section 1)::

    nn.Sigmoid -> nn.Hardsigmoid        torch.sigmoid / F.sigmoid / x.sigmoid() -> F.hardsigmoid
    nn.SiLU, "Swish" -> nn.Hardswish     F.silu                                 -> F.hardswish

Module replacements work at any depth (squeeze-excite blocks included). Functional calls are
rewritten in a ``torch.fx`` trace of the model; then the returned model is an ``fx.GraphModule``
with the same qualified submodule names. The common swish written as ``x * torch.sigmoid(x)``
becomes ``x * hardsigmoid(x)``, which *is* hard-swish. Both maps are configurable; what was
replaced and what was left (other exp-based ops, activations the rewrite does not know) is
reported.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import fx, nn

from npas_env.data import DataSplits
from npas_env.errors import InvalidModel

#: A module replacement: a module class (built without arguments) or ``old module -> new module``.
ModuleFactory = type[nn.Module] | Callable[[nn.Module], nn.Module]
#: Keys are module classes or class names (for third-party classes such as ``Swish``).
ModuleMap = Mapping[type[nn.Module] | str, ModuleFactory]
FunctionMap = Mapping[Callable[..., Any], Callable[..., Any]]

DEFAULT_MAP: ModuleMap = {
    nn.Sigmoid: nn.Hardsigmoid,
    nn.SiLU: nn.Hardswish,
    "Swish": nn.Hardswish,
    "MemoryEfficientSwish": nn.Hardswish,
}
DEFAULT_FUNCTION_MAP: FunctionMap = {
    torch.sigmoid: F.hardsigmoid,
    F.sigmoid: F.hardsigmoid,
    F.silu: F.hardswish,
}
#: Tensor methods and the function whose mapping they follow.
_METHOD_ALIASES: dict[str, Callable[..., Any]] = {"sigmoid": torch.sigmoid}

#: Exp-based ops that stay slow if nothing maps them (reported as left).
_UNFRIENDLY_MODULES = (nn.Sigmoid, nn.SiLU, nn.GELU, nn.Tanh, nn.ELU, nn.CELU, nn.SELU, nn.Mish,
                       nn.Softplus, nn.LogSigmoid, nn.Tanhshrink)
_UNFRIENDLY_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.silu, F.gelu, torch.tanh, F.tanh, F.elu,
                         F.selu, F.celu, F.mish, F.softplus, F.logsigmoid, torch.exp}
_UNFRIENDLY_METHODS = {"sigmoid", "tanh", "exp"}
#: Parameter-free leaf modules known to be cheap; any other one is reported as unknown.
_FRIENDLY_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh,
                     nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.Unflatten, nn.MaxPool2d,
                     nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Softmax,
                     nn.LogSoftmax, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d, nn.PixelShuffle)


@dataclass(frozen=True)
class Replacement:
    """One rewritten op: where (module name or fx node name), from what, to what."""

    where: str
    old: str
    new: str


@dataclass(frozen=True, eq=False)
class Phase1Report:
    """What :func:`replace_unfriendly_ops` did.

    Attributes:
        model: the rewritten model (a copy unless ``inplace``; an ``fx.GraphModule`` if functional
            calls were rewritten).
        replaced: every rewritten module or call.
        left: ops that remain and may be slow: ``"<where> (<op>): <reason>"``.
        traced: whether the model could be fx-traced to check functional calls.
        trace_error: why tracing failed (functional calls were then not checked).
    """

    model: nn.Module
    replaced: tuple[Replacement, ...] = ()
    left: tuple[str, ...] = ()
    traced: bool = True
    trace_error: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.replaced)

    def summary(self) -> str:
        """A short human-readable report."""
        lines = [f"replaced {len(self.replaced)} op(s)"]
        lines += [f"  {r.where}: {r.old} -> {r.new}" for r in self.replaced]
        if self.left:
            lines.append(f"left {len(self.left)} op(s)")
            lines += [f"  {item}" for item in self.left]
        if not self.traced:
            lines.append(f"functional calls not checked: {self.trace_error}")
        return "\n".join(lines)


def _lookup(mapping: ModuleMap, module: nn.Module) -> ModuleFactory | None:
    for key, factory in mapping.items():
        if isinstance(key, str):
            if type(module).__name__ == key:
                return factory
        elif isinstance(module, key):
            return factory
    return None


def _build(factory: ModuleFactory, old: nn.Module) -> nn.Module:
    new = factory() if isinstance(factory, type) else factory(old)
    if not isinstance(new, nn.Module):
        raise InvalidModel(f"phase-1 map for {type(old).__name__} returned {type(new).__name__}, "
                           "not an nn.Module")
    return new.train(old.training)


def _replace_modules(model: nn.Module, mapping: ModuleMap) -> list[Replacement]:
    done: list[Replacement] = []
    for name, module in list(model.named_modules()):
        factory = _lookup(mapping, module) if name else None
        if factory is None:
            continue
        new = _build(factory, module)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        done.append(Replacement(name, type(module).__name__, type(new).__name__))
    return done


def _leftover_modules(model: nn.Module, mapping: ModuleMap) -> list[str]:
    left = []
    for name, module in model.named_modules():
        if not name or next(module.children(), None) is not None:
            continue
        what = type(module).__name__
        if isinstance(module, _UNFRIENDLY_MODULES):
            left.append(f"{name} ({what}): exp-based op with no mapping")
        elif (not isinstance(module, _FRIENDLY_MODULES) and next(module.parameters(), None) is None
              and not list(module.buffers())):
            left.append(f"{name} ({what}): unknown parameter-free op, not rewritten")
    return left


def _function_name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '') or ''}.{getattr(fn, '__name__', repr(fn))}".lstrip(".")


def _rewrite_functions(gm: fx.GraphModule, functions: FunctionMap) -> tuple[list[Replacement], list[str]]:
    done: list[Replacement] = []
    left: list[str] = []
    for node in gm.graph.nodes:
        if node.op == "call_function":
            target = node.target
        elif node.op == "call_method" and node.target in _METHOD_ALIASES:
            target = _METHOD_ALIASES[str(node.target)]
        else:
            if node.op == "call_method" and node.target in _UNFRIENDLY_METHODS:
                left.append(f"{node.name} (Tensor.{node.target}): exp-based op with no mapping")
            continue
        new = functions.get(target)  # type: ignore[arg-type]
        if new is None:
            if target in _UNFRIENDLY_FUNCTIONS:
                left.append(f"{node.name} ({_function_name(target)}): exp-based op with no mapping")
            continue
        old_name = f"Tensor.{node.target}" if node.op == "call_method" else _function_name(target)
        node.op, node.target = "call_function", new
        node.kwargs = {k: v for k, v in node.kwargs.items() if k == "inplace"}
        done.append(Replacement(node.name, old_name, _function_name(new)))
    if done:
        gm.graph.lint()
        gm.recompile()
    return done, left


def replace_unfriendly_ops(model: nn.Module, mapping: ModuleMap = DEFAULT_MAP, *,
                           functions: FunctionMap = DEFAULT_FUNCTION_MAP,
                           inplace: bool = False) -> Phase1Report:
    """Rewrite exp-based activations into compiler-friendly ones (NPAS phase 1).

    Args:
        model: any module; it is copied first unless ``inplace``.
        mapping: module class (or class name) -> replacement class or factory.
        functions: function -> replacement function, applied to ``call_function`` nodes of an fx
            trace (``x.sigmoid()`` follows the entry of ``torch.sigmoid``). Pass ``{}`` to skip
            tracing.
        inplace: modify ``model`` itself (only module replacements can be done in place; a
            functional rewrite always returns a new GraphModule).

    Returns:
        A :class:`Phase1Report` with the rewritten model, the replacements and what was left.

    Raises:
        InvalidModel: a factory returned something that is not a module.
    """
    if not isinstance(model, nn.Module):
        raise InvalidModel(f"expected a torch.nn.Module, got {type(model).__name__}")
    target = model if inplace else copy.deepcopy(model)
    replaced = _replace_modules(target, mapping)
    left = _leftover_modules(target, mapping)
    if not functions:
        return Phase1Report(target, tuple(replaced), tuple(left), traced=False,
                            trace_error="function map empty")
    from npas_env.layers import trace_model

    try:
        gm = trace_model(target)
    except InvalidModel as exc:
        return Phase1Report(target, tuple(replaced), tuple(left), traced=False, trace_error=str(exc))
    fn_replaced, fn_left = _rewrite_functions(gm, functions)
    result = gm.train(target.training) if fn_replaced else target
    return Phase1Report(result, tuple(replaced + fn_replaced), tuple(left + fn_left))


@dataclass(frozen=True, eq=False)
class Phase1Result:
    """Outcome of :func:`phase1`.

    Attributes:
        model: the rewritten (and fine-tuned) model.
        report: what was replaced and left.
        accuracy_before: validation accuracy of the original model.
        accuracy_rewritten: validation accuracy right after the rewrite.
        accuracy_after: validation accuracy after fine-tuning (== rewritten if epochs == 0).
        epochs: fine-tune epochs run.
    """

    model: nn.Module
    report: Phase1Report
    accuracy_before: float
    accuracy_rewritten: float
    accuracy_after: float
    epochs: int = 0
    details: dict[str, Any] = field(default_factory=dict)


def phase1(model: nn.Module, data: str | DataSplits, epochs: int = 1, *,
           mapping: ModuleMap = DEFAULT_MAP, functions: FunctionMap = DEFAULT_FUNCTION_MAP,
           lr: float = 0.01, batch_size: int = 64, seed: int = 0,
           max_train_batches: int | None = None) -> Phase1Result:
    """Rewrite unfriendly ops (:func:`replace_unfriendly_ops`), then fine-tune ``epochs`` epochs.

    Args:
        model: the pretrained model (not modified).
        data: a registered dataset name or DataSplits; trains on ``train``, scores on ``val``.
        epochs: fine-tune epochs after the rewrite (0 = none; skipped too if nothing changed).
        mapping, functions: the replacement maps.
        lr, batch_size, seed, max_train_batches: fine-tune settings (SGD, seeded shuffling).

    Returns:
        A :class:`Phase1Result`; ``details["error"]`` is set if fine-tuning diverged (the model
        is then the rewritten one before fine-tuning).

    Raises:
        InvalidData: the dataset does not fit the model.
    """
    from evaluators.accuracy.oneshot import resolve_dataset
    from npas_env.data import as_loader, check_dataset
    from npas_env.zoo.train import evaluate_accuracy, make_sgd, train_epochs

    splits = resolve_dataset(data)
    check_dataset(splits, model)
    report = replace_unfriendly_ops(model, mapping, functions=functions)
    val = as_loader(splits.val, 256)
    before, rewritten = evaluate_accuracy(model, val), evaluate_accuracy(report.model, val)
    if epochs <= 0 or not report.changed:
        return Phase1Result(report.model, report, before, rewritten, rewritten)
    tuned = copy.deepcopy(report.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        res = train_epochs(tuned, as_loader(splits.train, batch_size, shuffle=True, seed=seed),
                           epochs=epochs, optimizer=make_sgd(tuned, lr), max_batches=max_train_batches)
    if not res.ok:
        return Phase1Result(report.model, report, before, rewritten, rewritten, 0,
                            {"error": res.error})
    after = evaluate_accuracy(tuned, val)
    return Phase1Result(tuned, report, before, rewritten, after, epochs,
                        {"seconds": res.seconds, "train_loss": res.mean_loss})
