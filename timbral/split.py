"""Train/test splits of a users × items interaction matrix.

Every function takes an :class:`~timbral.interactions.Interactions` or a scipy.sparse matrix
and returns ``(train, test)``: two CSR matrices of the input's shape and dtype whose
stored entries partition the input's (nothing lost, nothing duplicated). All
randomness comes from ``seed`` (default the project's seed, 42, as for fits and
``timbral evaluate``); the work is vectorised over all interactions.

Per-user splits hold out ``round(test_fraction * n_u)`` interactions of a user with
``n_u`` of them, at least 1 and at most ``n_u - 1``, so every tested user keeps
training data; users with fewer than ``min_interactions`` stay in train only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral._validation import DEFAULT_SEED, check_random_state
from timbral.exceptions import ValidationError
from timbral.interactions import Interactions

__all__ = ["leave_k_out", "per_user_temporal_split", "random_split", "temporal_split"]

Split = tuple[sp.csr_matrix, sp.csr_matrix]


def random_split(
    data: Interactions | sp.spmatrix | sp.sparray,
    test_fraction: float = 0.2,
    seed: int | np.random.Generator | None = DEFAULT_SEED,
    min_interactions: int = 5,
) -> Split:
    """Hold out a random fraction of each user's interactions.

    Parameters
    ----------
    data : Interactions or sparse matrix of shape (n_users, n_items)
    test_fraction : float, default 0.2
        Fraction of each eligible user's interactions moved to test, in (0, 1).
    seed : int, numpy.random.Generator or None, default DEFAULT_SEED (42)
        None draws fresh entropy (a different split each call).
    min_interactions : int, default 5
        Users with fewer interactions stay in train only.

    Returns
    -------
    train, test : scipy.sparse.csr_matrix of shape (n_users, n_items)
    """
    user_items, _ = _matrix(data)
    _check_fraction(test_fraction)
    _check_count("min_interactions", min_interactions, 0)
    counts = np.diff(user_items.indptr)
    n_test = _per_user_test_counts(counts, test_fraction, min_interactions)
    keys = check_random_state(seed, name="seed").random(user_items.nnz)
    return _split_by_rank(user_items, keys, n_test)


def leave_k_out(
    data: Interactions | sp.spmatrix | sp.sparray,
    k: int = 1,
    seed: int | np.random.Generator | None = DEFAULT_SEED,
    min_interactions: int = 5,
) -> Split:
    """Hold out ``k`` random interactions of each user.

    Parameters
    ----------
    data : Interactions or sparse matrix of shape (n_users, n_items)
    k : int, default 1
        Interactions per user moved to test.
    seed : int, numpy.random.Generator or None, default DEFAULT_SEED (42)
        None draws fresh entropy (a different split each call).
    min_interactions : int, default 5
        Users with fewer than ``max(min_interactions, k + 1)`` interactions stay in
        train only, so every tested user keeps at least one training interaction.

    Returns
    -------
    train, test : scipy.sparse.csr_matrix of shape (n_users, n_items)
    """
    user_items, _ = _matrix(data)
    _check_count("k", k, 1)
    _check_count("min_interactions", min_interactions, 0)
    counts = np.diff(user_items.indptr)
    n_test = np.where(counts >= max(min_interactions, k + 1), k, 0)
    keys = check_random_state(seed, name="seed").random(user_items.nnz)
    return _split_by_rank(user_items, keys, n_test)


def temporal_split(
    data: Interactions | sp.spmatrix | sp.sparray,
    timestamps: sp.spmatrix | sp.sparray | None = None,
    cut: float | None = None,
    *,
    test_fraction: float | None = None,
) -> Split:
    """Split at one global time: interactions at or after ``cut`` go to test.

    Parameters
    ----------
    data : Interactions or sparse matrix of shape (n_users, n_items)
    timestamps : sparse matrix of shape (n_users, n_items), optional
        Epoch seconds with the sparsity pattern of ``data``; defaults to
        ``data.timestamps`` for an :class:`Interactions`.
    cut : float, optional
        Epoch seconds of the cut.
    test_fraction : float, optional
        Instead of ``cut``: the ``1 - test_fraction`` quantile of all timestamps
        (ties at the cut all go to test, so the test share can exceed it).

    Returns
    -------
    train, test : scipy.sparse.csr_matrix of shape (n_users, n_items)
        Every training interaction is earlier than every test interaction.
    """
    user_items, times = _matrix(data, timestamps, need_times=True)
    if (cut is None) == (test_fraction is None):
        raise ValidationError(
            f"pass exactly one of cut= (epoch seconds) or test_fraction=, got cut={cut!r}, "
            f"test_fraction={test_fraction!r}"
        )
    if test_fraction is not None:
        _check_fraction(test_fraction)
        cut = float(np.quantile(times, 1.0 - test_fraction, method="higher")) if len(times) else 0.0
    test = times >= cut
    return _mask(user_items, ~test), _mask(user_items, test)


def per_user_temporal_split(
    data: Interactions | sp.spmatrix | sp.sparray,
    timestamps: sp.spmatrix | sp.sparray | None = None,
    test_fraction: float = 0.2,
    min_interactions: int = 5,
) -> Split:
    """Hold out the latest fraction of each user's interactions.

    Parameters
    ----------
    data : Interactions or sparse matrix of shape (n_users, n_items)
    timestamps : sparse matrix of shape (n_users, n_items), optional
        Epoch seconds with the sparsity pattern of ``data``; defaults to
        ``data.timestamps`` for an :class:`Interactions`.
    test_fraction : float, default 0.2
    min_interactions : int, default 5
        Users with fewer interactions stay in train only.

    Returns
    -------
    train, test : scipy.sparse.csr_matrix of shape (n_users, n_items)
        For each user, every test interaction is at least as late as every
        training one (equal times are ordered by item index).
    """
    user_items, times = _matrix(data, timestamps, need_times=True)
    _check_fraction(test_fraction)
    _check_count("min_interactions", min_interactions, 0)
    counts = np.diff(user_items.indptr)
    n_test = _per_user_test_counts(counts, test_fraction, min_interactions)
    # Latest first: rank by descending time, ties by descending item index.
    rows = np.repeat(np.arange(user_items.shape[0]), counts)
    order = np.lexsort((-user_items.indices.astype(np.int64), -times, rows))
    keys = np.empty(len(order))
    keys[order] = np.arange(len(order), dtype=np.float64)
    return _split_by_rank(user_items, keys, n_test)


# ------------------------------------------------------------------------ helpers


def _matrix(
    data: Any, timestamps: Any = None, need_times: bool = False
) -> tuple[sp.csr_matrix, NDArray[np.float64]]:
    """Canonical CSR of ``data`` and, when needed, its timestamps aligned with ``.data``."""
    if isinstance(data, Interactions):
        user_items = data.user_items
        timestamps = data.timestamps if timestamps is None else timestamps
    elif sp.issparse(data):
        user_items = data
    else:
        raise ValidationError(
            f"data must be an Interactions or a scipy.sparse matrix, got {type(data).__name__}"
        )
    user_items = _canonical(user_items)
    if not need_times:
        return user_items, np.zeros(0)
    if timestamps is None:
        raise ValidationError(
            "a temporal split needs timestamps: pass timestamps= (a sparse matrix like data) or "
            "an Interactions loaded with a timestamp column (timestamp_col=)"
        )
    if not sp.issparse(timestamps):
        raise ValidationError(f"timestamps must be a scipy.sparse matrix, got {type(timestamps).__name__}")
    times = _canonical(timestamps)
    if (
        times.shape != user_items.shape
        or times.nnz != user_items.nnz
        or not np.array_equal(times.indptr, user_items.indptr)
        or not np.array_equal(times.indices, user_items.indices)
    ):
        raise ValidationError(
            f"timestamps (shape {times.shape}, nnz {times.nnz}) must have the sparsity pattern of "
            f"data (shape {user_items.shape}, nnz {user_items.nnz})"
        )
    return user_items, np.asarray(times.data, dtype=np.float64)


def _canonical(matrix: Any) -> sp.csr_matrix:
    csr = sp.csr_matrix(matrix)
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    return csr


def _check_fraction(value: float) -> None:
    if not isinstance(value, (int, float, np.floating)) or not 0.0 < value < 1.0:
        raise ValidationError(f"test_fraction must be a number strictly between 0 and 1, got {value!r}")


def _check_count(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValidationError(f"{name} must be an integer >= {low}, got {value!r}")


def _per_user_test_counts(
    counts: NDArray[np.integer], fraction: float, min_interactions: int
) -> NDArray[np.int64]:
    n_test = np.clip(np.floor(fraction * counts + 0.5).astype(np.int64), 1, np.maximum(counts - 1, 0))
    return np.where((counts >= min_interactions) & (counts >= 2), n_test, 0)


def _split_by_rank(user_items: sp.csr_matrix, keys: NDArray[np.float64], n_test: NDArray[np.int64]) -> Split:
    """Per row, the ``n_test[row]`` entries with the smallest ``keys`` go to test."""
    counts = np.diff(user_items.indptr)
    rows = np.repeat(np.arange(user_items.shape[0]), counts)
    order = np.lexsort((keys, rows))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - np.repeat(user_items.indptr[:-1].astype(np.int64), counts)
    test = rank < n_test[rows]
    return _mask(user_items, ~test), _mask(user_items, test)


def _mask(user_items: sp.csr_matrix, keep: NDArray[np.bool_]) -> sp.csr_matrix:
    """The entries of ``user_items`` where ``keep``, same shape, sorted indices."""
    rows = np.repeat(np.arange(user_items.shape[0]), np.diff(user_items.indptr))
    indptr = np.zeros(user_items.shape[0] + 1, dtype=user_items.indptr.dtype)
    np.cumsum(np.bincount(rows[keep], minlength=user_items.shape[0]), out=indptr[1:])
    out = sp.csr_matrix(
        (user_items.data[keep], user_items.indices[keep], indptr), shape=user_items.shape
    )
    out.has_sorted_indices = True
    return out
