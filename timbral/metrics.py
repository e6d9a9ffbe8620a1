"""Ranking and rating metrics for held-out interactions.

The ranking functions are pure: they take ``recommended``, an int array of shape
(n, k) of item indices per user, best first, padded with -1 when fewer than k
items were recommended, and ``test``, the users × items CSR matrix of held-out
interactions (any stored entry is relevant, binary relevance). Row ``r`` of
``recommended`` belongs to user ``users[r]`` (default: row ``r`` of ``test``).
Each metric is the mean over the users with at least one test item; users without
test items are ignored, and an empty evaluation gives 0.0.

With ``rel_u`` the user's test items and ``hit_j`` whether the item at rank ``j``
(0-based) is in ``rel_u``:

- precision@k = Σ hit_j / k (padding counts as a miss);
- recall@k = Σ hit_j / |rel_u|, the share of the relevant items that were
  recommended (10 hits of 20 relevant items give 0.5);
- capped recall@k = Σ hit_j / min(k, |rel_u|) — the denominator of implicit's
  ``ranking_metrics_at_k`` ("precision" there): a perfect list scores 1 even when
  |rel_u| > k. Reported as ``recall_capped`` for comparison with such tables;
- NDCG@k = Σ hit_j / log2(j + 2), divided by the ideal Σ_{j < min(k, |rel_u|)} 1 / log2(j + 2);
- MAP@k = Σ hit_j · precision@(j + 1) / min(k, |rel_u|);
- hit rate@k = 1 if any hit_j else 0;
- coverage@k = distinct items recommended to the evaluated users / n_items.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from timbral._validation import check_k
from timbral.exceptions import ValidationError

__all__ = [
    "capped_recall_at_k",
    "catalog_coverage",
    "hit_rate_at_k",
    "map_at_k",
    "ndcg_at_k",
    "ndcg_by_user",
    "popularity_top_k",
    "precision_at_k",
    "ranking_metrics",
    "ranking_scores",
    "rating_metrics",
    "recall_at_k",
]


def precision_at_k(recommended: ArrayLike, test: sp.spmatrix, users: ArrayLike | None = None) -> float:
    """Mean fraction of the k recommended items that are relevant."""
    return ranking_scores(recommended, test, users)["precision"]


def recall_at_k(recommended: ArrayLike, test: sp.spmatrix, users: ArrayLike | None = None) -> float:
    """Mean share of each user's relevant items found among the k recommended: hits / |relevant|."""
    return ranking_scores(recommended, test, users)["recall"]


def capped_recall_at_k(recommended: ArrayLike, test: sp.spmatrix, users: ArrayLike | None = None) -> float:
    """Mean hits / ``min(k, |relevant|)``: recall with the denominator capped at k (implicit's)."""
    return ranking_scores(recommended, test, users)["recall_capped"]


def ndcg_at_k(recommended: ArrayLike, test: sp.spmatrix, users: ArrayLike | None = None) -> float:
    """Mean normalised discounted cumulative gain (binary gains, log2 discount)."""
    return ranking_scores(recommended, test, users)["ndcg"]


def ndcg_by_user(
    recommended: ArrayLike, test: sp.spmatrix, users: ArrayLike | None = None
) -> NDArray[np.float64]:
    """NDCG of each row of ``recommended`` alone, the values :func:`ndcg_at_k` averages.

    For callers that average over several subsets of the same users (a validation search's
    groups): one pass instead of one :func:`ranking_scores` call per subset, and the same
    numbers, since every mean is of these values. Arguments as :func:`ranking_scores`.

    Returns
    -------
    ndarray of float64, shape (n,)
        NDCG@k of row ``r`` for user ``users[r]``; NaN where that user has no test item
        (nothing to find: :func:`ndcg_at_k` leaves such users out of its mean).
    """
    rec, test, users = _check(recommended, test, users)
    n_rel = np.diff(test.indptr)[users]
    out = np.full(len(users), np.nan)
    evaluated = n_rel > 0
    if rec.shape[1] and evaluated.any():
        out[evaluated] = _ndcg(_hits(rec[evaluated], test, users[evaluated]), n_rel[evaluated])
    return out


def map_at_k(recommended: ArrayLike, test: sp.spmatrix, users: ArrayLike | None = None) -> float:
    """Mean average precision, normalised by ``min(k, |relevant|)``."""
    return ranking_scores(recommended, test, users)["map"]


def hit_rate_at_k(recommended: ArrayLike, test: sp.spmatrix, users: ArrayLike | None = None) -> float:
    """Fraction of users with at least one relevant item among the k recommended."""
    return ranking_scores(recommended, test, users)["hit_rate"]


