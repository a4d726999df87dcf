"""Shared fixture for the pruning tests (the root conftest already pins torch to one thread)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded generator, so every test draws the same tiny random weights."""
    return torch.Generator().manual_seed(0)
