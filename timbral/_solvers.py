"""Fit loops for weighted NMF: Gram matrices with BLAS, row solves in ``_core._nmf``.

The objective (DESIGN.md §2), with ``s = W Hᵀ``::

    Σ_all β s²  +  Σ_obs [c (p − s)² − β s²]  +  l2 (‖W‖² + ‖H‖²)  +  l1 (Σ W + Σ H)

    feedback     β   c                       p
    implicit     1   1 + alpha · r'          1           r' = r, log1p(r / LOG_EPSILON) or BM25(r)
    explicit     0   1                       r − μ − b_u − b_i   (+ l2 (‖b_u‖² + ‖b_i‖²))
    frobenius    1   1                       r

Each iteration is one W half-step (``solve_rows`` on R against H), one H
half-step (on the transposed copy of R against W) and, for ``explicit``, one
closed-form update of each bias vector. Every block update minimises the
objective over that block, so the loss never increases.

References
----------
Hu, Koren, Volinsky. Collaborative Filtering for Implicit Feedback Datasets. ICDM 2008.
Cichocki, Phan. Fast local algorithms for large scale NMF and NTF. IEICE 2009 (HALS).
Boutsidis, Gallopoulos. SVD based initialization: a head start for NMF. 2008 (NNDSVD).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.linalg import svds

from timbral._core import nmf as _nmf
from timbral._threads import effective_n_threads, single_threaded_blas
from timbral.exceptions import ConvergenceWarning, ValidationError

FEEDBACK_KINDS = ("implicit", "explicit", "frobenius")
CONFIDENCE_KINDS = ("linear", "log", "bm25")
INIT_KINDS = ("random", "nndsvd")
#: ``confidence="log"``: r' = log1p(r / LOG_EPSILON); a play count of 1 gives r' = log 2.
LOG_EPSILON = 1.0
#: ``confidence="bm25"``: implicit's ``bm25_weight`` defaults.
BM25_K1, BM25_B = 100.0, 0.8
#: Coordinate-descent sweeps per row in each half-step of ``fit_nmf``. Implicit does
#: one, like HALS: on Last.fm (k=64, converged) 1 sweep reaches NDCG@10 0.2295 in
#: 0.52 s and 3 sweeps 0.2318 in 0.80 s; per epoch a sweep costs about 40 % of the
#: fixed gather, so 3 sweeps made an epoch slower than implicit's ALS on 1M entries
#: (0.23 vs 0.14 s) while 1 sweep is faster (0.13 s). Frobenius rows are cheap to re-sweep (no
#: observed-entry weights): on Last.fm (k=64) 8 sweeps reach scikit-learn cd's
#: 200-iteration error in 30 iterations (1 sweep, i.e. sklearn's cd, needs 200; the
#: count is path-dependent: 4 sweeps took 35, 16 took 147).
FIT_SWEEPS = {"implicit": 1, "explicit": 3, "frobenius": 8}
#: Sweeps for ``fold_in`` (one row from zero, so run it close to the exact solve).
FOLD_IN_SWEEPS = 30


@dataclass(frozen=True)
class BM25Stats:
    """Corpus statistics BM25 needs to weight a new user's row exactly like the fit did.

    ``idf[i] = max(0, log(n_users) − log1p(n_users_of_item_i))``; ``average_length`` is
    the mean row sum of the raw matrix.
    """

    idf: NDArray[np.float64]
    average_length: float


@dataclass
class FitResult:
    """Factors and diagnostics of one ``fit_nmf`` run.

    ``user_factors`` (n_users, k) and ``item_factors`` (n_items, k) are C-contiguous in
    the requested dtype. ``user_bias``/``item_bias``/``global_mean`` are zero unless
    ``feedback="explicit"``; ``bm25`` is set when ``confidence="bm25"`` (``fold_in`` needs it).
    """

    user_factors: NDArray[np.floating]
    item_factors: NDArray[np.floating]
    n_iter: int
    loss_history: list[float]
    converged: bool
    global_mean: float
    user_bias: NDArray[np.floating]
    item_bias: NDArray[np.floating]
    bm25: BM25Stats | None = None


@dataclass(frozen=True)
class _Weights:
    """c = conf_offset + conf_scale · r', p = 1 if target_one else r', β = beta."""

    conf_offset: float
    conf_scale: float
    target_one: bool
    beta: float


@dataclass
class _Triplet:
    """CSR arrays as the kernel takes them (one index dtype, data in the factor dtype)."""

    indptr: NDArray[np.integer]
    indices: NDArray[np.integer]
    data: NDArray[np.floating]
    shape: tuple[int, int]


def _weights(feedback: str, alpha: float) -> _Weights:
    if feedback == "implicit":
        return _Weights(1.0, float(alpha), True, 1.0)
    if feedback == "explicit":
        return _Weights(1.0, 0.0, False, 0.0)
    return _Weights(1.0, 0.0, False, 1.0)


def _check_choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ValidationError(f"{name} must be one of {options}, got {value!r}.")


def _triplet(matrix: sp.spmatrix | sp.sparray, data: NDArray[np.floating]) -> _Triplet:
    """The CSR arrays of a CSR matrix, or of the transpose of a CSC matrix."""
    index_dtype = np.promote_types(matrix.indptr.dtype, matrix.indices.dtype)
    return _Triplet(
        matrix.indptr.astype(index_dtype, copy=False),
        matrix.indices.astype(index_dtype, copy=False),
        data,
        matrix.shape if matrix.format == "csr" else matrix.shape[::-1],
    )


def bm25_stats(user_items: sp.csr_matrix) -> BM25Stats:
    """Item idf and mean user length of ``user_items`` (implicit's ``bm25_weight``).

        idf_i          = max(0, log(n_users) − log1p(df_i))     df_i = users of item i
        average_length = mean_u Σ_i r_ui
    """
    n_users, n_items = user_items.shape
    df = np.bincount(user_items.indices, minlength=n_items)
    idf = np.maximum(0.0, np.log(n_users) - np.log1p(df))
    return BM25Stats(idf=idf, average_length=float(user_items.sum() / max(n_users, 1)))


def _bm25(
    values: NDArray[np.floating],
    row_length: NDArray[np.floating] | float,
    items: NDArray[np.integer],
    stats: BM25Stats,
) -> NDArray[np.floating]:
    """BM25 weight of each entry: r (K1 + 1) / (K1 · norm + r) · idf_i,
    norm = (1 − B) + B · length_u / average_length."""
    norm = (1.0 - BM25_B) + BM25_B * row_length / max(stats.average_length, np.finfo(float).tiny)
    out = values * (BM25_K1 + 1.0) / (BM25_K1 * norm + values)
    out *= stats.idf[items]
    return out.astype(values.dtype, copy=False)


def _confidence_data(
    user_items: sp.csr_matrix, confidence: str, dtype: np.dtype, stats: BM25Stats | None
) -> NDArray[np.floating]:
    """r' for each stored entry, in CSR order (shares R's data when nothing changes)."""
    data = user_items.data.astype(dtype, copy=False)
    if confidence == "log":
        return np.log1p(data / dtype.type(LOG_EPSILON))
    if confidence == "bm25":
        lengths = np.asarray(user_items.sum(axis=1), dtype=dtype).ravel()
        row_length = np.repeat(lengths, np.diff(user_items.indptr))
        return _bm25(data, row_length, user_items.indices, stats)
    return data


def confidence_mass(user_items: sp.csr_matrix, feedback: str, confidence: str, alpha: float) -> float:
    """Σ_obs c_ui: the total confidence the data term puts on observed entries.

    ``c = 1 + alpha · r'`` for implicit feedback, 1 per rating otherwise; this is
    the scale a penalty λ has to be compared with.
    """
    if feedback != "implicit":
        return float(user_items.nnz)
    stats = bm25_stats(user_items) if confidence == "bm25" else None
    scaled = _confidence_data(user_items, confidence, np.dtype(np.float64), stats)
    return user_items.nnz + float(alpha) * float(scaled.sum())


def _init_factors(
    target: sp.csr_matrix, k: int, init: str, rng: np.random.Generator, dtype: np.dtype
) -> tuple[NDArray[np.floating], NDArray[np.floating]]:
    """Non-negative starting factors for the zero-filled ``target`` matrix.

    ``random``: sqrt(mean(target) / k) · U[0, 1) (scikit-learn's scale; the mean of
    the product is then ~ mean(target) / 4), W drawn before H. ``nndsvd``: Boutsidis &
    Gallopoulos on a truncated SVD whose ARPACK start vector comes from ``rng``.
    """
    n_users, n_items = target.shape
    if init == "random":
        scale = dtype.type(np.sqrt(abs(target.sum()) / (n_users * n_items) / k))
        # Drawn in float32 for either dtype: float32 and float64 fits start alike.
        W = rng.random((n_users, k), dtype=np.float32).astype(dtype, copy=False)
        H = rng.random((n_items, k), dtype=np.float32).astype(dtype, copy=False)
        W *= scale
        H *= scale
        return W, H
    if k >= min(n_users, n_items):
        raise ValidationError(
            f"init='nndsvd' needs n_components < min(n_users, n_items) = "
            f"{min(n_users, n_items)}, got {k}; use init='random' or fewer components."
        )
    v0 = rng.uniform(-1.0, 1.0, min(n_users, n_items))
    U, S, Vt = svds(target.astype(np.float64), k=k, v0=v0, solver="arpack")
    order = np.argsort(S)[::-1]
    U, S, V = U[:, order], S[order], Vt[order].T
    W = np.zeros((n_users, k), dtype=dtype)
    H = np.zeros((n_items, k), dtype=dtype)
    W[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    H[:, 0] = np.sqrt(S[0]) * np.abs(V[:, 0])
    for j in range(1, k):
        x, y = U[:, j], V[:, j]
        parts = [(np.maximum(x, 0), np.maximum(y, 0)), (np.maximum(-x, 0), np.maximum(-y, 0))]
        norms = [(np.linalg.norm(a), np.linalg.norm(b)) for a, b in parts]
        best = int(norms[1][0] * norms[1][1] > norms[0][0] * norms[0][1])
        (a, b), (na, nb) = parts[best], norms[best]
        if na * nb > 0:  # else the component has no usable sign pattern: leave it zero
            lam = np.sqrt(S[j] * na * nb)
            W[:, j] = lam * a / na
            H[:, j] = lam * b / nb
    return W, H


def _gram(FtF: NDArray[np.floating], beta: float, l2: float) -> NDArray[np.floating]:
    """beta · FᵀF + l2 · I from FᵀF (symmetric: NumPy computes FᵀF with syrk)."""
    gram = FtF * FtF.dtype.type(beta)
    gram[np.diag_indices_from(gram)] += l2
    return gram


def _half_step(
    R: _Triplet,
    X: NDArray[np.floating],
    Y: NDArray[np.floating],
    gram: NDArray[np.floating],
    w: _Weights,
    l1: float,
    n_sweeps: int,
    n_threads: int,
    row_loss: NDArray[np.float64] | None = None,
) -> None:
    """Update every row of X against fixed Y; ``l1`` is the objective's coefficient.

    ``row_loss`` (n_rows,) receives each row's observed loss at its new value.
    """
    _nmf.solve_rows(
        R.indptr, R.indices, R.data, X, Y, gram, w.conf_offset, w.conf_scale, w.target_one,
        w.beta, 0.5 * l1, n_sweeps, n_threads, row_loss,
    )


def _row_sums(values: NDArray[np.floating], indptr: NDArray[np.integer]) -> NDArray[np.float64]:
    """Σ of each row's stored values, accumulated in float64 (empty rows give 0)."""
    counts = np.diff(indptr)
    sums = np.zeros(counts.size)
    nonempty = counts > 0
    if values.size:
        sums[nonempty] = np.add.reduceat(values, indptr[:-1][nonempty], dtype=np.float64)
    return sums


