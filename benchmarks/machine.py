"""Machine description for benchmark reports (CPU, cores, versions, date)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_summary() -> str:
    """One markdown line: CPU, usable cores, Python / torch versions, UTC date."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{cpu_model()}, {cores} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {date}")


def write_report(name: str, markdown: str) -> Path:
    """Write ``docs/benchmarks/<name>.md`` and return its path."""
    path = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / f"{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown)
    return path