def catalog_coverage(recommended: ArrayLike, test: sp.spmatrix, users: ArrayLike | None = None) -> float:
    """Distinct items recommended to the evaluated users, as a fraction of all items."""
    return ranking_scores(recommended, test, users)["coverage"]


def ranking_scores(
    recommended: ArrayLike, test: sp.spmatrix, users: ArrayLike | None = None
) -> dict[str, float]:
    """Every ranking metric at once (see the module docstring for definitions).

    Parameters
    ----------
    recommended : array-like of int, shape (n, k)
        Item indices per user, best first, -1 for padding.
    test : sparse matrix of shape (n_users, n_items)
        Held-out interactions; any stored entry is relevant.
    users : array-like of int, shape (n,), optional
        The user (row of ``test``) of each row of ``recommended``; by default
        ``arange(n)``, which needs ``n == n_users``.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``recall_capped``, ``ndcg``, ``map``, ``hit_rate``,
        ``coverage`` (floats), ``k`` and ``n_users`` (users evaluated).
    """
    rec, test, users = _check(recommended, test, users)
    n_items = test.shape[1]
    k = rec.shape[1]
    n_rel = np.diff(test.indptr)[users]
    evaluated = n_rel > 0
    rec, users, n_rel = rec[evaluated], users[evaluated], n_rel[evaluated]
    n = len(users)
    out: dict[str, float] = {"k": k, "n_users": n}
    if n == 0 or k == 0:
        out.update(precision=0.0, recall=0.0, recall_capped=0.0, ndcg=0.0, map=0.0, hit_rate=0.0, coverage=0.0)
        return out
    hits = _hits(rec, test, users)
    n_hits = hits.sum(axis=1)
    denominator = np.minimum(n_rel, k)
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    shown = rec[rec >= 0]
    out.update(
        precision=float(np.mean(n_hits / k)),
        recall=float(np.mean(n_hits / n_rel)),
        recall_capped=float(np.mean(n_hits / denominator)),
        ndcg=float(np.mean(_ndcg(hits, n_rel))),
        map=float(np.mean((precision_at_rank * hits).sum(axis=1) / denominator)),
        hit_rate=float(np.mean(n_hits > 0)),
        coverage=float(np.unique(shown).size / n_items) if n_items else 0.0,
    )
    return out


def ranking_metrics(
    model: Any,
    train: sp.spmatrix,
    test: sp.spmatrix,
    k: int = 10,
    *,
    batch_size: int = 2048,
) -> dict[str, float]:
    """Recommend ``k`` items to every user with test items and score them.

    Parameters
    ----------
    model : object
        A model fitted on ``train`` with ``recommend_batch(users, k,
        exclude_seen=True) -> (ids (n, k) int, scores)``, where ``exclude_seen``
        drops each user's training items (as :class:`timbral.NMFModel` does).
    train : sparse matrix of shape (n_users, n_items)
        The matrix the model was fitted on; when the model exposes
        ``user_items_`` it must be this matrix.
    test : sparse matrix of shape (n_users, n_items)
        Held-out interactions.
    k : int, default 10
    batch_size : int, default 2048
        Users per ``recommend_batch`` call (bounds memory).

    Returns
    -------
    dict
        As :func:`ranking_scores`.
    """
    k = check_k(k)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValidationError(f"batch_size must be a positive integer, got {batch_size!r}")
    test = _csr(test, "test")
    if train.shape != test.shape:
        raise ValidationError(f"train has shape {train.shape} but test {test.shape}; split one matrix into both")
    fitted = getattr(model, "user_items_", None)
    if fitted is not None and (fitted.shape != train.shape or fitted.nnz != train.nnz):
        raise ValidationError(
            f"the model was fitted on a matrix of shape {fitted.shape} with {fitted.nnz} entries, not on "
            f"train (shape {train.shape}, {train.nnz} entries); fit it on train so seen items are excluded"
        )
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    recommended = np.full((len(users), k), -1, dtype=np.int64)
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        ids, _ = model.recommend_batch(batch, k, exclude_seen=True)
        ids = np.asarray(ids)
        recommended[start : start + len(batch), : ids.shape[1]] = ids[:, :k]
    return ranking_scores(recommended, test, users)


