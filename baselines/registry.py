"""Baselines by name: ``make_baseline("random", seed=0, batch_size=4)`` -> a search method.

Each baseline module exposes a settings dataclass and ``run(problem, budget, seed, settings)``;
:class:`Baseline` binds a seed and settings so the result satisfies ``agents.base.SearchAgent``
(``name`` + ``run(problem, budget) -> Trial | None``) and the benchmark harness can run baselines
and agents alike.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

from npas_env.errors import EvaluatorNotFound, InvalidConfig
from npas_env.problem import SearchProblem, Trial

#: name -> (module, settings class name).
_BASELINES: dict[str, tuple[str, str]] = {
    "random": ("baselines.random_search", "RandomSearchSettings"),
    "uniform": ("baselines.uniform", "UniformSettings"),
    "patdnn": ("baselines.patdnn", "PatDNNSettings"),
    "rule_based": ("baselines.rule_based", "RuleBasedSettings"),
    "bo": ("baselines.bo", "BOSettings"),
    "evolution": ("baselines.evolution", "EvolutionSettings"),
    "amc": ("baselines.amc", "AMCSettings"),
}


@dataclass
class Baseline:
    """A baseline bound to a seed and settings (an ``agents.base.SearchAgent``).

    Attributes:
        name: registered name.
        seed: seed passed to the baseline's ``run``.
        settings: the baseline's settings dataclass instance.
    """

    name: str
    seed: int
    settings: Any

    def run(self, problem: SearchProblem, budget: int) -> Trial | None:
        """Run the baseline on ``problem`` with at most ``budget`` true evaluations."""
        if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
            raise InvalidConfig(f"budget must be a positive number of true evaluations, got {budget!r}")
        module = importlib.import_module(_BASELINES[self.name][0])
        return module.run(problem, budget, self.seed, self.settings)

    def config(self) -> dict[str, Any]:
        """JSON-able description (callables in settings are shown by name)."""
        out: dict[str, Any] = {"name": self.name, "seed": self.seed}
        for f in dataclasses.fields(self.settings):
            value = getattr(self.settings, f.name)
            out[f.name] = value if value is None or isinstance(value, (int, float, str, bool, tuple, list)) \
                else getattr(value, "__qualname__", type(value).__name__)
        return out


def baseline_names() -> list[str]:
    """Registered baseline names, sorted."""
    return sorted(_BASELINES)


def settings_class(name: str) -> type:
    """The settings dataclass of baseline ``name``."""
    module, cls = _lookup(name)
    return getattr(importlib.import_module(module), cls)


def make_baseline(name: str, seed: int = 0, **settings: Any) -> Baseline:
    """A baseline by name with ``settings`` fields overriding its defaults.

    Raises:
        EvaluatorNotFound: unknown name (kind ``"baseline"``, with a did-you-mean suggestion).
        InvalidConfig: a settings field does not exist.
    """
    cls = settings_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise InvalidConfig(f"baseline {name!r} has no settings {unknown}; known: {sorted(fields)}")
    return Baseline(name, int(seed), cls(**settings))


def _lookup(name: str) -> tuple[str, str]:
    try:
        return _BASELINES[name]
    except (KeyError, TypeError):
        raise EvaluatorNotFound(str(name), kind="baseline", known=list(_BASELINES)) from None
