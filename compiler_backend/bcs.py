"""Blocked/Compact Column Storage (BCS) for pruned 2-D weight matrices.

BCS (TODAES'21, Sec. 4.3, Fig. 4) is CSR with a hierarchical column index: rows whose non-zeros sit
in the same columns share one column-index list. Rows are first reordered so that rows with an
identical structure are adjacent (groups ordered by non-zeros per row, largest first), then:

==================  ===========================================================================
Array               Content
==================  ===========================================================================
``weights``         all non-zeros, row-major, rows in reordered order (float32, ``(nnz,)``)
``compact_column``  the distinct column-index lists, concatenated (int32, ``(sum of lengths,)``)
``column_stride``   list ``g`` is ``compact_column[column_stride[g]:column_stride[g + 1]]``
``occurrence``      list ``g`` is used by reordered rows ``occurrence[g]:occurrence[g + 1]``
``row_offset``      reordered row ``r`` is ``weights[row_offset[r]:row_offset[r + 1]]``
``row_order``       reordered row ``r`` is original row ``row_order[r]``
==================  ===========================================================================

Offsets are stored CSR-style (``G + 1`` entries for ``G`` distinct lists), so every start/end pair
of the paper is two neighbouring entries. Conv weights ``[P, Q, kh, kw]`` are encoded as the GEMM
matrix ``w.reshape(P, -1)``.

Example:
    >>> w = np.array([[1, 0, 0, 2, 0, 0, 3], [4, 0, 0, 5, 0, 0, 6], [0, 7, 0, 0, 0, 0, 0]], "f4")
    >>> bcs = encode(w)
    >>> bcs.compact_column.tolist(), bcs.column_stride.tolist(), bcs.occurrence.tolist()
    ([0, 3, 6, 1], [0, 3, 4], [0, 2, 3])
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from npas_env.errors import InvalidConfig

__all__ = ["BcsMatrix", "encode", "storage_report"]

_INDEX_BYTES = 4  # int32 indices and offsets, as in the generated kernels
_VALUE_BYTES = 4  # float32 weights
_INT32_MAX = int(np.iinfo(np.int32).max)


@dataclass(frozen=True, eq=False)
class BcsMatrix:
    """A sparse ``[P, Q]`` matrix in BCS format (see the module docstring for the arrays).

    Build one with :func:`encode`. The constructor copies the arrays, makes them read-only and
    checks every structural invariant, so a ``BcsMatrix`` is always decodable.

    Attributes:
        weights: float32 ``(nnz,)`` non-zero values, rows in ``row_order``.
        compact_column: int32 concatenated distinct column-index lists, each strictly increasing.
        column_stride: int32 ``(G + 1,)`` offsets of the ``G`` lists in ``compact_column``.
        occurrence: int32 ``(G + 1,)`` reordered-row offsets of the rows using each list.
        row_offset: int32 ``(P + 1,)`` offsets of each reordered row in ``weights``.
        row_order: int32 ``(P,)`` permutation; reordered row ``r`` is original row ``row_order[r]``.
        shape: ``(P, Q)`` of the dense matrix.
    """

    weights: np.ndarray
    compact_column: np.ndarray
    column_stride: np.ndarray
    occurrence: np.ndarray
    row_offset: np.ndarray
    row_order: np.ndarray
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        if len(self.shape) != 2 or any(int(d) < 0 for d in self.shape):
            raise InvalidConfig(f"shape must be two non-negative ints, got {self.shape!r}")
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        for f in fields(self):
            if f.name == "shape":
                continue
            dtype = np.float32 if f.name == "weights" else np.int32
            arr = np.array(getattr(self, f.name), dtype=dtype, copy=True)
            if arr.ndim != 1:
                raise InvalidConfig(f"BcsMatrix.{f.name} must be 1-D, got shape {arr.shape}")
            arr.setflags(write=False)
            object.__setattr__(self, f.name, arr)
        self._check_structure()

    @property
    def nnz(self) -> int:
        """Number of stored weights."""
        return int(self.weights.size)

    @property
    def n_groups(self) -> int:
        """Number of distinct column-index lists ``G``."""
        return int(self.occurrence.size - 1)

    def nbytes(self) -> int:
        """Bytes of all BCS arrays: the five of Fig. 4 plus the ``row_order`` permutation."""
        return sum(int(getattr(self, f.name).nbytes) for f in fields(self) if f.name != "shape")

    def index_nbytes(self) -> int:
        """Bytes of everything except ``weights`` (the index overhead of the format)."""
        return self.nbytes() - int(self.weights.nbytes)

    def rows_per_group(self) -> np.ndarray:
        """Return int32 ``(G,)``: how many reordered rows share each distinct column list."""
        return np.diff(self.occurrence)

    def decode(self) -> np.ndarray:
        """Rebuild the dense float32 ``[P, Q]`` matrix: stored values bit-exact, zeros elsewhere."""
        dense = np.zeros(self.shape, dtype=np.float32)
        if self.nnz == 0:
            return dense
        cols = self._columns_per_weight()
        rows = np.repeat(self.row_order, np.diff(self.row_offset))
        dense[rows, cols] = self.weights
        return dense

    def spmm(self, x: np.ndarray) -> np.ndarray:
        """Reference sparse-dense product ``W @ x`` computed group by group, as a BCS kernel would.

        Each group of rows sharing one column list is a dense ``[rows, len(list)]`` block, so it
        gathers ``x[list]`` once and does one small GEMM.

        Args:
            x: ``(Q, N)`` real array.

        Returns:
            ``(P, N)`` array in ``np.result_type(float32, x)``.

        Raises:
            InvalidConfig: if ``x`` is not 2-D with ``Q`` rows.
        """
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] != self.shape[1]:
            raise InvalidConfig(
                f"spmm needs x of shape ({self.shape[1]}, N) for a {self.shape} matrix, "
                f"got {x.shape}; use spmv for a vector"
            )
        out = np.zeros((self.shape[0], x.shape[1]), dtype=np.result_type(np.float32, x))
        for g in range(self.n_groups):
            r0, r1 = int(self.occurrence[g]), int(self.occurrence[g + 1])
            cols = self.compact_column[self.column_stride[g] : self.column_stride[g + 1]]
            if cols.size == 0:
                continue
            block = self.weights[self.row_offset[r0] : self.row_offset[r1]]
            out[self.row_order[r0:r1]] = block.reshape(r1 - r0, cols.size) @ x[cols]
        return out

    def spmv(self, x: np.ndarray) -> np.ndarray:
        """Reference sparse matrix-vector product ``W @ x`` for ``x`` of shape ``(Q,)``."""
        x = np.asarray(x)
        if x.ndim != 1:
            raise InvalidConfig(f"spmv needs a 1-D x of length {self.shape[1]}, got {x.shape}")
        return self.spmm(x[:, None])[:, 0]

    def thread_partition(self, n_threads: int) -> np.ndarray:
        """Split the reordered rows into contiguous chunks of about equal non-zeros.

        Each inner boundary is the row boundary nearest to ``t * nnz / n_threads``, so every chunk
        holds ``nnz / n_threads`` non-zeros to within the largest row's non-zeros. An all-zero
        matrix is split by row count instead.

        Args:
            n_threads: number of chunks, >= 1 (chunks may be empty when it exceeds ``P``).

        Returns:
            int64 ``(n_threads + 1,)`` non-decreasing boundaries from 0 to ``P``; thread ``t``
            processes reordered rows ``bounds[t]:bounds[t + 1]``.

        Raises:
            InvalidConfig: if ``n_threads`` is not a positive int.
        """
        is_int = isinstance(n_threads, (int, np.integer)) and not isinstance(n_threads, bool)
        if not is_int or n_threads < 1:
            raise InvalidConfig(f"n_threads must be a positive int, got {n_threads!r}")
        n_rows, total = self.shape[0], self.nnz
        if total == 0:
            return np.linspace(0, n_rows, int(n_threads) + 1).round().astype(np.int64)
        cum = self.row_offset.astype(np.int64)
        targets = np.arange(1, n_threads) * (total / n_threads)
        hi = np.clip(np.searchsorted(cum, targets, side="left"), 1, n_rows)
        take_lo = (targets - cum[hi - 1]) <= (cum[hi] - targets)
        inner = np.where(take_lo, hi - 1, hi)
        bounds = np.concatenate(([0], inner, [n_rows])).astype(np.int64)
        return np.maximum.accumulate(bounds)

    def _columns_per_weight(self) -> np.ndarray:
        """Return int64 ``(nnz,)``: the column of every stored weight."""
        lists = np.split(self.compact_column, self.column_stride[1:-1])
        tiled = [np.tile(lst, n) for lst, n in zip(lists, self.rows_per_group(), strict=True)]
        return np.concatenate(tiled or [np.zeros(0, np.int32)]).astype(np.int64)

    def _check_structure(self) -> None:
        """Raise :class:`InvalidConfig` unless the arrays describe a valid BCS matrix."""
        n_rows, n_cols = self.shape
        _check_offsets("row_offset", self.row_offset, n_rows + 1, self.weights.size)
        _check_offsets("column_stride", self.column_stride, None, self.compact_column.size)
        _check_offsets("occurrence", self.occurrence, self.column_stride.size, n_rows)
        if np.any(np.diff(self.occurrence) <= 0):
            raise InvalidConfig("occurrence must be strictly increasing (no empty row groups)")
        if not np.array_equal(np.sort(self.row_order), np.arange(n_rows)):
            raise InvalidConfig(f"row_order must be a permutation of range({n_rows})")
        list_len = np.diff(self.column_stride)
        per_row = np.repeat(list_len, self.rows_per_group())
        if not np.array_equal(np.diff(self.row_offset), per_row):
            raise InvalidConfig("row_offset disagrees with the column-list length of some row")
        cc = self.compact_column
        if cc.size and (cc.min() < 0 or cc.max() >= n_cols):
            raise InvalidConfig(f"compact_column has indices outside [0, {n_cols})")
        starts = np.zeros(cc.size, dtype=bool)
        starts[self.column_stride[:-1][list_len > 0]] = True
        if np.any(np.diff(cc)[~starts[1:]] <= 0):
            raise InvalidConfig("each column-index list must be strictly increasing")


def _check_offsets(name: str, arr: np.ndarray, size: int | None, end: int) -> None:
    """Check an offset array starts at 0, ends at ``end``, never decreases and has ``size``."""
    if size is not None and arr.size != size:
        raise InvalidConfig(f"{name} must have {size} entries, got {arr.size}")
    if arr.size == 0 or arr[0] != 0 or arr[-1] != end or np.any(np.diff(arr) < 0):
        raise InvalidConfig(f"{name} must be non-decreasing offsets from 0 to {end}")


def encode(dense: np.ndarray, mask: np.ndarray | None = None) -> BcsMatrix:
    """Encode a 2-D weight matrix in BCS.

    Args:
        dense: real ``[P, Q]`` finite array (conv weights: ``w.reshape(P, -1)``); cast to float32.
        mask: optional ``[P, Q]`` bool (or 0/1) keep-mask. When given it *is* the sparsity
            structure: kept zeros are stored (so rows keep sharing column lists) and values
            outside it are dropped. Default: ``dense != 0``.

    Returns:
        The :class:`BcsMatrix`; ``decode()`` returns ``dense * mask`` in float32, bit-exact.

    Raises:
        InvalidConfig: on a non-2-D or non-finite ``dense``, or a mask of another shape or with
            values other than 0/1, or more than 2**31 - 1 non-zeros.
    """
    values, keep = _validate(dense, mask)
    n_rows, n_cols = values.shape
    groups = _group_rows(keep)
    row_order = np.concatenate([np.asarray(g, dtype=np.int64) for g in groups] or
                               [np.zeros(0, np.int64)])
    lists = [np.flatnonzero(keep[g[0]]) for g in groups]
    list_len = np.array([lst.size for lst in lists], dtype=np.int64)
    group_rows = np.array([len(g) for g in groups], dtype=np.int64)
    keep_sorted = keep[row_order]
    return BcsMatrix(
        weights=values[row_order][keep_sorted],
        compact_column=np.concatenate(lists or [np.zeros(0, np.int64)]),
        column_stride=np.concatenate(([0], np.cumsum(list_len))),
        occurrence=np.concatenate(([0], np.cumsum(group_rows))),
        row_offset=np.concatenate(([0], np.cumsum(np.repeat(list_len, group_rows)))),
        row_order=row_order,
        shape=(n_rows, n_cols),
    )


def _validate(dense: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(float32 values, bool keep-mask)`` after checking the inputs of :func:`encode`."""
    arr = np.asarray(dense)
    if arr.ndim != 2:
        hint = " (flatten conv weights with w.reshape(w.shape[0], -1))" if arr.ndim > 2 else ""
        raise InvalidConfig(f"BCS encodes 2-D matrices, got an array of shape {arr.shape}{hint}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == np.bool_):
        raise InvalidConfig(f"dense must be a real numeric array, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):  # float64 beyond float32 range -> inf, rejected below
        values = arr.astype(np.float32, copy=False)
    if max(values.shape) > _INT32_MAX:
        raise InvalidConfig(f"BCS uses int32 indices; shape {values.shape} is too large")
    if not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values))[0].tolist()
        raise InvalidConfig(f"dense must be finite in float32, got {values[tuple(bad)]} at {bad}")
    if mask is None:
        return values, values != 0
    keep = np.asarray(mask)
    if keep.shape != values.shape:
        raise InvalidConfig(f"mask shape {keep.shape} does not match dense shape {values.shape}")
    if keep.dtype != np.bool_:
        if keep.size and not np.all((keep == 0) | (keep == 1)):
            raise InvalidConfig("mask must be bool or contain only 0 and 1")
        keep = keep.astype(bool)
    if int(keep.sum()) > _INT32_MAX:
        raise InvalidConfig(f"BCS uses int32 offsets; {int(keep.sum())} non-zeros do not fit")
    return values, keep


