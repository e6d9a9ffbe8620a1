"""ADAPTER to the model layer's half-step (to be replaced by the ``timbral.nmf`` seam).

Everything the block code needs from the single-machine fit loop goes through this
one small module: the objective's weights, the confidence transform, the Gram
matrix, the kernel's row solve, the loss and the random start. Today these wrap
``timbral._solvers``; when the model layer exposes its pluggable half-step, this file
shrinks to imports and nothing else in ``timbral.dask`` changes.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral import _solvers
from timbral.model import FROBENIUS_AUTO_REGULARIZATION, NMFModel

Weights = _solvers._Weights
FIT_SWEEPS = _solvers.FIT_SWEEPS


def weights(feedback: str, alpha: float) -> Weights:
    """β, c and p of the objective for ``feedback``."""
    return _solvers._weights(feedback, alpha)


def solver_data(block: sp.csr_matrix, feedback: str, confidence: str, dtype: np.dtype) -> NDArray[np.floating]:
    """The values the row solver reads for ``block``'s entries (r' for implicit, r otherwise).

    Only element-wise transforms (``linear``, ``log``): they need no corpus statistics,
    so every block computes its own.
    """
    if feedback == "implicit":
        return _solvers._confidence_data(block, confidence, dtype, None)
    return block.data.astype(dtype, copy=False)


def gram(FtF: NDArray[np.floating], w: Weights, l2: float) -> NDArray[np.floating]:
    """β FᵀF + l2 I, the shared part of every row's normal matrix."""
    return _solvers._gram(FtF, w.beta, l2)


def solve_rows(
    block: sp.csr_matrix,
    data: NDArray[np.floating],
    X: NDArray[np.floating],
    Y: NDArray[np.floating],
    gram_matrix: NDArray[np.floating],
    w: Weights,
    l1: float,
    n_sweeps: int,
    n_threads: int,
    row_loss: NDArray[np.float64],
) -> None:
    """Update every row of ``X`` in place against the fixed rows ``Y`` (the kernel's row solve).

    ``block`` is CSR with column indices into ``Y``; ``row_loss`` receives each row's
    observed loss at its new value.
    """
    _solvers._half_step(_solvers._triplet(block, data), X, Y, gram_matrix, w, l1, n_sweeps, n_threads, row_loss)


def loss(
    WtW: NDArray[np.floating],
    HtH: NDArray[np.floating],
    w: Weights,
    l2: float,
    l1: float,
    observed: float,
    sum_w: float,
    sum_h: float,
) -> float:
    """The fit's objective from reductions only: k × k Grams, Σ observed losses, ΣW and ΣH.

    ``_solvers._loss`` reads W and H only through their sums, so one-element arrays
    holding the sums give the same formula without the factors.
    """
    return _solvers._loss(
        np.array([sum_w]), np.array([sum_h]), WtW, HtH, w, l2, l1, np.array([observed])
    )


def check_finite(value: float, iteration: int, feedback: str, alpha: float, l2: float) -> None:
    """Raise with the fix when the loss is not finite (the fit diverged)."""
    _solvers._check_finite(value, iteration, feedback, alpha, l2)


def block_start(
    state: dict, offset: int, n_rows: int, k: int, scale: float, dtype: np.dtype
) -> NDArray[np.floating]:
    """Rows ``offset:offset + n_rows`` of ``fit_nmf``'s random start, drawn without the others.

    ``state`` is the PCG64 ``bit_generator.state`` the fit starts from; ``offset``
    counts rows over W then H (H's first row is ``n_users``). The start draws
    ``rng.random((N, k), float32)`` and two float32 draws use one 64-bit step, so
    ``advance`` jumps to the block's first value.
    """
    bits = np.random.PCG64()
    bits.state = state
    first = offset * k
    bits.advance(first // 2)
    rng = np.random.Generator(bits)
    if first % 2:
        rng.random(1, dtype=np.float32)  # the unused low half of the shared step
    rows = rng.random((n_rows, k), dtype=np.float32).astype(dtype, copy=False)
    rows *= dtype.type(scale)
    return rows


def start_scale(target_sum: float, n_users: int, n_items: int, k: int) -> float:
    """sqrt(mean(target) / k): ``fit_nmf``'s scale of the random start."""
    return float(np.sqrt(abs(target_sum) / (n_users * n_items) / k))


def regularization(
    model: NMFModel, nnz: int, confidence_sum: float, n_users: int, n_items: int
) -> float:
    """λ for ``model`` from reductions: the number, or for "auto" Σc / (n_users + n_items).

    Mirrors ``NMFModel``'s "auto" rule (mean confidence mass per factor row), computed
    from the summed block statistics instead of the whole matrix.
    """
    if model.regularization != "auto":
        return float(model.regularization)
    if model.feedback == "frobenius":
        return FROBENIUS_AUTO_REGULARIZATION
    mass = nnz + float(model.alpha) * confidence_sum if model.feedback == "implicit" else float(nnz)
    return mass / (n_users + n_items)


def set_fitted(
    model: NMFModel,
    W: NDArray[np.floating],
    H: NDArray[np.floating],
    user_items: sp.csr_matrix,
    regularization_value: float,
    loss_history: list[float],
) -> None:
    """Leave ``model`` fitted exactly as ``NMFModel.fit`` would (implicit/frobenius: no biases)."""
    model.regularization_ = regularization_value
    model.user_factors_, model.item_factors_ = W, H
    model.user_bias_ = np.zeros(W.shape[0], W.dtype)
    model.item_bias_ = np.zeros(H.shape[0], H.dtype)
    model.global_mean_ = 0.0
    model.n_iter_ = len(loss_history)
    model.loss_history_ = list(loss_history)
    model.user_items_ = user_items
    model._reset_caches()