def popularity_top_k(train: sp.spmatrix, users: ArrayLike, k: int) -> NDArray[np.int64]:
    """The ``k`` items most users of ``train`` have played that each of ``users`` has not
    (ties by item index), padded with -1: the popularity baseline, and what a model whose
    factors collapsed under a too strong penalty still reaches."""
    train = _csr(train, "train")
    users = np.asarray(users, dtype=np.int64)
    order = np.argsort(-np.bincount(train.indices, minlength=train.shape[1]), kind="stable")
    out = np.full((users.size, k), -1, dtype=np.int64)
    played = np.zeros(train.shape[1], dtype=bool)  # one user's items at a time (np.isin sorts: 20x slower)
    for row, user in enumerate(users.tolist()):
        seen = train.indices[train.indptr[user] : train.indptr[user + 1]]
        played[seen] = True
        candidates = order[: k + seen.size]
        picked = candidates[~played[candidates]][:k]
        out[row, : picked.size] = picked
        played[seen] = False
    return out


def rating_metrics(model: Any, test: sp.spmatrix) -> dict[str, float]:
    """RMSE and MAE of ``model.predict(users, items)`` on the stored entries of ``test``.

    Parameters
    ----------
    model : object
        Has ``predict(users, items) -> (n,) float``.
    test : sparse matrix of shape (n_users, n_items)
        Held-out ratings.

    Returns
    -------
    dict
        ``rmse``, ``mae`` and ``n_ratings`` (how many held-out ratings were scored: a
        count, not a metric); NaN errors for an empty test set.
    """
    test = _csr(test, "test")
    users = np.repeat(np.arange(test.shape[0]), np.diff(test.indptr))
    if len(users) == 0:
        return {"rmse": float("nan"), "mae": float("nan"), "n_ratings": 0}
    predicted = np.asarray(model.predict(users, test.indices), dtype=np.float64)
    if predicted.shape != (len(users),):
        raise ValidationError(
            f"model.predict returned shape {predicted.shape}; expected ({len(users)},), one score per pair"
        )
    error = predicted - test.data.astype(np.float64)
    return {"rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error))), "n_ratings": len(users)}


def _csr(matrix: Any, name: str) -> sp.csr_matrix:
    if not sp.issparse(matrix):
        raise ValidationError(f"{name} must be a scipy.sparse matrix, got {type(matrix).__name__}")
    csr = sp.csr_matrix(matrix)
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    return csr


def _check(
    recommended: ArrayLike, test: sp.spmatrix, users: ArrayLike | None
) -> tuple[NDArray[np.int64], sp.csr_matrix, NDArray[np.int64]]:
    test = _csr(test, "test")
    rec = np.asarray(recommended)
    if rec.ndim != 2 or (rec.size and rec.dtype.kind not in "iu"):
        raise ValidationError(
            f"recommended must be a 2-D int array (users × k), got shape {rec.shape} and dtype {rec.dtype}"
        )
    rec = rec.astype(np.int64, copy=False)
    if rec.size and (rec.max() >= test.shape[1] or rec.min() < -1):
        raise ValidationError(
            f"recommended holds item indices in [{rec.min()}, {rec.max()}]; expected 0..{test.shape[1] - 1} "
            "or -1 for padding"
        )
    if users is None:
        if rec.shape[0] != test.shape[0]:
            raise ValidationError(
                f"recommended has {rec.shape[0]} rows but test has {test.shape[0]} users; pass users= "
                "(the test row of each recommended row)"
            )
        users = np.arange(rec.shape[0])
    users = np.asarray(users, dtype=np.int64)
    if users.shape != (rec.shape[0],) or (users.size and (users.min() < 0 or users.max() >= test.shape[0])):
        raise ValidationError(
            f"users must hold one row index of test (0..{test.shape[0] - 1}) per recommended row "
            f"({rec.shape[0]}), got shape {users.shape}"
        )
    return rec, test, users


def _ndcg(hits: NDArray[np.float64], n_rel: NDArray[np.int64]) -> NDArray[np.float64]:
    """NDCG of each row of ``hits`` (n, k), whose users have ``n_rel`` ≥ 1 test items."""
    k = hits.shape[1]
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    return (hits @ discount) / np.cumsum(discount)[np.minimum(n_rel, k) - 1]


def _hits(rec: NDArray[np.int64], test: sp.csr_matrix, users: NDArray[np.int64]) -> NDArray[np.float64]:
    """``hits[r, j]`` = 1.0 if ``rec[r, j]`` is a test item of ``users[r]``."""
    n_items = np.int64(test.shape[1])
    rows = np.repeat(np.arange(test.shape[0], dtype=np.int64), np.diff(test.indptr))
    keys = rows * n_items + test.indices  # sorted: canonical CSR
    query = users[:, None] * n_items + rec
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return ((keys[pos] == query) & (rec >= 0)).astype(np.float64)
