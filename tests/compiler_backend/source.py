"""Reading generated C in tests."""

from __future__ import annotations

import re

from compiler_backend.compile import CompiledModel


def unflagged(source: str) -> str:
    """Generated C with each template copy named by its template: the suffixes of the flags
    written in (``compiler_backend.flags``: ``sk_p8_v3_act1_hr0`` -> ``sk_p8_v3``) dropped, so
    tests can ask which kernels a model runs."""
    return re.sub(r"(?:_(?:act|eact|hr)\d+)+(?=\()", "", source)


def kernel_source(cm: CompiledModel) -> str:
    """``unflagged`` source of ``cm``."""
    return unflagged(cm.program.source)