def _residual(
    raw: NDArray[np.floating],
    R: _Triplet,
    mu: float,
    row_bias: NDArray[np.floating],
    col_bias: NDArray[np.floating],
) -> None:
    """R.data = r − μ − b_row − b_col for each stored entry (the explicit target p)."""
    np.subtract(raw, mu, out=R.data)
    R.data -= np.repeat(row_bias, np.diff(R.indptr))
    R.data -= col_bias[R.indices]


def _update_bias(
    R: _Triplet,
    raw: NDArray[np.floating],
    X: NDArray[np.floating],
    Y: NDArray[np.floating],
    mu: float,
    col_bias: NDArray[np.floating],
    l2: float,
    n_threads: int,
) -> NDArray[np.float64]:
    """Exact minimiser over the row biases of Σ_obs (r − μ − b_row − b_col − s)² + l2 ‖b_row‖².

        b_row = Σ_{entries of the row} (r − μ − b_col − s) / (n_row + l2),   s = x_row · y_col
    """
    e = np.empty_like(raw)
    _nmf.observed_dot(R.indptr, R.indices, X, Y, e, n_threads)
    np.subtract(raw, e, out=e)  # in place: no further nnz-sized buffers
    e -= mu
    e -= col_bias[R.indices]
    return _row_sums(e, R.indptr) / np.maximum(np.diff(R.indptr) + l2, np.finfo(float).tiny)


