"""The prelude's partial stores, run on every ISA this host can execute."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from compiler_backend.isa import ISAS, prelude
from compiler_backend.toolchain import compile_source

from .lanes import RUNNABLE_ISAS

SENTINEL = -1.0

#: ``VSTORE_PART``'s literal cases: ``n`` of 4 or 8 lanes, ``lo`` a multiple of ``n``.
PART_BODY = """
void parts(float* out) {
  vf v; float t[VL]; for (int i = 0; i < VL; ++i) t[i] = (float)(i + 1); v = VLOAD(t);
  float* p = out;
  %s
}
"""


def _part_cases(lanes: int) -> list[tuple[int, int]]:
    return [(lo, n) for n in (4, 8) if n <= lanes for lo in range(0, lanes, n)]


def _library(isa: str, cache) -> ctypes.CDLL:
    parts = " ".join(f"VSTORE_PART(p, v, {lo}, {n}); p += 2 * VL;"
                     for lo, n in _part_cases(ISAS[isa].lanes))
    source = prelude(ISAS[isa]) + """
void store_at(float* out, int lo, int n) {
  float t[VL]; for (int i = 0; i < VL; ++i) t[i] = (float)(i + 1);
  VSTOREM_AT(out, VLOAD(t), lo, n);
}
""" + PART_BODY % parts
    return ctypes.CDLL(str(compile_source(source, [], cache=cache).path))


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


@pytest.mark.parametrize("isa", RUNNABLE_ISAS)
def test_partial_stores_write_exactly_their_lanes(isa: str, compiler_cache) -> None:
    """``VSTOREM_AT(p, v, lo, n)`` writes lanes ``lo .. lo + n`` of ``v`` at ``p + lo`` and
    nothing else, for every (lo, n) (runtime values); ``VSTORE_PART`` the same for its
    literal cases. (On AVX2 both once went through a stack copy and memcpy: correct, but gcc
    then kept the calling kernel's accumulators in memory.)"""
    lib = _library(isa, compiler_cache)
    lanes = ISAS[isa].lanes
    lane_values = np.arange(1, lanes + 1, dtype=np.float32)
    for lo in range(lanes):
        for n in range(1, lanes - lo + 1):
            out = np.full(3 * lanes, SENTINEL, np.float32)
            lib.store_at(_ptr(out[lanes:]), lo, n)
            want = np.full_like(out, SENTINEL)
            want[lanes + lo:lanes + lo + n] = lane_values[lo:lo + n]
            np.testing.assert_array_equal(out, want, err_msg=f"{isa} lo={lo} n={n}")
    cases = _part_cases(lanes)
    out = np.full(2 * lanes * len(cases), SENTINEL, np.float32)
    lib.parts(_ptr(out))
    want = np.full_like(out, SENTINEL)
    for k, (lo, n) in enumerate(cases):
        want[2 * lanes * k + lo:2 * lanes * k + lo + n] = lane_values[lo:lo + n]
    np.testing.assert_array_equal(out, want)
