"""``remote``: measure latency on a device running ``npas device-serve`` (HTTP, token auth).

The plan is applied on the client (``apply_plan``); the server receives the zoo model name and
options, the filter-type changes, the pruned weights as raw float32 and the masks as packed bits
(see :mod:`npas_env.device_server`; nothing is pickled), compiles and times the model, and
answers JSON. The server must be able to rebuild the architecture: the context's model must be a
zoo model (``model=`` / ``model_kwargs=`` name it when ``context.name`` is not the zoo name); this
is checked locally by the layer fingerprint before anything is sent.

Every fault (server down, slow, wrong token, garbage answer, oversized request, failed compile)
comes back as ``LatencyResult.failure("remote: ...")``; nothing raises into a search.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from evaluators.context import ModelContext
from evaluators.latency.lut_table import LayerSetting
from evaluators.registry import register_latency
from evaluators.results import LatencyResult
from npas_env.device_server import encode_request
from npas_env.errors import InvalidAction, InvalidConfig, InvalidModel, InvalidPlan, NpasError
from npas_env.plan import FilterType, PruningPlan


class RemoteError(NpasError, RuntimeError):
    """The device server could not be reached or gave an unusable answer."""


def post(url: str, token: str, path: str, body: bytes | None, timeout_s: float) -> dict[str, Any]:
    """One authenticated request; returns the JSON result or raises :class:`RemoteError`."""
    request = urllib.request.Request(url.rstrip("/") + path, data=body,
                                     method="POST" if body is not None else "GET")
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) only
            raw = response.read(16 << 20)
    except urllib.error.HTTPError as exc:
        raise RemoteError(f"server answered {exc.code}: {_error_text(exc)}") from None
    except (urllib.error.URLError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, TimeoutError):
            raise RemoteError(f"timeout after {timeout_s:g} s") from None
        raise RemoteError(f"cannot reach {url}: {reason}") from None
    except TimeoutError:
        raise RemoteError(f"timeout after {timeout_s:g} s") from None
    except OSError as exc:
        raise RemoteError(f"connection failed: {exc}") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RemoteError(f"garbage answer (not JSON): {raw[:80]!r}") from None
    if not isinstance(data, dict) or data.get("ok") is not True:
        raise RemoteError(f"server error: {data.get('error') if isinstance(data, dict) else data!r}")
    return data


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read(65536)).get("error"))
    except Exception:
        return exc.reason if isinstance(exc.reason, str) else "unreadable error body"


@register_latency("remote")
class RemoteLatency:
    """Latency measured by a device server.

    Args:
        url: server base URL, e.g. ``http://127.0.0.1:8765``.
        token: the server's shared secret.
        timeout_s: time limit of one request (connect + measure + answer).
        model: zoo name of the context's model (default ``context.name``).
        model_kwargs: options the zoo model was built with (``num_classes``, ``width``...).
        threads: threads the server measures with.
        rounds: timing rounds on the server.
        send_weights: send the pruned weights (else the server uses seeded weights + the masks;
            the masks carry all sparsity, so latency is the same and requests are smaller).
    """

    name = "remote"

    def __init__(self, url: str, token: str, timeout_s: float = 120.0, *, model: str | None = None,
                 model_kwargs: dict[str, Any] | None = None, threads: int = 1, rounds: int = 5,
                 send_weights: bool = True) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidConfig(f"url must start with http:// or https://, got {url!r}")
        if timeout_s <= 0:
            raise InvalidConfig(f"timeout_s must be > 0, got {timeout_s}")
        self.url, self.token, self.timeout_s = url, token, float(timeout_s)
        self.model, self.model_kwargs = model, dict(model_kwargs or {})
        self.threads, self.rounds, self.send_weights = int(threads), int(rounds), send_weights
        self._checked: dict[str, str | None] = {}

    def config(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "model_kwargs": self.model_kwargs,
                "threads": self.threads, "rounds": self.rounds}

    def measure(self, context: ModelContext, plans: Sequence[PruningPlan]) -> list[LatencyResult]:
        problem = self._check_model(context)
        if problem:
            return [LatencyResult.failure(problem) for _ in plans]
        return [self._measure_one(context, plan) for plan in plans]

    def _check_model(self, context: ModelContext) -> str | None:
        fp = context.arch_fingerprint
        if fp not in self._checked:
            self._checked[fp] = _rebuild_problem(self.model or context.name, self.model_kwargs, context)
        return self._checked[fp]

    def _measure_one(self, context: ModelContext, plan: PruningPlan) -> LatencyResult:
        from npas_env.pruning import apply_plan

        try:
            pruned = apply_plan(context.model, plan, context.layers)
        except (InvalidPlan, InvalidAction) as exc:
            return LatencyResult.failure(f"invalid plan: {exc}")
        tensors: dict[str, tuple[str, np.ndarray]] = {}
        if self.send_weights:
            for key, value in pruned.model.state_dict().items():
                if value.is_floating_point():
                    tensors[key] = ("state", value.detach().cpu().float().numpy())
        for key, mask in pruned.masks.items():
            tensors[key] = ("mask", mask.cpu().numpy().astype(bool))
        manifest = {"model": {"zoo": self.model or context.name, "kwargs": self.model_kwargs},
                    "filter_types": {n: a.filter_type.value for n, a in plan.items()
                                     if a.filter_type is not FilterType.KEEP},
                    "input_shape": [1, *context.example_input.shape[1:]],
                    "threads": self.threads, "rounds": self.rounds}
        try:
            data = post(self.url, self.token, "/measure", encode_request(manifest, tensors), self.timeout_s)
            result = data["result"]
            return LatencyResult(float(result["latency_ms"]), spread_ms=float(result.get("spread_ms", 0.0)),
                                 threads=self.threads, details={"backend": result.get("backend")})
        except RemoteError as exc:
            return LatencyResult.failure(f"remote: {exc}")
        except (KeyError, TypeError, ValueError) as exc:
            return LatencyResult.failure(f"remote: malformed result ({exc})")


def _rebuild_problem(name: str, kwargs: dict[str, Any], context: ModelContext) -> str | None:
    """Why the server could not rebuild the context's model from (name, kwargs), or None."""
    import torch

    from npas_env.layers import layers_fingerprint
    from npas_env.zoo import build_model
    from npas_env.zoo.registry import MODELS

    if name not in MODELS:
        return (f"remote: the server rebuilds zoo models only and {name!r} is not one "
                f"({sorted(MODELS)}); pass model=... naming the zoo model")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from npas_env.layers import extract_layers

            model = build_model(name, **kwargs)
            layers = extract_layers(model, context.example_input[:1].to(torch.float32))
    except (InvalidModel, NpasError) as exc:
        return f"remote: cannot rebuild {name!r} with {kwargs}: {exc}"
    if layers_fingerprint(layers) != context.arch_fingerprint:
        return (f"remote: zoo model {name!r} with {kwargs} does not have the context's layers; "
                "pass the model_kwargs it was built with (num_classes, width...)")
    return None


class RemoteRunner:
    """A ``build_lut`` runner that measures layer settings on a device server."""

    def __init__(self, url: str, token: str, timeout_s: float = 600.0, threads: int = 1,
                 rounds: int = 7) -> None:
        self.url, self.token, self.timeout_s = url, token, timeout_s
        self.threads, self.rounds = threads, rounds
        self._version: str | None = None

    @property
    def version(self) -> str:
        """The server's backend version (asked once)."""
        if self._version is None:
            self._version = str(post(self.url, self.token, "/health", None, self.timeout_s)["version"])
        return self._version

    def __call__(self, settings: Sequence[LayerSetting], cascade: int) -> list[tuple[float, float, int]]:
        manifest = {"cascade": {"cascade": cascade, "settings": [s.to_dict() for s in settings]},
                    "threads": self.threads, "rounds": self.rounds}
        data = post(self.url, self.token, "/measure", encode_request(manifest, {}), self.timeout_s)
        rows = data["result"]["settings"]
        return [(float(ms), float(iqr), int(runs)) for ms, iqr, runs in rows]
