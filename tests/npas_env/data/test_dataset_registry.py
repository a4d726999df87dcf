from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from npas_env.data import DataSplits, as_loader, check_dataset, dataset_names, load_dataset
from npas_env.errors import EvaluatorNotFound, InvalidData


def _splits(n: int = 4, shape: tuple[int, ...] = (3, 8, 8), classes: int = 3) -> DataSplits:
    ds = TensorDataset(torch.randn(n, *shape), torch.arange(n) % classes)
    return DataSplits.from_datasets(ds, ds, ds, num_classes=classes)


def _model(in_features: int = 3 * 8 * 8, classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, classes))


def test_known_names() -> None:
    assert {"digits", "cifar10", "cifar100"} <= set(dataset_names())


def test_unknown_name_suggests() -> None:
    with pytest.raises(EvaluatorNotFound, match="did you mean 'cifar10'") as info:
        load_dataset("cifar-10")
    assert info.value.kind == "dataset" and isinstance(info.value, KeyError)


def test_user_dataset_infers_shape_and_fits() -> None:
    splits = _splits()
    assert splits.input_shape == (3, 8, 8)
    check_dataset(splits, _model())
    assert isinstance(as_loader(splits.train, 2), DataLoader)
    loader = DataLoader(splits.train, batch_size=2)
    assert as_loader(loader) is loader
    from_loaders = DataSplits.from_datasets(loader, loader, loader, num_classes=3)
    assert from_loaders.input_shape == (3, 8, 8) and from_loaders.sizes()["test"] == 4
    check_dataset(from_loaders, _model())


def test_check_dataset_rejects_mismatches() -> None:
    full = _splits()
    empty = TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0))
    with pytest.raises(InvalidData, match="train split.*empty"):
        check_dataset(DataSplits(empty, full.val, full.test, 3, (3, 8, 8)), _model())
    with pytest.raises(InvalidData, match="3 classes"):
        check_dataset(_splits(), _model(classes=5))
    with pytest.raises(InvalidData, match="does not accept inputs"):
        check_dataset(_splits(), _model(in_features=10))
    wrong = _splits()
    with pytest.raises(InvalidData, match="sample shape"):
        check_dataset(DataSplits(wrong.train, wrong.val, wrong.test, 3, (1, 8, 8)), _model())
    with pytest.raises(InvalidData, match="num_classes"):
        DataSplits(wrong.train, wrong.val, wrong.test, 0, (3, 8, 8))
