"""Tests for the BCS sparse format (``compiler_backend/bcs.py``)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np
import pytest

from compiler_backend.bcs import BcsMatrix, encode, storage_report
from npas_env.errors import InvalidConfig

# ---------------------------------------------------------------- mask builders (test-local)


def unstructured_mask(rng: np.random.Generator, p: int, q: int, keep: float = 0.25) -> np.ndarray:
    return rng.random((p, q)) < keep


def filter_mask(rng: np.random.Generator, p: int, q: int, keep: float = 0.5) -> np.ndarray:
    return np.repeat(rng.random((p, 1)) < keep, q, axis=1)


def block_punched_mask(rng: np.random.Generator, p: int, c: int, k: int = 3, bp: int = 4,
                       bq: int = 8, keep: float = 0.3) -> np.ndarray:
    """[p, c, k, k] conv mask: per (filter block, channel block) the same kernel positions."""
    nb_p, nb_q = -(-p // bp), -(-c // bq)
    pos = rng.random((nb_p, nb_q, k, k)) < keep
    full = np.repeat(np.repeat(pos, bp, axis=0), bq, axis=1)[:p, :c]
    return full.reshape(p, c * k * k)


def block_based_mask(rng: np.random.Generator, p: int, q: int, bp: int = 4, bq: int = 8,
                     keep: float = 0.3) -> np.ndarray:
    """[p, q] FC mask: columns pruned inside each block, so a block's rows share columns."""
    nb_p, nb_q = -(-p // bp), -(-q // bq)
    cols = rng.random((nb_p, 1, nb_q, bq)) < keep
    return np.broadcast_to(cols, (nb_p, bp, nb_q, bq)).reshape(nb_p * bp, nb_q * bq)[:p, :q]


def pattern_mask(rng: np.random.Generator, p: int, c: int, kernel_keep: float = 0.5) -> np.ndarray:
    """[p, c, 3, 3] mask: 4-entry center patterns from a set of 8, plus connectivity pruning."""
    candidates = [(4,) + combo for combo in itertools.combinations([0, 1, 2, 3, 5, 6, 7, 8], 3)]
    pats = np.zeros((8, 9), dtype=bool)
    for i, idx in enumerate(rng.choice(len(candidates), size=8, replace=False)):
        pats[i, list(candidates[idx])] = True
    kernels = pats[rng.integers(0, 8, size=(p, c))]
    kernels &= (rng.random((p, c)) < kernel_keep)[..., None]
    return kernels.reshape(p, c * 9)


MaskFn = Callable[[np.random.Generator], np.ndarray]
SCHEMES: dict[str, MaskFn] = {
    "unstructured": lambda rng: unstructured_mask(rng, 24, 40),
    "filter": lambda rng: filter_mask(rng, 24, 40),
    "block_punched": lambda rng: block_punched_mask(rng, 16, 10),
    "block_based": lambda rng: block_based_mask(rng, 18, 44),
    "pattern": lambda rng: pattern_mask(rng, 12, 8),
    "zero_rows": lambda rng: unstructured_mask(rng, 20, 30) & (rng.random((20, 1)) < 0.5),
    "dense": lambda rng: np.ones((7, 13), dtype=bool),
    "all_zero": lambda rng: np.zeros((5, 6), dtype=bool),
}


def masked_weights(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    w = rng.standard_normal(mask.shape).astype(np.float32)
    w[w == 0] = 1.0
    return np.where(mask, w, np.float32(0.0))  # +0.0 off the mask (w * mask would give -0.0)


# ---------------------------------------------------------------- format


def test_bcs_fig4_example_arrays() -> None:
    w = np.array([[1, 0, 0, 2, 0, 0, 3],
                  [0, 9, 0, 0, 0, 0, 0],
                  [4, 0, 0, 5, 0, 0, 6],
                  [0, 0, 0, 0, 0, 0, 0]], dtype=np.float32)
    bcs = encode(w)
    assert bcs.weights.tolist() == [1, 2, 3, 4, 5, 6, 9]
    assert bcs.compact_column.tolist() == [0, 3, 6, 1]
    assert bcs.column_stride.tolist() == [0, 3, 4, 4]
    assert bcs.occurrence.tolist() == [0, 2, 3, 4]
    assert bcs.row_offset.tolist() == [0, 3, 6, 7, 7]
    assert bcs.row_order.tolist() == [0, 2, 1, 3]
    assert all(a.dtype == np.int32 for a in (bcs.compact_column, bcs.column_stride,
                                             bcs.occurrence, bcs.row_offset, bcs.row_order))
    assert bcs.weights.dtype == np.float32
    np.testing.assert_array_equal(bcs.decode(), w)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_bcs_round_trip_bit_exact(scheme: str) -> None:
    rng = np.random.default_rng(0)
    mask = SCHEMES[scheme](rng)
    w = masked_weights(rng, mask)
    for bcs in (encode(w), encode(w, mask)):
        out = bcs.decode()
        assert out.dtype == np.float32 and out.shape == w.shape
        assert out.tobytes() == w.tobytes()
        assert bcs.nnz == int(mask.sum())


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_bcs_rows_grouped_by_structure_and_nnz(scheme: str) -> None:
    mask = SCHEMES[scheme](np.random.default_rng(1))
    bcs = encode(mask.astype(np.float32))
    reordered = mask[bcs.row_order]
    nnz_per_group = np.diff(bcs.column_stride)
    assert np.all(np.diff(nnz_per_group) <= 0), "groups are ordered by nnz, largest first"
    for g in range(bcs.n_groups):
        rows = reordered[bcs.occurrence[g] : bcs.occurrence[g + 1]]
        cols = bcs.compact_column[bcs.column_stride[g] : bcs.column_stride[g + 1]]
        assert np.all(rows == rows[0])
        np.testing.assert_array_equal(np.flatnonzero(rows[0]), cols)
    assert bcs.n_groups == len({r.tobytes() for r in mask}), "one list per distinct structure"


@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (4, 0)])
def test_bcs_empty_matrix(shape: tuple[int, int]) -> None:
    bcs = encode(np.zeros(shape, dtype=np.float32))
    assert bcs.decode().shape == shape and bcs.nnz == 0
    assert bcs.spmm(np.ones((shape[1], 2))).shape == (shape[0], 2)
    assert bcs.thread_partition(3)[-1] == shape[0]
    assert storage_report(np.zeros(shape))["nnz"] == 0


