"""Dataset splits, an in-memory image dataset, and seeded loaders.

Every dataset the package hands out is a :class:`DataSplits`: three ``torch.utils.data.Dataset``
objects whose items are ``(image, label)`` with ``image`` a float32 tensor of ``input_shape``
(C, H, W) and ``label`` an int64 scalar in ``[0, num_classes)``. User datasets and loaders plug in
through :meth:`DataSplits.from_datasets` and :func:`as_loader`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from npas_env.errors import InvalidData


class ImageTensorDataset(Dataset):
    """Images kept as one tensor, normalized per channel on access.

    Args:
        images: ``[N, C, H, W]`` uint8 (scaled by 1/255 on access) or float32 (used as is).
        labels: ``[N]`` integer class ids.
        mean, std: per-channel normalization applied on access; None keeps the values.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
            raise InvalidData(f"expected images [N, C, H, W] and labels [N], got "
                              f"{tuple(images.shape)} and {tuple(labels.shape)}")
        self.images, self.labels = images, labels.to(torch.int64)
        channels = images.shape[1]
        self._mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(channels, 1, 1)
        self._std = None if std is None else torch.tensor(std, dtype=torch.float32).view(channels, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[idx]
        img = img.float().div_(255.0) if img.dtype == torch.uint8 else img.float()
        if self._mean is not None and self._std is not None:
            img = (img - self._mean) / self._std
        return img, self.labels[idx]


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train / validation / test datasets of one classification task.

    Attributes:
        train, val, test: map-style datasets of ``(float32 image [C, H, W], int64 label)``, or
            user DataLoaders yielding batches of them (used as they are by :func:`as_loader`).
        num_classes: labels lie in ``[0, num_classes)``.
        input_shape: the shape of one image, (C, H, W).
        name: a short dataset name (part of pretrained-model cache keys).
    """

    train: Dataset | DataLoader
    val: Dataset | DataLoader
    test: Dataset | DataLoader
    num_classes: int
    input_shape: tuple[int, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise InvalidData(f"num_classes must be >= 1, got {self.num_classes}")
        if not self.input_shape or any(int(d) < 1 for d in self.input_shape):
            raise InvalidData(f"input_shape must be positive dims like (3, 32, 32), got "
                              f"{self.input_shape!r}")
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """A zero batch of shape ``[batch_size, *input_shape]`` for tracing models."""
        return torch.zeros(batch_size, *self.input_shape)

    def sizes(self) -> dict[str, int]:
        """Number of samples per split (``-1`` for datasets without ``__len__``)."""
        return {k: _len(getattr(self, k)) for k in ("train", "val", "test")}

    @classmethod
    def from_datasets(cls, train: Dataset | DataLoader, val: Dataset | DataLoader,
                      test: Dataset | DataLoader, *, num_classes: int,
                      input_shape: Sequence[int] | None = None,
                      name: str = "custom") -> DataSplits:
        """Wrap user datasets or loaders; ``input_shape`` defaults to the first sample's shape."""
        if input_shape is None:
            try:
                input_shape = tuple(first_sample(train)[0].shape)
            except Exception as exc:
                raise InvalidData(f"cannot infer input_shape from train[0]: {exc}. Pass "
                                  "input_shape=(C, H, W) or yield (image tensor, label) items.") from None
        return cls(train, val, test, num_classes, tuple(input_shape), name)


def _len(data: Dataset | DataLoader) -> int:
    try:
        return len(data.dataset if isinstance(data, DataLoader) else data)  # type: ignore[arg-type]
    except TypeError:
        return -1


def first_sample(data: Dataset | DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``(input, label)`` item of a dataset, or of a loader's first batch."""
    if isinstance(data, DataLoader):
        inputs, labels = next(iter(data))[:2]
        return inputs[0], labels[0]
    item = data[0]
    return item[0], item[1]


def make_loader(dataset: Dataset, batch_size: int = 128, *, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A single-process DataLoader whose order depends only on ``seed`` (when shuffling).

    Args:
        dataset: any map-style dataset of ``(input, label)`` items.
        batch_size: samples per batch (>= 1).
        shuffle: reshuffle every epoch with a generator seeded by ``seed``.
        seed: seeds the shuffling order; epoch ``e`` of two loaders with the same seed match.
        drop_last: drop the last incomplete batch.
    """
    if batch_size < 1:
        raise InvalidData(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      drop_last=drop_last, num_workers=0)


def as_loader(data: Dataset | DataLoader, batch_size: int = 128, *, shuffle: bool = False,
              seed: int = 0) -> DataLoader:
    """Return ``data`` if it already is a DataLoader, else :func:`make_loader` over it."""
    if isinstance(data, DataLoader):
        return data
    if not isinstance(data, Dataset) and not hasattr(data, "__getitem__"):
        raise InvalidData(f"expected a torch Dataset or DataLoader, got {type(data).__name__}")
    return make_loader(data, batch_size, shuffle=shuffle, seed=seed)


def stratified_indices(labels: Sequence[int] | torch.Tensor, fractions: Sequence[float],
                       seed: int) -> list[torch.Tensor]:
    """Split ``range(len(labels))`` into parts of the given fractions, stratified by label.

    Each class is shuffled with a generator seeded by ``seed`` and cut at the rounded cumulative
    fractions, so every part holds about ``fraction`` of every class. Deterministic in ``seed``.

    Returns:
        One sorted int64 index tensor per fraction; every index lands in exactly one part.
    """
    import numpy as np

    if abs(sum(fractions) - 1.0) > 1e-6 or any(f <= 0 for f in fractions):
        raise InvalidData(f"split fractions must be > 0 and sum to 1, got {list(fractions)}")
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    bounds = np.cumsum([0.0, *fractions])
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        cuts = np.round(bounds * len(idx)).astype(int)
        for i in range(len(fractions)):
            parts[i].append(idx[cuts[i]:cuts[i + 1]])
    return [torch.as_tensor(np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64),
                            dtype=torch.int64) for p in parts]
