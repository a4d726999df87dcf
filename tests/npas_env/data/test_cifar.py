from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from npas_env.data import load_cifar10, load_cifar100, load_dataset, read_batch
from npas_env.errors import InvalidData


def _write_batch(path: Path, n: int, label_key: bytes, num_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: [int(v) for v in np.arange(n) % num_classes]}
    with path.open("wb") as fh:
        pickle.dump(batch, fh, protocol=2)


@pytest.fixture()
def cifar10_dir(tmp_path: Path) -> Path:
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        _write_batch(root / f"data_batch_{i}", 20, b"labels", 10, i)
    _write_batch(root / "test_batch", 10, b"labels", 10, 9)
    return root


def test_cifar10_loads_from_dir_or_parent(cifar10_dir: Path) -> None:
    for root in (cifar10_dir, cifar10_dir.parent):
        splits = load_cifar10(root, val_fraction=0.2)
        assert splits.sizes() == {"train": 80, "val": 20, "test": 10}
        assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
        image, label = splits.train[0]
        assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
        assert label.dtype == torch.int64


def test_cifar10_pixel_layout(cifar10_dir: Path) -> None:
    images, labels = read_batch(cifar10_dir / "test_batch")
    with (cifar10_dir / "test_batch").open("rb") as fh:
        raw = pickle.load(fh, encoding="bytes")
    assert images.shape == (10, 3, 32, 32) and images.dtype == np.uint8
    assert np.array_equal(images[3, 1].ravel(), raw[b"data"][3, 1024:2048])
    assert labels.tolist() == raw[b"labels"]


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name, n in (("train", 200), ("test", 20)):
        rng = np.random.default_rng(0)
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [i % 100 for i in range(n)],
                 b"coarse_labels": [i % 20 for i in range(n)]}
        (root / name).write_bytes(pickle.dumps(batch))  # default (newest) protocol
    fine = load_dataset("cifar100", root=tmp_path, val_fraction=0.5)
    assert fine.num_classes == 100 and fine.sizes() == {"train": 100, "val": 100, "test": 20}
    assert load_cifar100(root, label="coarse", val_fraction=0.5).num_classes == 20


def test_missing_dir_and_files_are_clear(tmp_path: Path, cifar10_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NPAS_DATA_DIR", raising=False)
    monkeypatch.delenv("NPAS_CIFAR10_DIR", raising=False)
    with pytest.raises(InvalidData, match="never downloads"):
        load_cifar10()
    with pytest.raises(InvalidData, match="data_batch_1"):
        load_cifar10(tmp_path / "nowhere")
    os.remove(cifar10_dir / "data_batch_3")
    with pytest.raises(InvalidData, match="data_batch_3.*does not exist"):
        load_cifar10(cifar10_dir)


@pytest.mark.parametrize("content, match", [
    (b"not a pickle", "not a readable CIFAR"),
    (pickle.dumps([1, 2, 3]), "expected a pickled dict"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "b'labels'"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"\[N, 3072\]"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "labels must be 2"),
])
def test_malformed_batch_is_invalid_data(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "batch"
    path.write_bytes(content)
    with pytest.raises(InvalidData, match=match):
        read_batch(path)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    with pytest.raises(InvalidData, match="refusing to load global"):
        read_batch(path)
