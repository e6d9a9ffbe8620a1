"""Training beyond one machine: the same row solver, sharded over a Dask cluster.

Rows of ``R`` (users) and of ``Rᵀ`` (items) are cut into contiguous shards that
live on the workers for the whole fit. Each half-step broadcasts the fixed factor
matrix and its k × k Gram matrix, every worker solves its own rows with the Cython
kernel (``timbral._core._nmf.solve_rows``, GIL released), and the client reduces the
shards' Gram matrices ``Σ_s X_sᵀ X_s`` for the next half-step. Row solves are
independent, so the result equals a single-machine ``NMFModel.fit`` from the same
start up to floating-point summation order.

Only factors (k per row) travel; the interaction shards are sent once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral import _solvers
from timbral._validation import check_params, check_user_items
from timbral.exceptions import ConvergenceWarning, ValidationError
from timbral.model import NMFModel

if TYPE_CHECKING:
    from distributed import Client

SUPPORTED_FEEDBACK = ("implicit", "frobenius")


@dataclass
class _Shard:
    """A block of rows ``start:stop`` of R or Rᵀ whose kernel-form CSR lives on a worker."""

    start: int
    stop: int
    rows: Any  # a Future of a _solvers._Triplet


def fit_distributed(
    model: NMFModel,
    user_items: sp.spmatrix,
    client: Client,
    *,
    n_shards: int | None = None,
    threads_per_shard: int = 1,
) -> NMFModel:
    """Fit ``model`` on ``user_items`` with the row solves spread over ``client``'s workers.

    Parameters
    ----------
    model : NMFModel
        An unfitted (or to be refitted) model; its parameters are used as they are.
        ``feedback`` must be "implicit" or "frobenius".
    user_items : sparse matrix of shape (n_users, n_items)
    client : distributed.Client
        A connected Dask client (a ``LocalCluster`` works too).
    n_shards : int, optional
        Row blocks per side; defaults to the cluster's total thread count.
    threads_per_shard : int, default=1
        Kernel threads each shard task uses.

    Returns
    -------
    model : NMFModel
        Fitted in place, exactly like ``model.fit(user_items)`` would leave it.
    """
    check_params(model.get_params(), model._parameter_constraints)
    if model.feedback not in SUPPORTED_FEEDBACK:
        raise ValidationError(
            f"fit_distributed supports feedback {SUPPORTED_FEEDBACK}; got {model.feedback!r}. "
            "Fit explicit (rating) models with NMFModel.fit on one machine."
        )
    csr = check_user_items(user_items)
    if n_shards is None:
        n_shards = max(1, sum(client.nthreads().values()))
    if not isinstance(n_shards, int) or n_shards < 1:
        raise ValidationError(f"`n_shards` must be a positive integer; got {n_shards!r}.")

    dtype = np.dtype(np.float64 if csr.dtype == np.float64 else np.float32)
    n_components, searched = model._choose_parameters(csr)  # "auto" values: the same search as fit
    params = model._solver_params()
    weights = _solvers._weights(model.feedback, params["alpha"])
    l1, l2 = params["l1"], params["l2"]
    sweeps = _solvers.FIT_SWEEPS[model.feedback]
    rng = (
        model.random_state
        if isinstance(model.random_state, np.random.Generator)
        else np.random.default_rng(model.random_state)
    )

    stats = _solvers.bm25_stats(csr) if model.feedback == "implicit" and model.confidence_ == "bm25" else None
    if model.feedback == "implicit":
        data = _solvers._confidence_data(csr, model.confidence_, dtype, stats)
        target = sp.csr_matrix((np.ones_like(data), csr.indices, csr.indptr), csr.shape)
    else:
        data = csr.data.astype(dtype, copy=False)
        target = sp.csr_matrix((np.abs(data), csr.indices, csr.indptr), csr.shape)
    if searched is None:
        W, H = _solvers._init_factors(target, n_components, model.init, rng, dtype)
    else:  # start where the search left off, as NMFModel.fit does
        W, H = (np.array(F, dtype=dtype, order="C") for F in searched)
    scaled = sp.csr_matrix((data, csr.indices, csr.indptr), csr.shape)
    user_shards = _shards(client, scaled, n_shards)
    item_shards = _shards(client, scaled.T.tocsr(), n_shards)
    del scaled, target

    history: list[float] = []
    change, converged = np.inf, False
    for iteration in range(1, model.max_iter + 1):
        W, WtW, _ = _distributed_half_step(
            client, user_shards, W, H, H.T @ H, weights, l1, l2, sweeps, threads_per_shard
        )
        H, HtH, observed = _distributed_half_step(
            client, item_shards, H, W, WtW, weights, l1, l2, sweeps, threads_per_shard
        )
        loss = _solvers._loss(W, H, WtW, HtH, weights, l2, l1, observed)
        _solvers._check_finite(loss, iteration, model.feedback, params["alpha"], l2)
        if history:
            change = abs(history[-1] - loss) / max(abs(history[-1]), np.finfo(float).tiny)
        history.append(loss)
        if change < model.tol:
            converged = True
            break
    if not converged:
        warnings.warn(
            f"fit_distributed stopped at max_iter={model.max_iter} before the loss settled: the "
            f"last relative change {change:.3g} is above tol={model.tol:g}. Raise max_iter, or "
            "raise tol to accept a looser fit.",
            ConvergenceWarning,
            stacklevel=2,
        )
    model.user_factors_, model.item_factors_ = W, H
    model.user_bias_ = np.zeros(W.shape[0], dtype)
    model.item_bias_ = np.zeros(H.shape[0], dtype)
    model.global_mean_ = 0.0
    model.n_iter_ = len(history)
    model.loss_history_ = history
    model.user_items_ = csr
    model._reset_caches()
    return model


def _shards(client: Client, matrix: sp.csr_matrix, n_shards: int) -> list[_Shard]:
    """Send ``matrix`` to the workers as ≤ ``n_shards`` row blocks of about equal entries."""
    cuts = np.searchsorted(matrix.indptr, np.linspace(0, matrix.nnz, n_shards + 1)[1:-1])
    bounds = np.unique(np.concatenate([[0], cuts, [matrix.shape[0]]]))
    shards = []
    for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        block = matrix[start:stop]
        rows = client.scatter(_solvers._triplet(block, block.data), hash=False)
        shards.append(_Shard(start, stop, rows))
    return shards


def _distributed_half_step(
    client: Client,
    shards: list[_Shard],
    X: NDArray[np.floating],
    Y: NDArray[np.floating],
    YtY: NDArray[np.floating],
    weights: _solvers._Weights,
    l1: float,
    l2: float,
    sweeps: int,
    n_threads: int,
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.float64]]:
    """Solve every shard's rows of X against Y.

    Returns the new X, ``Σ_s X_sᵀX_s`` and each row's observed loss at its new value.
    """
    gram = _solvers._gram(YtY, weights.beta, l2)
    fixed = client.scatter(Y, broadcast=True, hash=False)
    futures = [
        client.submit(
            _solve_shard, s.rows, X[s.start : s.stop], fixed, gram, weights, l1, sweeps, n_threads, pure=False
        )
        for s in shards
    ]
    parts = client.gather(futures)
    X_new = np.ascontiguousarray(np.concatenate([block for block, _, _ in parts]))
    observed = np.concatenate([loss for _, _, loss in parts])
    return X_new, sum(gram_part for _, gram_part, _ in parts), observed


def _solve_shard(
    rows: _solvers._Triplet,
    X_part: NDArray[np.floating],
    Y: NDArray[np.floating],
    gram: NDArray[np.floating],
    weights: _solvers._Weights,
    l1: float,
    sweeps: int,
    n_threads: int,
) -> tuple[NDArray[np.floating], NDArray[np.floating], NDArray[np.float64]]:
    """Runs on a worker: the kernel's row solve for one shard, its Gram and row losses."""
    X_part = np.array(X_part, order="C")  # our own copy: inputs may be shared
    row_loss = np.empty(X_part.shape[0])
    _solvers._half_step(rows, X_part, Y, gram, weights, l1, sweeps, n_threads, row_loss)
    return X_part, X_part.T @ X_part, row_loss
