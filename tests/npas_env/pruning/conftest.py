"""Shared fixtures for the pruning tests: tiny tensors, one thread."""

from __future__ import annotations

import pytest
import torch



@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)
