"""Gymnasium ids for the shipped zoo models (``gymnasium.make("npas/NPAS-v0")``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym
import torch

if TYPE_CHECKING:
    from npas_env.env import NPASEnv


#: id -> zoo model name. Bump the version whenever observation, action or reward meaning changes.
ZOO_ENV_IDS: dict[str, str] = {
    "npas/NPAS-v0": "small_cnn",
    "npas/PruneSmallCNN-v0": "small_cnn",
    "npas/PruneResNet20-v0": "resnet20",
    "npas/PruneResNet56-v0": "resnet56",
    "npas/PruneVGG16-v0": "vgg16",
    "npas/PruneMobileNetV2-v0": "mobilenetv2",
}


def make_zoo_env(model_name: str = "small_cnn", dataset: str = "digits", *, pretrained: bool = True,
                 seed: int = 0, **env_kwargs: Any) -> NPASEnv:
    """An :class:`NPASEnv` over a zoo model (pretrained on ``dataset``, trained on first use).

    Args:
        model_name: zoo model name (``small_cnn``, ``resnet20``, ...).
        dataset: dataset the starting point is trained on (``digits`` is embedded).
        pretrained: False builds randomly initialised weights (fast, for smoke tests).
        seed: seed of the pretrained starting point.
        **env_kwargs: passed to :class:`NPASEnv` (accuracy, latency, reward, budget, ...).
    """
    from npas_env.data import load_dataset
    from npas_env.env import NPASEnv
    from npas_env.zoo import build_model
    from npas_env.zoo import pretrained as load_pretrained

    splits = load_dataset(dataset)
    if pretrained:
        model = load_pretrained(model_name, dataset, seed=seed)
    else:
        torch.manual_seed(seed)
        model = build_model(model_name, num_classes=splits.num_classes)
    accuracy = env_kwargs.get("accuracy", "proxy")
    if accuracy in ("oneshot", "zeroshot"):
        env_kwargs.setdefault("accuracy_kwargs", {}).setdefault("dataset", splits)
    example = torch.zeros(1, *splits.input_shape)
    return NPASEnv(model.eval(), example, model_name=f"{model_name}@{dataset}", **env_kwargs)


def register_envs() -> None:
    """Register every zoo env id (idempotent)."""
    for env_id, model_name in ZOO_ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="npas_env.registration:make_zoo_env",
                         kwargs={"model_name": model_name})
    from npas_env.tabular import register_tabular_envs

    register_tabular_envs()
