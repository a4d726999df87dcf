"""A third-party latency plugin installed with pip is found by name through its entry point."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evaluators.registry import LATENCY, make_latency
from npas_env.plan import PruningPlan

PLUGIN = Path(__file__).resolve().parents[3] / "examples" / "latency_plugin"


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """pip-install the example into a private target dir (the shared venv is left untouched)."""
    target, source = tmp_path / "site", tmp_path / "src"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                           "--no-index", "--quiet", "--target", str(target), str(source)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail(f"pip install of the example plugin failed:\n{proc.stderr[-2000:]}")
    assert list(target.glob("npas_latency_plugin-*.dist-info/entry_points.txt"))
    monkeypatch.syspath_prepend(str(target))
    importlib.invalidate_caches()
    monkeypatch.setattr(LATENCY, "_loaded", False)   # rescan entry points
    monkeypatch.setattr(LATENCY, "_factories", dict(LATENCY._factories))
    yield target
    sys.modules.pop("npas_latency_plugin", None)


def test_plugin_registers_by_name(installed_plugin, context) -> None:
    assert "fake_device" in LATENCY.names()
    evaluator = make_latency("fake_device", gmacs_per_s=2.0)
    assert type(evaluator).__module__ == "npas_latency_plugin"
    plans = [PruningPlan.dense(context.layer_names, context.arch_fingerprint),
             PruningPlan((), ())]
    results = evaluator.measure(context, plans)
    assert len(results) == 2 and results[0].ok and not results[1].ok
    assert evaluator.config() == {"gmacs_per_s": 2.0, "layer_overhead_us": 5.0}


def test_plugin_absent_without_install() -> None:
    assert "fake_device" not in LATENCY.names()
