"""Datasets: scikit-learn's digits (bundled), CIFAR-10/100 from local pickles, user datasets."""

from npas_env.data.augment import random_crop
from npas_env.data.cifar import load_cifar10, load_cifar100, read_batch
from npas_env.data.digits import load_digits
from npas_env.data.registry import check_dataset, dataset_names, load_dataset, register_dataset
from npas_env.data.splits import (
    DataSplits,
    ImageTensorDataset,
    as_loader,
    first_sample,
    make_loader,
    stratified_indices,
)

__all__ = [
    "DataSplits", "ImageTensorDataset", "as_loader", "check_dataset", "dataset_names",
    "first_sample", "load_cifar10", "load_cifar100", "load_dataset", "load_digits", "make_loader",
    "random_crop", "read_batch", "register_dataset", "stratified_indices",
]
