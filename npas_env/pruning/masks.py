"""One-shot magnitude pruning masks for every pruning scheme (TODAES section 2.1 / 4.1).

:func:`prune_mask` turns (weight, scheme, rate, block size) into an exact boolean mask of the
weight's shape. Weights are grouped by the scheme, each group is scored by its L2 norm, and the
best groups are kept layer-wide until the kept weights are as close as possible to
``numel / rate`` (the "keep count"):

=================  ==========================================  ====================================
scheme             group                                       rounding granularity
=================  ==========================================  ====================================
UNSTRUCTURED       one weight                                  1 weight
FILTER             one output row (filter)                     ``numel / P`` weights
PATTERN            one 3x3 kernel (patterned: 4 kept, or       4 or 5 weights (see
                   removed by connectivity pruning)            :func:`pattern_mask`)
BLOCK_PUNCHED      one kernel position of a p x q block        ``p * q`` weights (less at edges)
BLOCK_BASED        one p-row column segment of a p x q block   ``p`` weights (less at edges)
=================  ==========================================  ====================================

At least one group is always kept, so no layer is cut off entirely. Ties between equal scores are
broken by position (row-major), so masks are deterministic.

Weight layout: conv ``[P, Q/groups, kh, kw]``, Linear ``[P, Q]``; block ``(p, q)`` = p output
rows/filters x q input columns/channels, 0 = the whole dimension; edge blocks may be ragged.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from npas_env.errors import InvalidAction, InvalidModel
from npas_env.plan import BlockSize, Scheme
from npas_env.pruning.patterns import PATTERN_NNZ, check_pattern_set, default_pattern_set

#: Axis choice of block-based pruning: prune column segments only, or column then row segments.
BlockAxis = Literal["columns", "both"]


def keep_top_groups(scores: Tensor, sizes: Tensor, target: float) -> Tensor:
    """Keep the highest-scoring groups whose total size is closest to ``target``.

    Groups are ranked by score (descending, ties by index); the kept set is always a prefix of
    that ranking. Among prefixes equally close to ``target`` the larger one wins (round half up).
    At least one group of positive size is kept.

    Args:
        scores: float [G] group scores.
        sizes: int [G] number of weights per group (may contain zeros).
        target: desired number of kept weights.

    Returns:
        bool [G], True = kept.
    """
    if len(scores) and bool((sizes == sizes[0]).all()) and int(sizes[0]) > 0:
        count = min(max(math.floor(target / int(sizes[0]) + 0.5 + 1e-9), 1), len(scores))
        return _top_count(scores, count)
    order = torch.argsort(scores, descending=True, stable=True)
    cum = torch.cat([sizes.new_zeros(1), torch.cumsum(sizes[order], 0)]).double()
    err = (cum - target).abs()
    best = err <= err.min() + 1e-9
    k = int(torch.nonzero(best & (cum == cum[best].max())).flatten()[0])
    if cum[k] == 0 and cum[-1] > 0:
        k = int(torch.nonzero(cum > 0).flatten()[0])
    keep = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    keep[order[:k]] = True
    return keep


def _top_count(scores: Tensor, count: int) -> Tensor:
    """The ``count`` largest scores, ties broken by index (same as a stable descending sort)."""
    if count >= len(scores):
        return torch.ones_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, len(scores) - count + 1).values
    keep = scores > threshold
    ties = torch.nonzero(scores == threshold).flatten()[: count - int(keep.sum())]
    keep[ties] = True
    return keep


def _block_counts(rows: int, cols: int, p: int, q: int, device: torch.device) -> Tensor:
    """Number of entries of each p x q block of a rows x cols grid (ragged edges) -> [rb, cb]."""
    row_sizes = torch.full((-(-rows // p),), p, dtype=torch.long, device=device)
    col_sizes = torch.full((-(-cols // q),), q, dtype=torch.long, device=device)
    row_sizes[-1] = rows - p * (len(row_sizes) - 1)
    col_sizes[-1] = cols - q * (len(col_sizes) - 1)
    return row_sizes[:, None] * col_sizes[None, :]


def _resolve_block(block_size: BlockSize | None, rows: int, cols: int, scheme: Scheme) -> tuple[int, int]:
    if block_size is None:
        raise InvalidAction(f"scheme {scheme.value} needs a block_size (p, q), e.g. (8, 16); "
                            "0 means the whole dimension")
    if len(block_size) != 2 or not all(isinstance(v, int) and v >= 0 for v in block_size):
        raise InvalidAction(f"block_size must be two ints >= 0 (0 = whole dim), got {block_size!r}")
    p, q = block_size
    return (min(p, rows) if p else rows), (min(q, cols) if q else cols)


def _block_sum(x: Tensor, p: int, q: int) -> Tensor:
    """Sum ``x`` [R, C, ...] over p x q blocks of its first two dims -> [ceil(R/p), ceil(C/q), ...]."""
    rows, cols, *rest = x.shape
    rb, cb = -(-rows // p), -(-cols // q)
    padded = x.new_zeros(rb * p, cb * q, *rest)
    padded[:rows, :cols] = x
    return padded.reshape(rb, p, cb, q, *rest).sum(dim=(1, 3))


def _expand(x: Tensor, p: int, q: int, rows: int, cols: int) -> Tensor:
    """Inverse of the block layout: repeat [rb, cb, ...] to [rows, cols, ...]."""
    return x.repeat_interleave(p, 0).repeat_interleave(q, 1)[:rows, :cols]


# ------------------------------------------------------------------------------ per scheme
def unstructured_mask(weight: Tensor, rate: float) -> Tensor:
    """Keep the ``round(numel / rate)`` largest-|w| weights."""
    scores = weight.detach().abs().flatten().float()
    sizes = torch.ones_like(scores, dtype=torch.long)
    return keep_top_groups(scores, sizes, weight.numel() / rate).reshape(weight.shape)


def filter_mask(weight: Tensor, rate: float, filter_scores: Tensor | None = None) -> Tensor:
    """Keep the ``round(P / rate)`` output rows (filters) with the largest L2 norm.

    Args:
        weight: [P, ...] weight.
        rate: compression rate.
        filter_scores: optional float [P] scores that replace the L2 norms (e.g. summed over the
            layers of a coupled group so they all keep the same filters).
    """
    rows = weight.shape[0]
    if filter_scores is None:
        scores = weight.detach().reshape(rows, -1).float().norm(dim=1)
    else:
        scores = filter_scores.detach().float().to(weight.device)
    sizes = torch.full((rows,), weight[0].numel(), dtype=torch.long, device=weight.device)
    keep = keep_top_groups(scores, sizes, weight.numel() / rate)
    return keep.reshape(rows, *([1] * (weight.dim() - 1))).expand_as(weight).clone()


def pattern_mask(weight: Tensor, rate: float, pattern_set: Tensor | None = None) -> Tensor:
    """Pattern-based pruning of a 3x3 conv weight: kernel patterns + connectivity pruning.

    Every kernel ``k`` has a best pattern ``argmax_p ||W_k o p||``. With ``N`` kernels and target
    ``T = 9N / rate`` kept weights:

    * rate >= 2.25: every kernel is patterned (9/4 = 2.25x) and connectivity pruning keeps the
      ``round(T / 4)`` kernels with the largest L2 norm after patterning;
    * rate < 2.25: only ``round((9N - T) / 5)`` kernels are patterned, those losing the least
      energy ``||W_k||^2 - ||W_k o p||^2``; the others stay dense.

    Args:
        weight: [P, C, 3, 3] weight.
        rate: compression rate.
        pattern_set: bool [n, 3, 3] patterns of 4 entries; default ``default_pattern_set(8)``.
    """
    patterns = check_pattern_set(default_pattern_set(8) if pattern_set is None else pattern_set)
    patterns = patterns.to(weight.device)
    kernels = weight.detach().reshape(-1, 9).float()
    energy = kernels.square()
    kept_energy = energy @ patterns.reshape(-1, 9).float().T  # [N, n]
    best = torch.argmax(kept_energy, dim=1)
    patterned = patterns.reshape(-1, 9)[best]  # [N, 9]
    num = kernels.shape[0]
    target = 9 * num / rate
    if rate >= 9 / PATTERN_NNZ:
        scores = kept_energy.gather(1, best[:, None]).squeeze(1)
        sizes = torch.full((num,), PATTERN_NNZ, dtype=torch.long, device=weight.device)
        keep = keep_top_groups(scores, sizes, target)
        flat = patterned & keep[:, None]
    else:
        loss = energy.sum(dim=1) - kept_energy.gather(1, best[:, None]).squeeze(1)
        sizes = torch.full((num,), 9 - PATTERN_NNZ, dtype=torch.long, device=weight.device)
        to_pattern = keep_top_groups(-loss, sizes, 9 * num - target)
        if 9 * num - target < 0.5 * (9 - PATTERN_NNZ):  # closer to dense than to one pattern
            to_pattern[:] = False
        flat = torch.where(to_pattern[:, None], patterned, torch.ones_like(patterned))
    return flat.reshape(weight.shape)


def block_punched_mask(weight: Tensor, rate: float, block_size: BlockSize | None) -> Tensor:
    """Block-punched pruning of a conv weight [P, C, kh, kw] (any kernel size).

    The weight is tiled into blocks of p filters x q input channels; inside a block a kernel
    position (m, n) is kept or pruned for all p*q kernels together. Group score = L2 norm of that
    position over the block; groups are ranked layer-wide.
    """
    rows, cols = weight.shape[:2]
    p, q = _resolve_block(block_size, rows, cols, Scheme.BLOCK_PUNCHED)
    energy = _block_sum(weight.detach().float().square(), p, q)  # [rb, cb, kh, kw]
    sizes = _block_counts(rows, cols, p, q, weight.device)[:, :, None, None].expand_as(energy)
    keep = keep_top_groups(energy.sqrt().flatten(), sizes.flatten(), weight.numel() / rate)
    return _expand(keep.reshape(energy.shape), p, q, rows, cols)


def block_based_mask(weight: Tensor, rate: float, block_size: BlockSize | None,
                     axis: BlockAxis = "columns") -> Tensor:
    """Block-based pruning of a matrix [P, Q] (Linear, or 1x1 conv [P, Q, 1, 1]).

    Inside each p x q block whole column segments are pruned: all p rows of a block share the same
    kept columns, which is what the BCS format and the compiler exploit. Column segments are
    scored by L2 norm and ranked layer-wide (so only p matters for the grouping; q fixes the block
    grid of the compiler and of row pruning). With ``axis="both"`` columns are first pruned to
    ``sqrt(rate)`` and then the row segments (one row of a block, q columns) of what is left are
    pruned to the exact overall rate.
    """
    matrix = weight.detach().reshape(weight.shape[0], weight.shape[1]).float()
    rows, cols = matrix.shape
    p, q = _resolve_block(block_size, rows, cols, Scheme.BLOCK_BASED)
    col_rate = math.sqrt(rate) if axis == "both" else rate
    col_energy = _block_sum(matrix.square(), p, 1)  # [rb, Q]
    col_sizes = _block_counts(rows, cols, p, 1, weight.device)
    keep_cols = keep_top_groups(col_energy.sqrt().flatten(), col_sizes.flatten(), matrix.numel() / col_rate)
    mask = _expand(keep_cols.reshape(col_energy.shape), p, 1, rows, cols)
    if axis == "both":
        masked = matrix * mask
        row_energy = _block_sum(masked.square(), 1, q)  # [P, cb]
        row_sizes = _block_sum(mask.long(), 1, q)
        scores = torch.where(row_sizes > 0, row_energy.sqrt(), torch.full_like(row_energy, -1.0))
        keep_rows = keep_top_groups(scores.flatten(), row_sizes.flatten(), matrix.numel() / rate)
        mask &= _expand(keep_rows.reshape(row_energy.shape), 1, q, rows, cols)
    return mask.reshape(weight.shape)


# ------------------------------------------------------------------------------ entry point
def _validate(weight: Tensor, scheme: Scheme, rate: float) -> None:
    if not isinstance(weight, Tensor) or not weight.is_floating_point():
        raise InvalidAction(f"weight must be a floating-point torch.Tensor, got "
                            f"{getattr(weight, 'dtype', type(weight).__name__)}")
    if weight.dim() not in (2, 4):
        raise InvalidAction(f"weight must be a conv [P, Q/g, kh, kw] or Linear [P, Q] tensor, got "
                            f"shape {tuple(weight.shape)}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 1.0:
        raise InvalidAction(f"rate is a compression rate >= 1 (1 = dense), got {rate!r}")
    if not torch.isfinite(weight).all():
        raise InvalidModel(f"the weight of shape {tuple(weight.shape)} contains NaN or inf; the model "
                           "is broken (not the action): reload or retrain it")
    if scheme is Scheme.PATTERN and (weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3)):
        raise InvalidAction(f"pattern pruning needs a 3x3 conv weight, got shape {tuple(weight.shape)}; "
                            "use unstructured (1x1) or block_punched (other kernels)")
    if scheme is Scheme.BLOCK_PUNCHED and weight.dim() != 4:
        raise InvalidAction(f"block_punched pruning is for conv weights, got shape {tuple(weight.shape)}; "
                            "use block_based for Linear layers")
    if scheme is Scheme.BLOCK_BASED and weight.dim() == 4 and tuple(weight.shape[2:]) != (1, 1):
        raise InvalidAction(f"block_based pruning is for Linear and 1x1 conv weights, got shape "
                            f"{tuple(weight.shape)}; use block_punched for kxk convs")


def prune_mask(weight: Tensor, scheme: Scheme | str, rate: float, block_size: BlockSize | None = None, *,
               pattern_set: Tensor | None = None, filter_scores: Tensor | None = None,
               axis: BlockAxis = "columns") -> Tensor:
    """Exact boolean mask of ``weight``'s shape by one-shot magnitude pruning.

    Args:
        weight: conv weight [P, Q/groups, kh, kw] or Linear weight [P, Q].
        scheme: pruning regularity (DENSE, or any rate 1.0, gives an all-True mask).
        rate: compression rate >= 1; about ``numel / rate`` weights are kept, rounded at the
            granularity of the scheme's group (see the module docstring).
        block_size: (p, q) for BLOCK_PUNCHED / BLOCK_BASED; 0 = the whole dimension; ignored by
            the other schemes.
        pattern_set: bool [n, 3, 3] patterns for PATTERN (default: the first 8 default patterns).
        filter_scores: float [P] scores replacing the filter L2 norms for FILTER.
        axis: BLOCK_BASED only: prune column segments ("columns") or columns then rows ("both").

    Returns:
        bool tensor of ``weight.shape`` on ``weight.device``; True = kept.

    Raises:
        InvalidAction: unknown scheme, bad rate / block size / axis, or a scheme that does not fit
            the weight (pattern on non-3x3, block_punched on Linear, block_based on kxk conv).
        InvalidModel: the weight contains NaN or inf.
        InvalidConfig: a malformed ``pattern_set``.
    """
    try:
        scheme = Scheme(scheme)
    except ValueError:
        raise InvalidAction(f"unknown scheme {scheme!r}; valid: {[s.value for s in Scheme]}") from None
    _validate(weight, scheme, rate)
    if axis not in ("columns", "both"):
        raise InvalidAction(f"axis must be 'columns' or 'both', got {axis!r}")
    if scheme is Scheme.DENSE or rate == 1.0 or weight.numel() == 0:
        return torch.ones_like(weight, dtype=torch.bool)
    if scheme is Scheme.UNSTRUCTURED:
        return unstructured_mask(weight, rate)
    if scheme is Scheme.FILTER:
        if filter_scores is not None and (not isinstance(filter_scores, Tensor)
                                          or tuple(filter_scores.shape) != (weight.shape[0],)
                                          or not torch.isfinite(filter_scores).all()):
            raise InvalidAction(f"filter_scores must be a finite float tensor of shape ({weight.shape[0]},), "
                                f"got {getattr(filter_scores, 'shape', type(filter_scores).__name__)}")
        return filter_mask(weight, rate, filter_scores)
    if scheme is Scheme.PATTERN:
        return pattern_mask(weight, rate, pattern_set)
    if scheme is Scheme.BLOCK_PUNCHED:
        return block_punched_mask(weight, rate, block_size)
    return block_based_mask(weight, rate, block_size, axis)
