"""Pretrained starting points: trained on first use, then cached.

A checkpoint lives in ``<cache>/<model>_<dataset>_s<seed>_<key>.pt`` (``<cache>`` defaults to
``npas_env.io.cache_dir() / "pretrained"``) where ``key`` hashes the model and its options, the
dataset and its options, the recipe, the seed and the package version. It is written atomically
and read back with ``torch.load(..., weights_only=True)`` (no code runs on load). A JSON file with
the same stem records test / validation accuracy and training time (:func:`pretrained_info`).

Training is deterministic given the seed (model init, data order and augmentation are seeded; the
global RNG state is restored afterwards), up to floating-point differences between machines.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from npas_env.data.augment import random_crop
from npas_env.data.registry import check_dataset, load_dataset
from npas_env.data.splits import DataSplits, as_loader, make_loader
from npas_env.errors import InvalidConfig, InvalidModel
from npas_env.io import atomic_write_bytes, atomic_write_text
from npas_env.io import cache_dir as default_cache_dir
from npas_env.zoo.recipes import TrainRecipe, default_recipe
from npas_env.zoo.registry import build_model
from npas_env.zoo.train import evaluate_accuracy, make_sgd, train_epochs

CHECKPOINT_FORMAT = "npas-pretrained/1"
#: Dataset options that locate data without changing it: left out of the cache key.
_LOCATION_KWARGS = frozenset({"root"})


def package_version() -> str:
    try:
        return version("npas-env")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0+unknown"


def checkpoint_key(name: str, dataset: str = "digits", *, seed: int = 0,
                   recipe: TrainRecipe | None = None, model_kwargs: Mapping[str, Any] | None = None,
                   dataset_kwargs: Mapping[str, Any] | None = None) -> str:
    """The 16-hex-digit hash naming a pretrained checkpoint."""
    recipe = recipe or default_recipe(name, dataset)
    data_kw = {k: v for k, v in (dataset_kwargs or {}).items() if k not in _LOCATION_KWARGS}
    blob = json.dumps({"model": name, "model_kwargs": dict(model_kwargs or {}), "dataset": dataset,
                       "dataset_kwargs": data_kw, "recipe": asdict(recipe), "seed": seed,
                       "version": package_version()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_path(name: str, dataset: str = "digits", *, seed: int = 0,
                    recipe: TrainRecipe | None = None, cache_dir: str | Path | None = None,
                    model_kwargs: Mapping[str, Any] | None = None,
                    dataset_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Where :func:`pretrained` stores (or finds) this checkpoint; the metadata is ``.json``."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "pretrained"
    key = checkpoint_key(name, dataset, seed=seed, recipe=recipe, model_kwargs=model_kwargs,
                         dataset_kwargs=dataset_kwargs)
    return folder / f"{name}_{dataset}_s{seed}_{key}.pt"


def pretrained(name: str, dataset: str = "digits", *, seed: int = 0,
               recipe: TrainRecipe | None = None, cache_dir: str | Path | None = None,
               progress: bool = True, retrain_corrupt: bool = False,
               model_kwargs: Mapping[str, Any] | None = None,
               dataset_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A trained zoo model: loaded from the cache, or trained now and cached.

    Args:
        name: zoo model name (see ``npas_env.zoo.MODELS``).
        dataset: registered dataset name (``"digits"`` needs no files).
        seed: seeds model init, data order and augmentation. The dataset split keeps the
            loader's own default seed (so every model sees the same test set) unless
            ``dataset_kwargs`` sets one.
        recipe: training recipe; default :func:`~npas_env.zoo.recipes.default_recipe`.
        cache_dir: directory holding the checkpoints; default ``cache_dir() / "pretrained"``.
        progress: show a tqdm bar while training.
        retrain_corrupt: if the cached checkpoint is unreadable, retrain and replace it (with a
            warning) instead of raising.
        model_kwargs: options for ``build_model`` (e.g. ``width_mult``); part of the key.
        dataset_kwargs: options for ``load_dataset`` (e.g. ``root``); part of the key except
            ``root``.

    Returns:
        The model in eval mode, on CPU.

    Raises:
        InvalidModel: the cached checkpoint is corrupt or does not fit the model (and
            ``retrain_corrupt`` is False); the message names the file.
        InvalidConfig: training diverged (non-finite loss).
        EvaluatorNotFound: unknown model or dataset name.
    """
    recipe = recipe or default_recipe(name, dataset)
    model_kwargs, dataset_kwargs = dict(model_kwargs or {}), dict(dataset_kwargs or {})
    path = checkpoint_path(name, dataset, seed=seed, recipe=recipe, cache_dir=cache_dir,
                           model_kwargs=model_kwargs, dataset_kwargs=dataset_kwargs)
    if path.exists():
        try:
            return _load_checkpoint(path, name, model_kwargs)
        except InvalidModel as exc:
            if not retrain_corrupt:
                raise
            warnings.warn(f"{exc}; retraining (retrain_corrupt=True)", stacklevel=2)
    splits = load_dataset(dataset, **dataset_kwargs)
    model, meta = _train_model(name, splits, recipe, seed, model_kwargs, progress)
    meta.update(model=name, dataset=dataset, seed=seed, recipe=asdict(recipe),
                model_kwargs=model_kwargs, key=path.stem.rsplit("_", 1)[-1],
                version=package_version(), torch=torch.__version__,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    _save_checkpoint(path, name, model, splits.num_classes, model_kwargs)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2, default=str) + "\n")
    return model.eval()


