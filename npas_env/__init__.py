"""npas-env: a Gymnasium environment for compiler-aware pruning and architecture search (NPAS)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from npas_env.errors import (
    BackendError,
    CacheError,
    EvaluatorNotFound,
    InvalidAction,
    InvalidConfig,
    InvalidData,
    InvalidModel,
    InvalidPlan,
    NpasError,
)
from npas_env.layers import LayerKind, LayerSpec, analyze_model, extract_layers, layers_fingerprint
from npas_env.plan import FilterType, LayerAction, PruningPlan, Scheme
from npas_env.search_space import SearchSpace

if TYPE_CHECKING:  # static view of the lazy exports in __getattr__
    from npas_env.env import NPASEnv
    from npas_env.pruning import apply_plan

__version__ = "0.1.0"

__all__ = [
    "BackendError", "CacheError", "EvaluatorNotFound", "FilterType", "InvalidAction",
    "InvalidConfig", "InvalidData", "InvalidModel", "InvalidPlan", "LayerAction", "LayerKind",
    "LayerSpec", "NPASEnv", "NpasError", "PruningPlan", "Scheme", "SearchSpace", "__version__",
    "analyze_model", "apply_plan", "extract_layers", "layers_fingerprint",
]


def __getattr__(name: str) -> Any:
    # Lazy: the env and pruning pull in the evaluators, which import this package's records.
    if name == "NPASEnv":
        from npas_env.env import NPASEnv

        return NPASEnv
    if name == "apply_plan":
        from npas_env.pruning import apply_plan

        return apply_plan
    raise AttributeError(f"module 'npas_env' has no attribute {name!r}")


def _register() -> None:
    from npas_env.registration import register_envs

    register_envs()


_register()