def _loss(
    W: NDArray[np.floating],
    H: NDArray[np.floating],
    WtW: NDArray[np.floating],
    HtH: NDArray[np.floating],
    w: _Weights,
    l2: float,
    l1: float,
    observed: NDArray[np.float64],
) -> float:
    """β · Σ (WᵀW ∘ HᵀH) + Σ_obs [c (p − s)² − β s²] + l2 (‖W‖² + ‖H‖²) + l1 (ΣW + ΣH).

    ``observed`` holds the observed-entry sums per item, from the H half-step.
    """
    loss = w.beta * float(np.sum(WtW.astype(np.float64) * HtH)) + float(observed.sum())
    loss += l2 * float(np.trace(WtW) + np.trace(HtH))
    if l1:
        loss += l1 * (float(W.sum(dtype=np.float64)) + float(H.sum(dtype=np.float64)))
    return loss


def _check_finite(loss: float, iteration: int, feedback: str, alpha: float, l2: float) -> None:
    if not np.isfinite(loss):
        raise ValidationError(
            f"fit diverged at iteration {iteration}: the loss is {loss}. "
            + (
                f"Lower alpha (got {alpha}) or use confidence='log', or "
                if feedback == "implicit"
                else ""
            )
            + f"raise the regularization (l2={l2}); check user_items for inf or huge values."
        )


