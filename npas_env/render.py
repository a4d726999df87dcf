"""Text rendering of an episode's decisions (the envs' ``render_mode="ansi"``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from npas_env.layers import LayerSpec
from npas_env.plan import LayerAction


def render_decisions(layers: Sequence[LayerSpec], actions: Sequence[LayerAction],
                     info: Mapping[str, Any] | None = None) -> str:
    """One line per decided layer (name, kind, action), then the episode's result if finished."""
    rows = [f"{'layer':<28} {'kind':<10} decision"]
    rows += [f"{spec.name:<28} {spec.kind.value:<10} {act}" for spec, act in zip(layers, actions)]
    if info:
        rows.append(f"accuracy={info.get('accuracy')} latency_ms={info.get('latency_ms')} "
                    f"error={info.get('error')}")
    return "\n".join(rows)
