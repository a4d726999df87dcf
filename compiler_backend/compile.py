"""``compile_model``: trace, lower, (tune), generate C, compile, load."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from compiler_backend.bands import BANDS, BandPlan, plan_bands
from compiler_backend.codegen import Program, generate
from compiler_backend.dead_channels import eliminate_dead_channels
from compiler_backend.ir import Graph
from compiler_backend.isa import ISAS, Isa, detect_isa
from compiler_backend.lowering import lower
from compiler_backend.runtime import CompiledModel
from compiler_backend.toolchain import SAFETY_FLAGS, compile_source, find_compiler
from compiler_backend.tuning.base import KernelConfig, TuningConfig
from compiler_backend.verify import SafetyRetryWarning, verify_compiled
from npas_env.errors import BackendError, InvalidConfig, InvalidModel
from npas_env.layers import analyze_model


def resolve_isa(name: str | None = None) -> Isa:
    """``name`` (or ``$NPAS_COMPILER_ISA``) if given, else the detected ISA."""
    name = name or os.environ.get("NPAS_COMPILER_ISA")
    if not name:
        return detect_isa()
    if name not in ISAS:
        raise InvalidConfig(f"unknown ISA {name!r}; choose one of {sorted(ISAS)}")
    return ISAS[name]


def lower_model(model: nn.Module, example_input: torch.Tensor,
                masks: Mapping[str, torch.Tensor] | None = None) -> Graph:
    """Trace a private eval-mode copy of ``model`` at batch 1 and lower it to the IR (fusion
    passes run, dead channels cut: ``dead_channels``)."""
    model = copy.deepcopy(model).eval()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shape propagation of tiny batch-1 convs: 1 thread, no oneDNN JIT
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # before flags(): entering it warns about TF32
            with torch.backends.mkldnn.flags(enabled=False):
                gm = analyze_model(model, example_input[:1].detach().float()).graph_module
    finally:
        torch.set_num_threads(prev_threads)
    assert gm is not None
    gm.eval()
    with torch.no_grad():
        graph = lower(gm, masks)
    graph.cut_channels = eliminate_dead_channels(graph)
    return graph


def compile_model(model: nn.Module, example_input: torch.Tensor,
                  masks: Mapping[str, torch.Tensor] | None = None, *, threads: int = 1,
                  tune: bool | TuningConfig = False, cache_dir: Path | None = None,
                  isa: str | None = None,
                  configs: Mapping[str, KernelConfig] | None = None,
                  adaptive_threads: bool = False, verify: bool = True,
                  banded: bool = False) -> CompiledModel:
    """Compile ``model`` (eval semantics, BN folded) into one C library for this CPU.

    Args:
        model: any torch.fx-traceable module; unsupported ops run through PyTorch.
        example_input: one input batch; its per-sample shape is compiled in.
        masks: module name -> bool mask of the weight's shape (zeros in weights count too).
        threads: OpenMP threads (each layer uses 1 or this many).
        tune: run the auto-tuner (True or a TuningConfig); results go to the tuning log.
        cache_dir: artifact cache (default ``npas_env.io.cache_dir() / "compiler"``).
        isa: force ``avx512`` / ``avx2`` / ``generic`` (``neon`` on AArch64) (default: detected; ``$NPAS_COMPILER_ISA``).
        configs: explicit per-layer kernel configs (override defaults and tuning).
        adaptive_threads: run each call on 1 thread or ``threads``, whichever ran faster
            recently (for hosts that move their vCPUs; see ``compiler_backend.threads``).
        verify: run the library once on ``example_input`` against the masked model in
            PyTorch (``compiler_backend.verify``) and refuse a wrong one.
        banded: with ``threads=2``, each thread runs the convolutional trunk on its own half
            of the rows (``compiler_backend.bands``): far fewer lines move between the cores.

    Returns:
        The loaded :class:`CompiledModel`.

    Raises:
        BackendError: no C compiler (install gcc), a compile failure naming the layer, or
            (``verify``) a library whose output differs from PyTorch's.
        InvalidModel: the model cannot be traced or the input does not fit.
        InvalidPlan: (``verify``) a mask names no layer of the model.
    """
    if threads < 1:
        raise InvalidConfig(f"threads must be >= 1, got {threads}")
    if banded and threads != BANDS:
        raise InvalidConfig(f"banded execution runs on {BANDS} threads, got threads={threads}")
    find_compiler()
    target = resolve_isa(isa)
    # banded: the trunk at band height, each band's kernels on one thread
    graph, plan = (_lower_banded(model, example_input, masks) if banded
                   else (lower_model(model, example_input, masks), None))
    kernel_threads = 1 if banded else threads
    chosen: dict[str, KernelConfig] = {}
    if tune:
        from compiler_backend.tuning.ga import tune_graph

        cfg = tune if isinstance(tune, TuningConfig) else TuningConfig()
        chosen.update(tune_graph(graph, target, kernel_threads, cfg, cache_dir=cache_dir))
    chosen.update(configs or {})
    program = generate(graph, target, kernel_threads, chosen, bands=plan)
    compiled = _load(graph, program, threads, target.name, adaptive_threads, cache_dir)
    if verify:
        try:
            verify_compiled(compiled, model, example_input, masks)
        except BackendError as exc:  # a C compiler fault, or ours: once more, safer flags
            warnings.warn(f"{exc} Rebuilding it with {' '.join(SAFETY_FLAGS)}.",
                          SafetyRetryWarning, stacklevel=2)
            compiled = _load(graph, program, threads, target.name, adaptive_threads, cache_dir,
                             safe=True)
            verify_compiled(compiled, model, example_input, masks)
    return compiled


def _lower_banded(model: nn.Module, x: torch.Tensor,
                  masks: Mapping[str, torch.Tensor] | None) -> tuple[Graph, BandPlan]:
    """The graph of ``model`` at band height (``compiler_backend.bands``) and its band plan."""
    if x.dim() != 4:
        raise InvalidConfig(f"banded execution needs an image input [N, C, H, W], got "
                            f"{tuple(x.shape)}")
    c, h, w = (int(d) for d in x.shape[1:])
    try:
        graph = lower_model(model, x[:, :, :h // BANDS], masks)
    except InvalidModel as exc:  # e.g. more stride-2 steps than a band has rows
        raise InvalidConfig(f"banded execution runs the model on bands of {h // BANDS} rows, "
                            f"and it does not fit them ({exc}); compile it without bands") from None
    return graph, plan_bands(graph, (c, h, w))


def _load(graph: Graph, program: Program, threads: int, isa: str, adaptive_threads: bool,
          cache_dir: Path | None, safe: bool = False) -> CompiledModel:
    artifact = compile_source(program.source, program.line_map, cache=cache_dir, safe=safe)
    try:
        return CompiledModel(graph, program, artifact, threads, isa, adaptive_threads)
    except OSError as exc:
        raise BackendError(f"cannot load compiled model {artifact.path}: {exc}") from None
