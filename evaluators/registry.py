"""Name -> evaluator factories, for built-ins (decorators) and plugins (entry points).

Third parties register by declaring, in their own ``pyproject.toml``::

    [project.entry-points."npas_env.latency"]
    mydevice = "my_pkg.latency:MyDeviceLatency"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from npas_env.errors import EvaluatorNotFound, NpasError

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# Modules whose import registers the built-in evaluators.
_BUILTIN_MODULES = {
    "accuracy": ("evaluators.accuracy.proxy", "evaluators.accuracy.oneshot",
                 "evaluators.accuracy.zeroshot", "npas_env.tabular", "evaluators.faulty"),
    "latency": ("evaluators.latency.analytic", "evaluators.latency.compiled",
                "evaluators.latency.lut", "evaluators.latency.predictor",
                "evaluators.latency.remote", "npas_env.tabular", "evaluators.faulty"),
}


class Registry(Generic[T]):
    """A named collection of factories with an entry-point group."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind, self.group = kind, group
        self._factories: dict[str, Callable[..., T]] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register ``factory`` (usually the evaluator class) and return it unchanged."""
        def decorator(factory: F) -> F:
            self._factories[name] = factory
            return factory
        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in _BUILTIN_MODULES.get(self.kind, ()):
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:  # a real missing dependency, not a not-yet-built module
                    raise
        for ep in entry_points(group=self.group):
            self._factories.setdefault(ep.name, _lazy(ep))

    def names(self) -> list[str]:
        self._load()
        return sorted(self._factories)

    def make(self, name: str, **kwargs: Any) -> T:
        """Build the evaluator registered as ``name`` with ``kwargs``.

        Raises:
            EvaluatorNotFound: no such name (the message suggests the closest one).
        """
        self._load()
        if not isinstance(name, str) or name not in self._factories:
            raise EvaluatorNotFound(str(name), kind=f"{self.kind} evaluator",
                                    known=list(self._factories))
        try:
            return self._factories[name](**kwargs)
        except TypeError as exc:
            raise NpasError(f"cannot build {self.kind} evaluator {name!r} with {kwargs}: {exc}") from None


def _lazy(ep: Any) -> Callable[..., Any]:
    def factory(**kwargs: Any) -> Any:
        return ep.load()(**kwargs)
    return factory


ACCURACY: Registry[Any] = Registry("accuracy", "npas_env.accuracy")
LATENCY: Registry[Any] = Registry("latency", "npas_env.latency")
register_accuracy = ACCURACY.register
register_latency = LATENCY.register


def make_accuracy(name: str, **kwargs: Any) -> Any:
    """Build an accuracy evaluator by registered name (built-in or plugin)."""
    return ACCURACY.make(name, **kwargs)


def make_latency(name: str, **kwargs: Any) -> Any:
    """Build a latency evaluator by registered name (built-in or plugin)."""
    return LATENCY.make(name, **kwargs)