def _group_rows(keep: np.ndarray) -> list[list[int]]:
    """Group rows with identical non-zero columns; groups sorted by nnz (desc.), then first row."""
    packed = np.packbits(keep, axis=1)
    by_key: dict[bytes, list[int]] = {}
    for row in range(keep.shape[0]):
        by_key.setdefault(packed[row].tobytes(), []).append(row)
    row_nnz = keep.sum(axis=1)
    return sorted(by_key.values(), key=lambda rows: (-int(row_nnz[rows[0]]), rows[0]))


def storage_report(dense: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Compare the bytes of BCS, CSR and dense storage for one matrix.

    CSR is counted as float32 values + int32 column index per value + int32 ``(P + 1,)`` row
    pointer; dense as float32 ``P * Q``. BCS counts every array of :class:`BcsMatrix`.

    Args:
        dense: ``[P, Q]`` weights, as for :func:`encode`.
        mask: optional keep-mask, as for :func:`encode`.

    Returns:
        Dict with ``shape``, ``nnz``, ``n_groups``, ``bcs_bytes``, ``csr_bytes``, ``dense_bytes``,
        ``bcs_index_bytes``, ``csr_index_bytes``, ``bcs_over_csr`` and ``bcs_over_dense`` (byte
        ratios, NaN when the denominator is 0).
    """
    bcs = encode(dense, mask)
    n_rows, n_cols = bcs.shape
    csr_index = bcs.nnz * _INDEX_BYTES + (n_rows + 1) * _INDEX_BYTES
    csr = bcs.nnz * _VALUE_BYTES + csr_index
    dense_bytes = n_rows * n_cols * _VALUE_BYTES
    return {
        "shape": bcs.shape,
        "nnz": bcs.nnz,
        "n_groups": bcs.n_groups,
        "bcs_bytes": bcs.nbytes(),
        "csr_bytes": csr,
        "dense_bytes": dense_bytes,
        "bcs_index_bytes": bcs.index_nbytes(),
        "csr_index_bytes": csr_index,
        "bcs_over_csr": bcs.nbytes() / csr,
        "bcs_over_dense": bcs.nbytes() / dense_bytes if dense_bytes else float("nan"),
    }