def fit_nmf(
    user_items: sp.csr_matrix,
    *,
    n_components: int,
    feedback: str = "implicit",
    alpha: float = 1.0,
    confidence: str = "linear",
    l2: float = 0.01,
    l1: float = 0.0,
    max_iter: int = 200,
    tol: float = 1e-4,
    rng: np.random.Generator,
    init: str = "random",
    n_threads: int = 0,
    dtype: np.dtype | type = np.float32,
    callback: Callable[[int, float], None] | None = None,
    n_sweeps: int | None = None,
    initial: tuple[NDArray[np.floating], NDArray[np.floating]] | None = None,
) -> FitResult:
    """Fit W (users × k) ≥ 0 and H (items × k) ≥ 0 by alternating row-wise NNLS.

    Parameters
    ----------
    user_items : sp.csr_matrix of shape (n_users, n_items)
        Observed values r ≥ 0 (play counts, ratings); canonical (no duplicates).
    n_components : int
        k, the number of factors.
    feedback : {"implicit", "explicit", "frobenius"}
        Weights of the objective (module docstring).
    alpha : float
        Implicit confidence slope: c = 1 + alpha · r'.
    confidence : {"linear", "log", "bm25"}
        Implicit r' = r, log1p(r / LOG_EPSILON), or BM25 (K1 = 100, B = 0.8).
    l2, l1 : float
        Penalties l2 (‖W‖² + ‖H‖²) (also on the explicit biases) and l1 (ΣW + ΣH).
    max_iter, tol : int, float
        Stop when |loss_{t−1} − loss_t| / |loss_{t−1}| < tol, else warn at max_iter.
    rng : np.random.Generator
        Source of the initial factors: same seed and thread count ⇒ same factors.
    init : {"random", "nndsvd"}
    n_threads : int
        0 means every available core (``effective_n_threads``).
    dtype : float32 or float64
        Dtype of the factors and of the kernel arithmetic on them.
    callback : callable(iteration, loss), optional
        Called after every iteration (1-based).
    n_sweeps : int, optional
        Coordinate-descent sweeps per row per half-step (default ``FIT_SWEEPS[feedback]``).
    initial : (W, H), optional
        Starting factors of shapes (n_users, k) and (n_items, k), ≥ 0, instead of
        ``init`` (a warm start, e.g. from the previous point of a λ path); copied.

    Returns
    -------
    FitResult
    """
    _check_choice("feedback", feedback, FEEDBACK_KINDS)
    _check_choice("confidence", confidence, CONFIDENCE_KINDS)
    _check_choice("init", init, INIT_KINDS)
    dtype = np.dtype(dtype)
    n_threads = effective_n_threads(n_threads)
    sweeps = FIT_SWEEPS[feedback] if n_sweeps is None else n_sweeps
    w = _weights(feedback, alpha)
    n_users, n_items = user_items.shape
    k = n_components

    stats = bm25_stats(user_items) if feedback == "implicit" and confidence == "bm25" else None
    if feedback == "implicit":
        data = _confidence_data(user_items, confidence, dtype, stats)
    else:
        data = user_items.data.astype(dtype, copy=False)
    R = _triplet(user_items, data)
    Rt_matrix = sp.csr_matrix((data, user_items.indices, user_items.indptr), user_items.shape)
    Rt_matrix = Rt_matrix.tocsc()  # the transposed CSR: items × users
    Rt = _triplet(Rt_matrix, Rt_matrix.data)
    del Rt_matrix

    mu = 0.0
    user_bias = np.zeros(n_users, dtype)
    item_bias = np.zeros(n_items, dtype)
    if feedback == "explicit":
        mu = float(data.mean(dtype=np.float64)) if data.size else 0.0
        raw, raw_t = R.data, Rt.data
        R.data, Rt.data = np.empty_like(raw), np.empty_like(raw_t)

    with single_threaded_blas():
        # Init scales to the zero-filled target: the 0/1 pattern (implicit), |r − μ|
        # (explicit: the part biases leave to W Hᵀ) or r (frobenius).
        if initial is not None:
            W, H = (np.array(F, dtype=dtype, order="C") for F in initial)
        else:
            if feedback == "implicit":
                target = sp.csr_matrix((np.ones_like(data), R.indices, R.indptr), R.shape)
            else:
                target = sp.csr_matrix((np.abs(data - mu), R.indices, R.indptr), R.shape)
            W, H = _init_factors(target, k, init, rng, dtype)
            del target

        observed = np.empty(n_items)
        HtH = H.T @ H
        history: list[float] = []
        converged = False
        change = np.inf
        for iteration in range(1, max_iter + 1):
            if feedback == "explicit":
                user_bias[:] = _update_bias(R, raw, W, H, mu, item_bias, l2, n_threads)
                item_bias[:] = _update_bias(Rt, raw_t, H, W, mu, user_bias, l2, n_threads)
                _residual(raw, R, mu, user_bias, item_bias)
                _residual(raw_t, Rt, mu, item_bias, user_bias)
            _half_step(R, W, H, _gram(HtH, w.beta, l2), w, l1, sweeps, n_threads)
            WtW = W.T @ W
            _half_step(Rt, H, W, _gram(WtW, w.beta, l2), w, l1, sweeps, n_threads, observed)
            HtH = H.T @ H

            loss = _loss(W, H, WtW, HtH, w, l2, l1, observed)
            if feedback == "explicit":
                loss += l2 * float(user_bias @ user_bias + item_bias @ item_bias)
            _check_finite(loss, iteration, feedback, alpha, l2)
            if history:
                change = abs(history[-1] - loss) / max(abs(history[-1]), np.finfo(float).tiny)
            history.append(loss)
            if callback is not None:
                callback(iteration, loss)
            if change < tol:
                converged = True
                break

    if not converged:
        warnings.warn(
            f"NMF fit stopped at max_iter={max_iter} before the loss settled: the last "
            f"relative change {change:.3g} is above tol={tol:g}. Raise max_iter, or raise "
            "tol to accept a looser fit.",
            ConvergenceWarning,
            stacklevel=3,  # the caller of NMFModel.fit
        )
    return FitResult(
        user_factors=W,
        item_factors=H,
        n_iter=len(history),
        loss_history=history,
        converged=converged,
        global_mean=mu,
        user_bias=user_bias,
        item_bias=item_bias,
        bm25=stats,
    )


