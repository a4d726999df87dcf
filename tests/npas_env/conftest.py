"""Fixtures shared by the env-package tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from npas_env.zoo import build_model
from npas_env.zoo.pretrained import _save_checkpoint, checkpoint_path


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir with an untrained small_cnn where ``pretrained`` looks (training takes minutes)."""
    root = tmp_path_factory.mktemp("zoo-cache")
    torch.manual_seed(0)
    path = checkpoint_path("small_cnn", "digits", cache_dir=root / "pretrained")
    _save_checkpoint(path, "small_cnn", build_model("small_cnn", num_classes=10), 10, {})
    return root
