"""Batch helpers: split a batch into rounds in which every key occurs at most once, in input order."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def occurrence_rounds(keys: NDArray[np.integer]) -> list[NDArray[np.intp]]:
    """Positions of `keys` grouped by occurrence rank: round k holds each key's k-th occurrence.

    Applying the rounds in order applies every key's values in the order they came,
    with one vectorized step per round instead of a loop per value.
    """
    n = int(keys.shape[0])
    if n == 0:
        return []
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(sk[1:], sk[:-1], out=first[1:])
    if first.all():
        return [np.arange(n)]
    starts = np.flatnonzero(first)
    group = np.cumsum(first) - 1
    rank_sorted = np.arange(n) - starts[group]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = rank_sorted
    return [np.flatnonzero(rank == k) for k in range(int(rank_sorted.max()) + 1)]


def last_occurrences(keys: NDArray[np.integer]) -> NDArray[np.intp]:
    """Position of each distinct key's last occurrence (numpy leaves the winner of a repeated fancy assignment unspecified)."""
    n = int(keys.shape[0])
    _, first_in_reversed = np.unique(keys[::-1], return_index=True)
    return (n - 1 - first_in_reversed).astype(np.intp)


def is_full_range(keys: NDArray[np.integer], n_rows: int) -> bool:
    """True when `keys` is exactly 0..n_rows-1 in order (a full tick), so slices can replace fancy indexing."""
    if keys.shape[0] != n_rows or n_rows == 0:
        return False
    if keys[0] != 0 or keys[-1] != n_rows - 1:
        return False
    # one compare against a cached 0..n-1 instead of np.diff (a temporary and a second pass)
    key = (n_rows, keys.dtype.str)
    ref = _RANGES.get(key)
    if ref is None:
        ref = _RANGES[key] = np.arange(n_rows, dtype=keys.dtype)
        ref.flags.writeable = False
    return bool(np.array_equal(keys, ref))


_RANGES: dict[tuple[int, str], NDArray[np.integer]] = {}


def check_rows(where: str, rows: NDArray[np.integer], capacity: int) -> None:
    """Raise a ValueError naming `where` when a row number is outside 0..capacity-1."""
    if rows.shape[0] == 0:
        return
    lo, hi = int(rows.min()), int(rows.max())
    if lo < 0 or hi >= capacity:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{where}: row {bad} is outside 0..{capacity - 1}; size the engine to the signal table "
            f"(capacity >= {hi + 1}) or drop readings for unknown signals"
        )
