"""Shared fixtures: one session-scoped artifact cache for all compiler tests."""

from __future__ import annotations

import pytest

from compiler_backend.toolchain import find_compiler


@pytest.fixture(scope="session")
def compiler_cache(tmp_path_factory: pytest.TempPathFactory):
    try:
        find_compiler()
    except Exception as exc:  # pragma: no cover - machines without gcc
        pytest.skip(str(exc))
    return tmp_path_factory.mktemp("compiler_cache")
