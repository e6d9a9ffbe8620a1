"""Fit loops (interim: the NumPy reference solver until the compiled kernel lands)."""

from dataclasses import dataclass

import numpy as np

from timbral import _reference


@dataclass
class FitResult:
    user_factors: np.ndarray
    item_factors: np.ndarray
    n_iter: int
    loss_history: list
    converged: bool
    global_mean: float
    user_bias: np.ndarray
    item_bias: np.ndarray


def _weights(feedback, alpha):
    if feedback == "implicit":
        return dict(conf_offset=1.0, conf_scale=alpha, target_one=True, beta=1.0)
    return dict(conf_offset=1.0, conf_scale=0.0, target_one=False, beta=0.0 if feedback == "explicit" else 1.0)


def fit_nmf(user_items, *, n_components, feedback, alpha, confidence, l2, l1, max_iter, tol, rng, init, n_threads, dtype, callback=None):
    n_users, n_items = user_items.shape
    w = _weights(feedback, alpha)
    W = (rng.random((n_users, n_components)) * 0.1).astype(dtype)
    H = (rng.random((n_items, n_components)) * 0.1).astype(dtype)
    R, Rt = user_items, user_items.T.tocsr()
    history = []
    for it in range(max_iter):
        _reference.solve_rows(R, W, H, w["beta"] * H.T @ H + l2 * np.eye(n_components), l1=l1, **w)
        _reference.solve_rows(Rt, H, W, w["beta"] * W.T @ W + l2 * np.eye(n_components), l1=l1, **w)
        history.append(_reference.objective(R, W, H, l2=l2, l1=l1, **w))
        if callback:
            callback(it + 1, history[-1])
        if len(history) > 1 and abs(history[-2] - history[-1]) <= tol * abs(history[-2]):
            break
    return FitResult(W, H, it + 1, history, True, 0.0, np.zeros(n_users, dtype), np.zeros(n_items, dtype))


def fold_in(item_factors, item_indices, weights, *, feedback, alpha, confidence, l2, l1, global_mean, item_bias, reference=None):
    import scipy.sparse as sp
    w = _weights(feedback, alpha)
    k = item_factors.shape[1]
    row = sp.csr_matrix((weights, (np.zeros(len(item_indices), int), item_indices)), shape=(1, item_factors.shape[0]))
    x = np.zeros((1, k), item_factors.dtype)
    _reference.solve_rows(row, x, item_factors, w["beta"] * item_factors.T @ item_factors + l2 * np.eye(k), l1=l1, n_sweeps=10, **w)
    return x[0]


def history_contributions(item_factors, user_items, user, item, *, feedback, alpha, confidence, l2, l1):
    w = _weights(feedback, alpha)
    H = item_factors.astype(np.float64)
    start, end = user_items.indptr[user], user_items.indptr[user + 1]
    cols = user_items.indices[start:end]
    c, p = _reference.confidence_and_target(user_items.data[start:end], conf_offset=w["conf_offset"], conf_scale=w["conf_scale"], target_one=w["target_one"])
    A = w["beta"] * H.T @ H + l2 * np.eye(H.shape[1]) + (H[cols] * (c - w["beta"])[:, None]).T @ H[cols]
    x = np.linalg.lstsq(A, H[item], rcond=None)[0]
    return cols, c * p * (H[cols] @ x)
