"""Fixtures of the latency tests: a synthetic table (a power law in MACs) and a model context."""

from __future__ import annotations

import warnings

import pytest
import torch

import npas_env  # noqa: F401  (import first: evaluators.context <-> npas_env.env cycle)
from evaluators.context import ModelContext
from evaluators.latency.lut_builder import GridSpec
from evaluators.latency.lut_table import LatencyTable, TableEntry
from npas_env.layers import extract_layers

SMALL_GRID = GridSpec(channels=(16, 32, 64), fmaps=(4, 8, 16), rates=(2.0, 5.0),
                      block_sizes=((8, 16),), max_channel_fmap=4096)


def synthetic_ms(macs: float, rate: float, scheme: str) -> float:
    """A made-up but plausible latency law: overhead + MACs / speed, slower for finer schemes."""
    efficiency = {"dense": 1.0, "filter": 1.0, "block_punched": 0.8, "block_based": 0.8,
                  "pattern": 0.7, "unstructured": 0.3}[scheme]
    return 0.002 + macs / rate / (2e7 * efficiency)


def make_table(grid: GridSpec = SMALL_GRID, device: str = "fake", backend: str = "fake/1") -> LatencyTable:
    table = LatencyTable(device, backend, {"cpu": "test"})
    for s in grid.settings():
        table.add(TableEntry(s, synthetic_ms(s.macs, s.rate, s.scheme), rel_iqr=0.01, runs=7))
    return table


@pytest.fixture
def table() -> LatencyTable:
    return make_table()


@pytest.fixture
def context(tiny_net: torch.nn.Module, example_input: torch.Tensor) -> ModelContext:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = extract_layers(tiny_net, example_input)
    return ModelContext(tiny_net, example_input, tuple(layers), name="tiny")
