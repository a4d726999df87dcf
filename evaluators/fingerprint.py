"""Content hashes of model weights (for cache keys)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch


def fingerprint_state(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (first 16 hex digits) of a state dict's names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]
