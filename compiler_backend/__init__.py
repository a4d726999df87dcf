"""Sparse-aware C code generation backend: one generated, gcc-compiled library per model.

``compile_model(model, example_input, masks)`` lowers the fx graph (BN folded, activations and
residual adds fused), packs every conv / linear layer into the row-block sparse format detected
from its mask (dense, filter, block, pattern, unstructured), generates AVX-512 / AVX2 / NEON /
portable C kernels, compiles them once (cached by hash) and returns a :class:`CompiledModel`.
"""

from compiler_backend.compile import compile_model, lower_model, resolve_isa
from compiler_backend.export import ExportedModel, export_c
from compiler_backend.runtime import CompiledModel, CompileReport, LayerReport, OpReport, Timing
from compiler_backend.tuning.base import KernelConfig, TuningConfig

__all__ = [
    "CompileReport",
    "CompiledModel",
    "ExportedModel",
    "KernelConfig",
    "LayerReport",
    "OpReport",
    "Timing",
    "TuningConfig",
    "compile_model",
    "export_c",
    "lower_model",
    "resolve_isa",
]
