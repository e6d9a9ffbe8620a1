"""Naive NumPy versions of every compiled kernel.

They are slow and obvious on purpose: the tests compare the kernels in
``timbral._core`` against them. They follow the same conventions (arguments,
in-place outputs, coordinate order, tie-breaking) so results match to rounding.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray


def confidence_and_target(
    data: NDArray[np.floating], *, conf_offset: float, conf_scale: float, target_one: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-entry confidence ``c = conf_offset + conf_scale * r`` and target ``p``.

    ``p = 1`` for implicit feedback (``target_one``), else ``p = r``.
    """
    r = np.asarray(data, dtype=np.float64)
    c = conf_offset + conf_scale * r
    p = np.ones_like(r) if target_one else r
    return c, p


def solve_rows(
    user_items: sp.csr_matrix,
    X: NDArray[np.floating],
    Y: NDArray[np.floating],
    gram: NDArray[np.floating],
    *,
    conf_offset: float,
    conf_scale: float,
    target_one: bool,
    beta: float,
    l1: float,
    n_sweeps: int = 1,
    row_l2: NDArray[np.floating] | None = None,
) -> None:
    """Projected coordinate descent on every row of ``X``, in place.

    For row ``u`` with observed columns ``i`` (values ``r``), solve approximately

        min_{x >= 0}  ½ xᵀ A x − bᵀ x + l1 · Σ x
        A = gram + Σ_i (c_i − beta) y_i y_iᵀ,   b = Σ_i c_i p_i y_i

    where ``gram = beta · YᵀY + l2 · I`` is passed in, by ``n_sweeps`` sweeps over
    the coordinates in order ``0 .. k-1``:  x_f ← max(0, x_f − (A x − b + l1)_f / A_ff).
    A coordinate with ``A_ff <= 0`` is left alone. ``row_l2`` (n_rows,) adds each
    row's own ridge: A + row_l2[u] · I.
    """
    Y64 = np.asarray(Y, dtype=np.float64)
    G = np.asarray(gram, dtype=np.float64)
    for u in range(user_items.shape[0]):
        start, end = user_items.indptr[u], user_items.indptr[u + 1]
        cols = user_items.indices[start:end]
        c, p = confidence_and_target(
            user_items.data[start:end],
            conf_offset=conf_offset,
            conf_scale=conf_scale,
            target_one=target_one,
        )
        Yu = Y64[cols]
        A = G + (Yu * (c - beta)[:, None]).T @ Yu
        if row_l2 is not None:
            A = A + float(row_l2[u]) * np.eye(A.shape[0])
        b = Yu.T @ (c * p)
        x = X[u].astype(np.float64)
        for _ in range(n_sweeps):
            for f in range(x.shape[0]):
                if A[f, f] <= 0:
                    continue
                grad = A[f] @ x - b[f] + l1
                x[f] = max(0.0, x[f] - grad / A[f, f])
        X[u] = x


def objective(
    user_items: sp.csr_matrix,
    W: NDArray[np.floating],
    H: NDArray[np.floating],
    *,
    conf_offset: float,
    conf_scale: float,
    target_one: bool,
    beta: float,
    l2: float,
    l1: float,
) -> float:
    """The weighted NMF objective (timbral.nmf.objective), from the dense score matrix.

        Σ_all beta · s²  +  Σ_obs [c (p − s)² − beta · s²]  +  l2 (‖W‖² + ‖H‖²)  +  l1 (Σ W + Σ H)

    with ``s = W Hᵀ``. Row-wise solvers minimise exactly this, so ``fit``'s
    loss history must never increase.
    """
    W64, H64 = np.asarray(W, np.float64), np.asarray(H, np.float64)
    S = W64 @ H64.T
    coo = user_items.tocoo()
    c, p = confidence_and_target(
        coo.data, conf_offset=conf_offset, conf_scale=conf_scale, target_one=target_one
    )
    s = S[coo.row, coo.col]
    loss = beta * np.sum(S * S) + np.sum(c * (p - s) ** 2 - beta * s * s)
    loss += l2 * (np.sum(W64 * W64) + np.sum(H64 * H64)) + l1 * (W64.sum() + H64.sum())
    return float(loss)


def top_k(
    query: NDArray[np.floating],
    items: NDArray[np.floating],
    k: int,
    *,
    exclude: sp.csr_matrix | None = None,
    item_mask: NDArray[np.bool_] | None = None,
) -> tuple[NDArray[np.int32], NDArray[np.floating]]:
    """The ``k`` best items for each query row, by score ``query @ items.T``.

    ``exclude`` (rows aligned with ``query``) removes each row's listed items;
    ``item_mask[i] = True`` removes item ``i`` for every row. Order: score
    descending, ties by lower item index. Rows with fewer than ``k`` candidates
    are padded with id ``-1`` and score ``-inf``.
    """
    n_items = items.shape[0]
    scores = np.asarray(query @ items.T)
    ids_out = np.full((query.shape[0], k), -1, dtype=np.int32)
    scores_out = np.full((query.shape[0], k), -np.inf, dtype=scores.dtype)
    for row in range(query.shape[0]):
        allowed = np.ones(n_items, dtype=bool) if item_mask is None else ~np.asarray(item_mask)
        if exclude is not None:
            allowed[exclude.indices[exclude.indptr[row] : exclude.indptr[row + 1]]] = False
        candidates = np.flatnonzero(allowed)
        order = np.lexsort((candidates, -scores[row, candidates]))[:k]
        ids_out[row, : order.size] = candidates[order]
        scores_out[row, : order.size] = scores[row, candidates[order]]
    return ids_out, scores_out
