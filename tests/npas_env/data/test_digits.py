from __future__ import annotations

import torch

from npas_env.data import DataSplits, load_dataset, load_digits, make_loader, random_crop


def test_digits_shapes_and_sizes() -> None:
    splits = load_digits()
    assert isinstance(splits, DataSplits)
    assert splits.sizes() == {"train": 1078, "val": 360, "test": 359}
    assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
    image, label = splits.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and 0 <= int(label) < 10
    assert torch.equal(image[0], image[2])  # grey repeated to 3 channels


def test_digits_splits_are_stratified_disjoint_and_normalized() -> None:
    splits = load_digits()
    counts = torch.bincount(splits.test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    train = splits.train.images
    assert abs(float(train.mean())) < 1e-3 and abs(float(train.std()) - 1) < 1e-3
    rows = {tuple(x.flatten()[::7].tolist()) for x in splits.test.images}
    overlap = sum(tuple(x.flatten()[::7].tolist()) in rows for x in splits.val.images)
    assert overlap <= 3  # the raw data has a few duplicate images, but the splits are disjoint


def test_digits_deterministic_per_seed() -> None:
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert torch.equal(a.train.labels, b.train.labels) and torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.train.labels, c.train.labels)
    assert torch.equal(load_dataset("digits").val.labels, a.val.labels)


def test_loader_order_depends_only_on_seed() -> None:
    splits = load_digits()
    first = [next(iter(make_loader(splits.train, 16, shuffle=True, seed=s)))[1] for s in (3, 3, 4)]
    assert torch.equal(first[0], first[1]) and not torch.equal(first[0], first[2])


def test_random_crop_shifts_within_padding() -> None:
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, gen)
    assert out.shape == x.shape
    assert random_crop(x, 0, gen) is x
    centre = random_crop(x, 1, torch.Generator().manual_seed(0), mode="constant")
    assert centre.shape == x.shape
