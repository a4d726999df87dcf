"""CIFAR-10 / CIFAR-100 from a local copy of the python-pickle batches (never downloaded).

Expected layout (as extracted from ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``)::

    <root>/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch   (or <root> itself)
    <root>/cifar-100-python/train, test                                     (or <root> itself)

Each file is a pickled dict with ``b"data"`` (uint8 ``[N, 3072]``, RGB planes of 32x32) and
``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` / ``b"coarse_labels"`` (CIFAR-100).

Security: pickles can run code when loaded. The files are read with a restricted unpickler that
only resolves the numpy array reconstruction helpers and ``_codecs.encode``; anything else in the
file raises :class:`InvalidData` instead of being imported.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npas_env.data.splits import DataSplits, ImageTensorDataset, stratified_indices
from npas_env.errors import InvalidData

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def read_batch(path: str | Path, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR pickle batch.

    Args:
        path: the batch file.
        label_key: ``"labels"`` (CIFAR-10), ``"fine_labels"`` or ``"coarse_labels"`` (CIFAR-100).

    Returns:
        ``(images uint8 [N, 3, 32, 32], labels int64 [N])``.

    Raises:
        InvalidData: the file is missing, not a CIFAR pickle, or has malformed contents.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidData(f"CIFAR batch file {str(path)!r} does not exist")
    try:
        with path.open("rb") as fh:
            batch = _RestrictedUnpickler(fh, encoding="bytes").load()
    except Exception as exc:
        raise InvalidData(f"{str(path)!r} is not a readable CIFAR python-pickle batch "
                          f"({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise InvalidData(f"{str(path)!r}: expected a pickled dict, got {type(batch).__name__}")
    data, labels = _get(batch, "data"), _get(batch, label_key)
    if data is None or labels is None:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in batch)
        raise InvalidData(f"{str(path)!r}: expected keys b'data' and b'{label_key}', found {keys}")
    return _check_arrays(path, data, labels)


def _get(batch: dict[Any, Any], key: str) -> Any:
    return batch.get(key.encode(), batch.get(key))


def _check_arrays(path: Path, data: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise InvalidData(f"{str(path)!r}: b'data' must be uint8 of shape [N, 3072], got "
                          f"{data.dtype} {data.shape}")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidData(f"{str(path)!r}: labels must be {len(data)} integers, got "
                          f"{labels.dtype} {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise InvalidData(f"{str(path)!r}: negative label {int(labels.min())}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _resolve_dir(root: str | Path | None, subdir: str, marker: str, env: str) -> Path:
    if root is None:
        root = os.environ.get(env) or os.environ.get("NPAS_DATA_DIR")
    if root is None:
        raise InvalidData(f"no CIFAR directory given: pass root='/path/to/{subdir}' (or its parent) "
                          f"or set ${env}. The package never downloads data.")
    root = Path(root).expanduser()
    for cand in (root, root / subdir):
        if (cand / marker).is_file():
            return cand
    raise InvalidData(f"{str(root)!r} does not contain the CIFAR python batches: expected "
                      f"{marker!r} in it or in {str(root / subdir)!r} (extract "
                      f"the official '*-python.tar.gz' archive there)")


def _splits(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
            num_classes: int, mean: tuple[float, ...], std: tuple[float, ...], name: str,
            val_fraction: float, seed: int) -> DataSplits:
    for labels, which in ((train[1], "train"), (test[1], "test")):
        if len(labels) and labels.max() >= num_classes:
            raise InvalidData(f"{name} {which} label {int(labels.max())} >= {num_classes} classes")
    if not 0.0 < val_fraction < 1.0:
        raise InvalidData(f"val_fraction must be in (0, 1), got {val_fraction}")
    images, labels = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    train_idx, val_idx = stratified_indices(labels, (1.0 - val_fraction, val_fraction), seed)

    def part(x: torch.Tensor, y: torch.Tensor) -> ImageTensorDataset:
        return ImageTensorDataset(x.contiguous(), y, mean, std)

    return DataSplits(part(images[train_idx], labels[train_idx]),
                      part(images[val_idx], labels[val_idx]),
                      part(torch.from_numpy(test[0]), torch.from_numpy(test[1])),
                      num_classes=num_classes, input_shape=(3, 32, 32), name=name)


def load_cifar10(root: str | Path | None = None, *, val_fraction: float = 0.1,
                 seed: int = 0) -> DataSplits:
    """Load CIFAR-10 from ``root`` (``cifar-10-batches-py`` or its parent).

    Args:
        root: the directory; defaults to ``$NPAS_CIFAR10_DIR`` then ``$NPAS_DATA_DIR``.
        val_fraction: part of the 50k training images held out (stratified) as validation.
        seed: seeds the train / validation split.

    Raises:
        InvalidData: the directory, a batch file or its contents are missing or malformed.
    """
    folder = _resolve_dir(root, "cifar-10-batches-py", "data_batch_1", "NPAS_CIFAR10_DIR")
    parts = [read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    test = read_batch(folder / "test_batch")
    return _splits(train, test, 10, CIFAR10_MEAN, CIFAR10_STD, "cifar10", val_fraction, seed)


def load_cifar100(root: str | Path | None = None, *, val_fraction: float = 0.1, seed: int = 0,
                  label: str = "fine") -> DataSplits:
    """Load CIFAR-100 from ``root`` (``cifar-100-python`` or its parent).

    Args:
        root: the directory; defaults to ``$NPAS_CIFAR100_DIR`` then ``$NPAS_DATA_DIR``.
        val_fraction: part of the 50k training images held out (stratified) as validation.
        seed: seeds the train / validation split.
        label: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).

    Raises:
        InvalidData: the directory, a batch file or its contents are missing or malformed.
    """
    if label not in ("fine", "coarse"):
        raise InvalidData(f"label must be 'fine' or 'coarse', got {label!r}")
    folder = _resolve_dir(root, "cifar-100-python", "train", "NPAS_CIFAR100_DIR")
    key = f"{label}_labels"
    train, test = read_batch(folder / "train", key), read_batch(folder / "test", key)
    num_classes = 100 if label == "fine" else 20
    name = "cifar100" if label == "fine" else "cifar100-coarse"
    return _splits(train, test, num_classes, CIFAR100_MEAN, CIFAR100_STD, name, val_fraction, seed)
