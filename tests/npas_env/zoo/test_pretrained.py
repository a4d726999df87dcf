from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest
import torch

from npas_env.errors import InvalidModel
from npas_env.zoo import TrainRecipe, checkpoint_path, pretrained, pretrained_info

pretrained_module = importlib.import_module("npas_env.zoo.pretrained")

TINY = TrainRecipe(epochs=1, lr=0.05, batch_size=32, max_batches_per_epoch=3)
KW = {"model_kwargs": {"width": 4}, "recipe": TINY, "progress": False}


def _train(cache: Path, **extra: object) -> torch.nn.Module:
    return pretrained("small_cnn", "digits", cache_dir=cache, **{**KW, **extra})  # type: ignore[arg-type]


def _forbid_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained although a checkpoint was cached")
    monkeypatch.setattr(pretrained_module, "_train_model", fail)


def test_trains_once_then_loads_from_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _train(tmp_path)
    path = checkpoint_path("small_cnn", cache_dir=tmp_path, recipe=TINY, model_kwargs={"width": 4})
    assert path.is_file() and path.with_suffix(".json").is_file()
    info = pretrained_info("small_cnn", cache_dir=tmp_path, recipe=TINY, model_kwargs={"width": 4})
    assert info is not None and 0.0 <= info["test_accuracy"] <= 1.0
    assert info["train_seconds"] > 0 and info["steps"] == 3 and info["seed"] == 0
    mtime = os.stat(path).st_mtime_ns
    _forbid_training(monkeypatch)
    second = _train(tmp_path)
    assert not second.training and os.stat(path).st_mtime_ns == mtime
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    ckpt = torch.load(path, weights_only=True)  # plain tensors and primitives only
    assert ckpt["model"] == "small_cnn" and ckpt["num_classes"] == 10


def test_deterministic_given_seed(tmp_path: Path) -> None:
    a, b = _train(tmp_path / "a"), _train(tmp_path / "b")
    c = _train(tmp_path / "c", seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.classifier.weight, c.classifier.weight)


def test_default_cache_dir_is_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPAS_CACHE_DIR", str(tmp_path))
    path = checkpoint_path("resnet20")
    assert path.parent == tmp_path / "pretrained" and path.suffix == ".pt"
    assert pretrained_info("resnet20") is None
    assert checkpoint_path("resnet20", seed=1) != path
    assert checkpoint_path("resnet20", recipe=TINY) != path
    assert checkpoint_path("resnet20", "cifar10", dataset_kwargs={"root": "/x"}) == \
        checkpoint_path("resnet20", "cifar10", dataset_kwargs={"root": "/y"})


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = checkpoint_path("small_cnn", cache_dir=tmp_path, recipe=TINY, model_kwargs={"width": 4})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"garbage")
    with monkeypatch.context() as m:
        _forbid_training(m)
        with pytest.raises(InvalidModel, match="unreadable.*retrain_corrupt=True"):
            _train(tmp_path)
    assert path.read_bytes() == b"garbage"  # never silently overwritten
    with pytest.warns(UserWarning, match="retraining"):
        _train(tmp_path, retrain_corrupt=True)
    assert torch.load(path, weights_only=True)["model"] == "small_cnn"


class _Payload:
    pass


def test_foreign_or_unsafe_checkpoint_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = checkpoint_path("small_cnn", cache_dir=tmp_path, recipe=TINY, model_kwargs={"width": 4})
    path.parent.mkdir(parents=True, exist_ok=True)
    _forbid_training(monkeypatch)
    torch.save({"payload": _Payload()}, path)  # needs arbitrary unpickling: refused
    with pytest.raises(InvalidModel, match="unreadable"):
        _train(tmp_path)
    torch.save({"format": "npas-pretrained/1", "model": "resnet20", "num_classes": 10,
                "model_kwargs": {}, "state_dict": {}}, path)
    with pytest.raises(InvalidModel, match="not a npas-pretrained/1 checkpoint of 'small_cnn'"):
        _train(tmp_path)
    torch.save({"format": "npas-pretrained/1", "model": "small_cnn", "num_classes": 10,
                "model_kwargs": {}, "state_dict": {"bogus": torch.zeros(1)}}, path)
    with pytest.raises(InvalidModel, match="does not fit"):
        _train(tmp_path)
