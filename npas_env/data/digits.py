"""The handwritten digits scikit-learn ships, shaped like CIFAR (real data, no download).

``sklearn.datasets.load_digits`` holds 1,797 8x8 grey images (values 0..16) of the digits 0-9.
They are upsampled to 32x32 (bilinear), repeated to 3 channels and normalized with the train
split's mean / std, so every zoo model built for CIFAR runs on them unchanged.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F

from npas_env.data.splits import DataSplits, ImageTensorDataset, stratified_indices

if TYPE_CHECKING:
    from sklearn.utils import Bunch

#: Default train / validation / test fractions.
DIGITS_FRACTIONS = (0.6, 0.2, 0.2)


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images [1797, 8, 8] in 0..16, labels [1797])`` from scikit-learn's bundled CSV.

    The file is read directly (importing ``sklearn.datasets`` pulls in scipy and takes seconds);
    ``sklearn.datasets.load_digits`` is the fallback if the file moved.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for root in locations:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.float32)
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = cast("Bunch", sk_load_digits())  # the inferred type also allows the return_X_y tuple
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=2)
def _digits_tensors(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    raw_images, raw_labels = _read_digits()
    images = torch.from_numpy(raw_images).unsqueeze(1) / 16.0  # [N, 1, 8, 8] in [0, 1]
    if size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0), torch.from_numpy(raw_labels)


def load_digits(*, seed: int = 0, fractions: tuple[float, float, float] = DIGITS_FRACTIONS,
                size: int = 32, channels: int = 3) -> DataSplits:
    """Load scikit-learn's digits as RGB-shaped 32x32 images with stratified splits.

    Args:
        seed: seeds the stratified split (the same seed always gives the same split).
        fractions: train / val / test fractions (sum 1); default 60 / 20 / 20
            (1,078 / 359 / 360 images).
        size: output height and width in pixels (8 keeps the originals).
        channels: the grey image is repeated this many times.

    Returns:
        DataSplits with float32 items of shape ``[channels, size, size]``, normalized with the
        train split's statistics, and ``num_classes == 10``.
    """
    images, labels = _digits_tensors(size)
    train_idx, val_idx, test_idx = stratified_indices(labels, fractions, seed)
    mean = float(images[train_idx].mean())
    std = float(images[train_idx].std())
    normed = ((images - mean) / std).expand(-1, channels, -1, -1)

    def part(idx: torch.Tensor) -> ImageTensorDataset:
        return ImageTensorDataset(normed[idx].contiguous(), labels[idx])

    return DataSplits(part(train_idx), part(val_idx), part(test_idx), num_classes=10,
                      input_shape=(channels, size, size), name="digits")
