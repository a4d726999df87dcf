"""The package's exception tree.

Every error raised on misuse derives from :class:`NpasError` and from the matching builtin, so
callers can catch either ``NpasError`` or e.g. ``ValueError``. Faults *measured* by evaluators are
never raised: they come back as result objects carrying an ``error`` string.
"""

from __future__ import annotations

import difflib


class NpasError(Exception):
    """Root of every error this package raises on purpose."""


class InvalidAction(NpasError, ValueError):
    """An action or plan entry is outside the search space or masked for the layer."""


class InvalidPlan(NpasError, ValueError):
    """A plan does not fit the model (wrong length, other model, unreadable file)."""


class InvalidModel(NpasError, ValueError):
    """The model cannot be used: untraceable, no prunable layers, bad example input."""


class InvalidConfig(NpasError, ValueError):
    """A configuration value is out of range (e.g. a latency budget <= 0)."""


class InvalidData(NpasError, ValueError):
    """A dataset is empty, unreadable or does not match the model."""


class EvaluatorNotFound(NpasError, KeyError):
    """No evaluator (or model, agent, dataset) is registered under the requested name.

    Given ``known`` names, the closest one is suggested ("did you mean ...?").
    """

    def __init__(self, name: str, *, kind: str = "evaluator", known: list[str] | None = None,
                 suggestion: str | None = None) -> None:
        if suggestion is None and known:
            close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
            suggestion = close[0] if close else None
        self.name, self.kind, self.suggestion = name, kind, suggestion
        msg = f"unknown {kind} {name!r}"
        if suggestion:
            msg += f"; did you mean {suggestion!r}?"
        if known:
            msg += f" Known: {', '.join(sorted(known))}."
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the whole message otherwise
        return str(self.args[0])


class BackendError(NpasError, RuntimeError):
    """The compiler backend failed (no C compiler, compile error, bad artifact)."""


class CacheError(NpasError, RuntimeError):
    """An evaluation cache file is corrupt, foreign or from an incompatible version."""


class MissingDependency(NpasError, ImportError):
    """An optional dependency is missing; the message names the ``pip install`` extra."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"{package} is required for this feature: pip install 'npas-env[{extra}]'")