def pretrained_info(name: str, dataset: str = "digits", *, seed: int = 0,
                    recipe: TrainRecipe | None = None, cache_dir: str | Path | None = None,
                    model_kwargs: Mapping[str, Any] | None = None,
                    dataset_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The metadata recorded when the checkpoint was trained, or None if it was not (yet).

    Keys include ``test_accuracy``, ``val_accuracy`` (fractions), ``train_seconds``, ``params``,
    ``epochs``, ``recipe``, ``seed``, ``version``, ``created``.
    """
    path = checkpoint_path(name, dataset, seed=seed, recipe=recipe, cache_dir=cache_dir,
                           model_kwargs=model_kwargs, dataset_kwargs=dataset_kwargs)
    meta = path.with_suffix(".json")
    if not meta.exists():
        return None
    try:
        return json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModel(f"pretrained metadata {str(meta)!r} is unreadable ({exc}); delete "
                           "it (the checkpoint itself is unaffected)") from None


def _train_model(name: str, splits: DataSplits, recipe: TrainRecipe, seed: int,
                 model_kwargs: dict[str, Any], progress: bool) -> tuple[nn.Module, dict[str, Any]]:
    """Train a fresh model; return it and metadata (accuracies, seconds, params)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(name, num_classes=splits.num_classes, **model_kwargs)
        check_dataset(splits, model)
        loader = splits.train if isinstance(splits.train, DataLoader) else make_loader(
            splits.train, recipe.batch_size, shuffle=True, seed=seed,
            drop_last=len(splits.train) > recipe.batch_size)  # type: ignore[arg-type]
        steps = len(loader) if recipe.max_batches_per_epoch is None else min(
            len(loader), recipe.max_batches_per_epoch)
        optimizer = make_sgd(model, recipe.lr, momentum=recipe.momentum,
                             weight_decay=recipe.weight_decay)
        crop_gen = torch.Generator().manual_seed(seed + 1)
        result = train_epochs(
            model, loader, epochs=recipe.epochs, optimizer=optimizer,
            scheduler=recipe.scheduler(optimizer, steps),
            criterion=nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing),
            augment=lambda x: random_crop(x, recipe.crop_padding, crop_gen),
            max_batches=recipe.max_batches_per_epoch, progress=progress,
            desc=f"pretrain {name}/{splits.name}")
    if not result.ok:
        raise InvalidConfig(f"training {name} on {splits.name} diverged: {result.error}. Lower "
                            f"the recipe's lr (got {recipe.lr}).")
    test_loader, val_loader = as_loader(splits.test, 256), as_loader(splits.val, 256)
    meta = {"test_accuracy": evaluate_accuracy(model, test_loader),
            "val_accuracy": evaluate_accuracy(model, val_loader),
            "train_seconds": round(result.seconds, 3), "train_loss": result.mean_loss,
            "epochs": result.epochs, "steps": result.steps,
            "params": sum(p.numel() for p in model.parameters()),
            "num_classes": splits.num_classes}
    return model, meta


def _save_checkpoint(path: Path, name: str, model: nn.Module, num_classes: int,
                     model_kwargs: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "model": name, "num_classes": num_classes,
                "model_kwargs": model_kwargs, "state_dict": model.state_dict()}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_checkpoint(path: Path, name: str, model_kwargs: dict[str, Any]) -> nn.Module:
    hint = "delete the file to retrain, or pass retrain_corrupt=True"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidModel(f"pretrained checkpoint {str(path)!r} is unreadable "
                           f"({type(exc).__name__}: {str(exc)[:200]}); {hint}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("model") != name:
        raise InvalidModel(f"{str(path)!r} is not a {CHECKPOINT_FORMAT} checkpoint of {name!r}; {hint}")
    model = build_model(name, num_classes=int(ckpt["num_classes"]), **model_kwargs)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except Exception as exc:
        raise InvalidModel(f"pretrained checkpoint {str(path)!r} does not fit {name!r} "
                           f"({str(exc)[:200]}); {hint}") from None
    return model.eval()