def fold_in(
    item_factors: NDArray[np.floating],
    item_indices: NDArray[np.integer],
    weights: NDArray[np.floating] | None,
    *,
    feedback: str = "implicit",
    alpha: float = 1.0,
    confidence: str = "linear",
    l2: float = 0.01,
    l1: float = 0.0,
    global_mean: float = 0.0,
    item_bias: NDArray[np.floating] | None = None,
    gram: NDArray[np.floating] | None = None,
    n_sweeps: int = FOLD_IN_SWEEPS,
    bm25: BM25Stats | None = None,
) -> NDArray[np.floating]:
    """Factors (k,) of a user unseen in training, against fixed ``item_factors``.

    Solves the user's row of the W half-step from x = 0 (``n_sweeps`` sweeps):

        min_{x ≥ 0}  Σ_all β (x·h_i)² + Σ_obs [c (p − x·h_i)² − β (x·h_i)²] + l2 ‖x‖² + l1 Σx

    ``weights`` (None means 1 each) are the raw values r of ``item_indices``; repeated
    items are summed. For ``explicit`` the target is r − global_mean − item_bias[i]
    (a new user has no bias). ``gram`` = β HᵀH + l2 I may be passed to reuse it
    across calls; ``bm25`` (``FitResult.bm25``) is needed with ``confidence="bm25"``.
    """
    _check_choice("feedback", feedback, FEEDBACK_KINDS)
    _check_choice("confidence", confidence, CONFIDENCE_KINDS)
    dtype = item_factors.dtype
    n_items, k = item_factors.shape
    item_indices = np.asarray(item_indices, dtype=np.intp).ravel()
    values = np.ones(item_indices.size, dtype) if weights is None else np.asarray(weights, dtype)
    row = sp.csr_matrix(  # COO -> CSR sums repeated items
        (values, (np.zeros_like(item_indices), item_indices)), shape=(1, n_items), dtype=dtype
    )
    w = _weights(feedback, alpha)
    if feedback == "implicit":
        if confidence == "bm25" and bm25 is None:
            raise ValidationError(
                "fold_in with confidence='bm25' needs bm25=FitResult.bm25 (the corpus idf and "
                "average length); got bm25=None."
            )
        data = _confidence_data(row, confidence, dtype, bm25)
    elif feedback == "explicit":
        bias = 0.0 if item_bias is None else np.asarray(item_bias)[row.indices]
        data = (row.data - global_mean - bias).astype(dtype)
    else:
        data = row.data
    if gram is None:
        gram = _gram(item_factors.T @ item_factors, w.beta, l2)
    x = np.zeros((1, k), dtype)
    _half_step(
        _triplet(row, np.ascontiguousarray(data, dtype)), x,
        np.ascontiguousarray(item_factors), np.ascontiguousarray(gram, dtype), w, l1, n_sweeps, 1,
    )
    return x[0]