def test_bcs_mask_keeps_zeros_and_drops_unmasked() -> None:
    w = np.array([[0.0, -0.0, 2.0], [1.0, 5.0, 3.0]], dtype=np.float32)
    mask = np.array([[1, 1, 1], [1, 0, 1]])
    bcs = encode(w, mask)
    assert bcs.nnz == 5
    out = bcs.decode()
    assert out.tobytes() == (w * mask.astype(bool)).tobytes()
    assert np.signbit(out[0, 1]), "a kept -0.0 survives bit-exact"


def test_bcs_spmv_spmm_match_dense() -> None:
    rng = np.random.default_rng(2)
    mask = block_punched_mask(rng, 16, 12)
    w = masked_weights(rng, mask)
    bcs = encode(w)
    x = rng.standard_normal((w.shape[1], 5)).astype(np.float32)
    np.testing.assert_allclose(bcs.spmm(x), w @ x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bcs.spmv(x[:, 0]), w @ x[:, 0], rtol=1e-5, atol=1e-5)
    assert bcs.spmm(x.astype(np.float64)).dtype == np.float64


def test_bcs_is_frozen_and_read_only() -> None:
    bcs = encode(np.eye(3, dtype=np.float32))
    with pytest.raises(dataclasses.FrozenInstanceError):
        bcs.shape = (1, 1)  # type: ignore[misc]
    with pytest.raises(ValueError):
        bcs.weights[0] = 7.0


# ---------------------------------------------------------------- storage


@pytest.mark.parametrize("scheme", ["block_punched", "block_based", "filter"])
def test_bcs_smaller_than_csr_when_rows_share_structure(scheme: str) -> None:
    mask = SCHEMES[scheme](np.random.default_rng(3))
    report = storage_report(masked_weights(np.random.default_rng(4), mask))
    assert report["bcs_bytes"] < report["csr_bytes"]
    assert report["bcs_index_bytes"] < report["csr_index_bytes"]


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_bcs_never_much_larger_than_csr(scheme: str) -> None:
    mask = SCHEMES[scheme](np.random.default_rng(5))
    bcs = encode(mask.astype(np.float32))
    report = storage_report(mask.astype(np.float32))
    # worst case (all rows distinct): compact_column == CSR col idx; extra = row_order + 2 lists
    overhead = 4 * (mask.shape[0] + 2 * (bcs.n_groups + 1))
    assert report["bcs_bytes"] <= report["csr_bytes"] + overhead
    assert report["bcs_bytes"] == bcs.nbytes()
    assert report["dense_bytes"] == 4 * mask.size


