"""Per-layer auto-tuning of the generated kernels (GA over tile width, P, family, threads)."""

from compiler_backend.tuning.base import KernelConfig, TuningConfig

__all__ = ["KernelConfig", "TuningConfig"]