def test_bcs_storage_report_block_example() -> None:
    # 64 rows in 8-row blocks that share 12 of 48 columns: 8 distinct lists of 12 columns
    mask = block_based_mask(np.random.default_rng(6), 64, 48, bp=8, bq=48, keep=0.25)
    report = storage_report(mask.astype(np.float32))
    assert report["n_groups"] <= 8
    assert report["bcs_index_bytes"] < report["csr_index_bytes"] / 2


# ---------------------------------------------------------------- threads


@pytest.mark.parametrize(("scheme", "n_threads"), [
    ("unstructured", 4), ("pattern", 3), ("zero_rows", 8), ("block_based", 5), ("dense", 2),
    ("all_zero", 4), ("unstructured", 100),
])
def test_bcs_thread_partition_balanced(scheme: str, n_threads: int) -> None:
    mask = SCHEMES[scheme](np.random.default_rng(7))
    bcs = encode(mask.astype(np.float32))
    bounds = bcs.thread_partition(n_threads)
    assert bounds.shape == (n_threads + 1,)
    assert bounds[0] == 0 and bounds[-1] == mask.shape[0] and np.all(np.diff(bounds) >= 0)
    chunk_nnz = np.diff(bcs.row_offset[bounds].astype(np.int64))
    max_row = int(np.diff(bcs.row_offset).max(initial=0))
    assert np.all(np.abs(chunk_nnz - bcs.nnz / n_threads) <= max_row)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True])
def test_bcs_thread_partition_rejects_bad_count(bad: object) -> None:
    with pytest.raises(InvalidConfig, match="n_threads"):
        encode(np.eye(3)).thread_partition(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(("dense", "mask", "match"), [
    (np.ones(4), None, "2-D"),
    (np.ones((2, 3, 3, 3)), None, "reshape"),
    (np.array([[1.0, np.nan]]), None, "finite"),
    (np.array([[1.0, np.inf]]), None, "finite"),
    (np.array([[1e300]]), None, "finite"),
    (np.ones((2, 2)), np.ones((2, 3)), "mask shape"),
    (np.ones((2, 2)), np.full((2, 2), 0.5), "0 and 1"),
    (np.array([["a"]]), None, "dtype"),
])
def test_bcs_encode_rejects_bad_input(dense: np.ndarray, mask: np.ndarray | None,
                                      match: str) -> None:
    with pytest.raises(InvalidConfig, match=match):
        encode(dense, mask)


def test_bcs_constructor_rejects_corrupt_arrays() -> None:
    good = encode(np.array([[1, 0, 2], [1, 0, 2], [0, 3, 0]], dtype=np.float32))
    arrays = {f.name: getattr(good, f.name) for f in dataclasses.fields(good)}
    corrupt = {
        "row_order": np.array([0, 0, 2]),
        "compact_column": np.array([2, 0, 1]),
        "occurrence": np.array([0, 3, 3]),
        "row_offset": np.array([0, 2, 4, 6]),
        "column_stride": np.array([0, 1, 3]),
    }
    for name, arr in corrupt.items():
        with pytest.raises(InvalidConfig):
            BcsMatrix(**{**arrays, name: arr})
    with pytest.raises(InvalidConfig, match="outside"):
        BcsMatrix(**{**arrays, "shape": (3, 2)})
    assert BcsMatrix(**arrays).decode().tobytes() == good.decode().tobytes()


def test_bcs_spmm_rejects_wrong_shape() -> None:
    bcs = encode(np.eye(3))
    with pytest.raises(InvalidConfig, match="shape"):
        bcs.spmm(np.ones((4, 2)))
    with pytest.raises(InvalidConfig, match="1-D"):
        bcs.spmv(np.ones((3, 1)))
