"""The one fit loop of weighted NMF, with a pluggable half-step.

Each epoch is one W half-step (every row of R solved against H), one H half-step
(every row of Rᵀ against W) and, for ``explicit`` feedback, one closed-form update
of each bias vector. Every block update minimises the objective
(:mod:`timbral.nmf.objective`) over that block, so the loss never increases.

Where the row solves run is the backend's business (:class:`HalfStepBackend`):
:class:`LocalBackend` calls the GIL-free kernel ``timbral._core.nmf.solve_rows`` on
this machine; :mod:`timbral.distributed` provides a Dask backend that runs the same
kernel on row shards held by workers. Epochs, loss, the finite check, convergence and
the ``ConvergenceWarning`` live here only.

References
----------
Cichocki, Phan. Fast local algorithms for large scale NMF and NTF. IEICE 2009 (HALS).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral._core import nmf as _nmf
from timbral._threads import effective_n_threads, single_threaded_blas
from timbral.exceptions import ConvergenceWarning, ValidationError
from timbral.nmf.init import init_factors
from timbral.nmf.objective import (
    DEFAULT_ALPHA,
    DEFAULT_CONFIDENCE,
    DEFAULT_FEEDBACK,
    FIT_SWEEPS,
    FOLD_IN_SWEEPS,
    BM25Stats,
    RowPenalty,
    Weights,
    bm25_stats,
    check_confidence,
    check_feedback,
    confidence_data,
    kernel_data,
    mass_of_row,
    reference_mass,
    row_masses,
    weights_of,
)


@dataclass
class Triplet:
    """CSR arrays as the kernel takes them (one index dtype, data in the factor dtype)."""

    indptr: NDArray[np.integer]
    indices: NDArray[np.integer]
    data: NDArray[np.floating]
    shape: tuple[int, int]

    def rows(self, start: int, stop: int) -> Triplet:
        """Rows ``start:stop`` (views of the index arrays, a copy of nothing else)."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        return Triplet(
            self.indptr[start : stop + 1] - self.indptr[start],
            self.indices[lo:hi],
            self.data[lo:hi],
            (stop - start, self.shape[1]),
        )


@dataclass(frozen=True)
class SolveSettings:
    """What every row solve of one fit shares: the entry weights, the objective's L1
    coefficient and the coordinate-descent sweeps per row."""

    weights: Weights
    l1: float
    n_sweeps: int


@dataclass
class FitResult:
    """Factors and diagnostics of one ``fit_nmf`` run.

    ``user_factors`` (n_users, k) and ``item_factors`` (n_items, k) are C-contiguous in
    the requested dtype. ``user_bias``/``item_bias``/``global_mean`` are zero unless
    ``feedback="explicit"``; ``bm25`` is set when ``confidence="bm25"`` (``fold_in`` needs it);
    ``reference_mass`` is the m̄ of the frequency-scaled ridge (``RowPenalty``; 1 when ν = 0).
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
    reference_mass: float = 1.0


Factors = NDArray[np.floating]
#: What ``HalfStepBackend.solve`` returns: the new X, XᵀX and the per-row observed loss (or None).
Solved = tuple[Factors, Factors, NDArray[np.float64] | None]


class HalfStepBackend(Protocol):
    """Where the row solves of a fit run.

    ``place`` receives R (users × items), Rᵀ (items × users) in kernel form and the
    solve settings once per fit; ``solve`` then updates every row of ``X`` (side 0: W
    against H, side 1: H against W) given the regularised Gram matrix of ``Y``, and
    returns the new ``X``, ``XᵀX`` and, when ``row_loss``, each row's observed loss at
    its new value. ``supports_biases`` says whether the backend sees in-place changes
    of the placed data (explicit feedback needs it). ``supports_row_l2`` says whether
    ``place`` takes ``row_l2``, each row's own ridge (frequency-scaled regularisation;
    ``gram`` then holds β YᵀY alone).
    """

    supports_biases: bool
    supports_row_l2: bool

    def place(
        self, user_rows: Triplet, item_rows: Triplet, settings: SolveSettings,
        row_l2: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
    ) -> None: ...

    def solve(self, side: int, X: Factors, Y: Factors, gram: Factors, row_loss: bool) -> Solved: ...


class LocalBackend:
    """Row solves on this machine's cores, in place."""

    supports_biases = True
    supports_row_l2 = True

    def __init__(self, n_threads: int = 0) -> None:
        self.n_threads = effective_n_threads(n_threads)

    def place(
        self, user_rows: Triplet, item_rows: Triplet, settings: SolveSettings,
        row_l2: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
    ) -> None:
        self._sides = (user_rows, item_rows)
        self._settings = settings
        self._row_l2 = row_l2

    def solve(self, side: int, X: Factors, Y: Factors, gram: Factors, row_loss: bool) -> Solved:
        loss = np.empty(X.shape[0]) if row_loss else None
        ridge = None if self._row_l2 is None else self._row_l2[side]
        half_step(self._sides[side], X, Y, gram, self._settings, self.n_threads, loss, ridge)
        return X, X.T @ X, loss


def triplet(matrix: sp.spmatrix | sp.sparray, data: NDArray[np.floating]) -> Triplet:
    """The CSR arrays of a CSR matrix, or of the transpose of a CSC matrix."""
    index_dtype = np.promote_types(matrix.indptr.dtype, matrix.indices.dtype)
    return Triplet(
        matrix.indptr.astype(index_dtype, copy=False),
        matrix.indices.astype(index_dtype, copy=False),
        data,
        matrix.shape if matrix.format == "csr" else matrix.shape[::-1],
    )


def regularized_gram(FtF: NDArray[np.floating], beta: float, l2: float) -> NDArray[np.floating]:
    """beta · FᵀF + l2 · I from FᵀF (symmetric: NumPy computes FᵀF with syrk)."""
    out = FtF * FtF.dtype.type(beta)
    out[np.diag_indices_from(out)] += l2
    return out


def half_step(
    R: Triplet,
    X: Factors,
    Y: Factors,
    gram: Factors,
    settings: SolveSettings,
    n_threads: int,
    row_loss: NDArray[np.float64] | None = None,
    row_l2: NDArray[np.float64] | None = None,
) -> None:
    """Update every row of X against fixed Y (``gram`` = β YᵀY + l2 I).

    ``row_loss`` (n_rows,) receives each row's observed loss at its new value;
    ``row_l2`` (n_rows,) adds each row's own ridge to ``gram``.
    """
    w = settings.weights
    _nmf.solve_rows(
        R.indptr, R.indices, R.data, X, Y, gram, w.conf_offset, w.conf_scale, w.target_one,
        w.beta, 0.5 * settings.l1, settings.n_sweeps, n_threads, row_loss, row_l2,
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
    R: Triplet,
    mu: float,
    row_bias: NDArray[np.floating],
    col_bias: NDArray[np.floating],
) -> None:
    """R.data = r − μ − b_row − b_col for each stored entry (the explicit target p)."""
    np.subtract(raw, mu, out=R.data)
    R.data -= np.repeat(row_bias, np.diff(R.indptr))
    R.data -= col_bias[R.indices]


def _update_bias(
    R: Triplet,
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
    w: Weights,
    l2: float,
    l1: float,
    observed: NDArray[np.float64],
    row_l2: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
) -> float:
    """β · Σ (WᵀW ∘ HᵀH) + Σ_obs [c (p − s)² − β s²] + l2 (‖W‖² + ‖H‖²) + l1 (ΣW + ΣH).

    ``observed`` holds the observed-entry sums per item, from the H half-step. With
    ``row_l2`` (per-row λ of W and H) the ridge is Σ_u λ_u ‖w_u‖² + Σ_i λ_i ‖h_i‖².
    """
    loss = w.beta * float(np.sum(WtW.astype(np.float64) * HtH)) + float(observed.sum())
    if row_l2 is None:
        loss += l2 * float(np.trace(WtW) + np.trace(HtH))
    else:
        for F, ridge in zip((W, H), row_l2, strict=True):
            loss += float(ridge @ np.einsum("ij,ij->i", F, F, dtype=np.float64))
    if l1:
        loss += l1 * (float(W.sum(dtype=np.float64)) + float(H.sum(dtype=np.float64)))
    return loss


def _check_finite(loss: float, iteration: int, feedback: str, alpha: float, l2: float) -> None:
    """Stop a diverging fit with advice on what to change (lightfm's per-epoch check)."""
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
    feedback: str = DEFAULT_FEEDBACK,
    alpha: float = DEFAULT_ALPHA,
    confidence: str = DEFAULT_CONFIDENCE,
    l2: float = 0.01,
    l1: float = 0.0,
    frequency_scale: float = 0.0,
    max_iter: int = 200,
    tol: float = 1e-4,
    rng: np.random.Generator,
    init: str = "random",
    n_threads: int = 0,
    dtype: np.dtype | type = np.float32,
    callback: Callable[[int, float], None] | None = None,
    n_sweeps: int | None = None,
    backend: HalfStepBackend | None = None,
    initial: tuple[Factors, Factors] | None = None,
) -> FitResult:
    """Fit W (users × k) ≥ 0 and H (items × k) ≥ 0 by alternating row-wise NNLS.

    Parameters
    ----------
    user_items : sp.csr_matrix of shape (n_users, n_items)
        Observed values r ≥ 0 (play counts, ratings); canonical (no duplicates).
    n_components : int
        k, the number of factors.
    feedback : {"implicit", "explicit", "frobenius"}
        Weights of the objective (:mod:`timbral.nmf.objective`).
    alpha : float
        Implicit confidence slope: c = 1 + alpha · r'.
    confidence : {"linear", "log", "bm25"}
        Implicit r' = r, log1p(r / LOG_EPSILON), or BM25 (K1 = 100, B = 0.8).
    l2, l1 : float
        Penalties l2 (‖W‖² + ‖H‖²) (also on the explicit biases) and l1 (ΣW + ΣH).
    frequency_scale : float
        ν of the frequency-scaled ridge: row r of W or H gets λ_r = l2 · (m_r / m̄)^ν,
        m_r its total entry weight (:class:`~timbral.nmf.objective.RowPenalty`); 0 is
        the plain ridge. The explicit biases keep l2.
    max_iter, tol : int, float
        Stop when |loss_{t−1} − loss_t| / |loss_{t−1}| < tol, else warn at max_iter.
    rng : np.random.Generator
        Source of the initial factors: same seed and thread count ⇒ same factors.
    init : {"random", "nndsvd"}
    n_threads : int
        0 means every available core (``effective_n_threads``); for the local backend.
    dtype : float32 or float64
        Dtype of the factors and of the kernel arithmetic on them.
    callback : callable(iteration, loss), optional
        Called after every iteration (1-based).
    n_sweeps : int, optional
        Coordinate-descent sweeps per row per half-step (default ``FIT_SWEEPS[feedback]``).
    backend : HalfStepBackend, optional
        Where the row solves run (default: ``LocalBackend(n_threads)``).
    initial : (W, H), optional
        Starting factors of shapes (n_users, k) and (n_items, k), ≥ 0, instead of
        ``init`` (a warm start, e.g. from the previous point of a λ path); copied.

    Returns
    -------
    FitResult
    """
    check_feedback(feedback)
    check_confidence(confidence)
    dtype = np.dtype(dtype)
    backend = LocalBackend(n_threads) if backend is None else backend
    if feedback == "explicit" and not backend.supports_biases:
        raise ValidationError(
            f"the {type(backend).__name__} backend cannot fit feedback='explicit' (its biases "
            "need the residuals in place); fit explicit (rating) models on one machine."
        )
    if frequency_scale and not backend.supports_row_l2:
        raise ValidationError(
            f"the {type(backend).__name__} backend cannot fit frequency_scale={frequency_scale} (a ridge "
            "per row); pass frequency_scale=0, or fit on one machine."
        )
    sweeps = FIT_SWEEPS[feedback] if n_sweeps is None else n_sweeps
    w = weights_of(feedback, alpha)
    n_users, n_items = user_items.shape

    stats = bm25_stats(user_items) if feedback == "implicit" and confidence == "bm25" else None
    data = kernel_data(user_items, feedback, confidence, dtype, stats)
    R = triplet(user_items, data)
    Rt_matrix = sp.csr_matrix((data, user_items.indices, user_items.indptr), user_items.shape)
    Rt_matrix = Rt_matrix.tocsc()  # the transposed CSR: items × users
    Rt = triplet(Rt_matrix, Rt_matrix.data)
    del Rt_matrix
    row_l2, reference = None, 1.0
    if frequency_scale:
        masses = row_masses(R.indptr, R.indices, data, R.shape, w)
        reference = reference_mass(*masses)
        penalty = RowPenalty(l2, float(frequency_scale), reference)
        row_l2 = (penalty.of(masses[0]), penalty.of(masses[1]))
    gram_l2 = 0.0 if row_l2 is not None else l2  # per-row λ goes to the kernel, not the Gram

    mu = 0.0
    user_bias = np.zeros(n_users, dtype)
    item_bias = np.zeros(n_items, dtype)
    if feedback == "explicit":
        mu = float(data.mean(dtype=np.float64)) if data.size else 0.0
        raw, raw_t = R.data, Rt.data
        R.data, Rt.data = np.empty_like(raw), np.empty_like(raw_t)
    bias_threads = effective_n_threads(n_threads)

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
            W, H = init_factors(target, n_components, init, rng, dtype)
            del target
        if row_l2 is None:
            backend.place(R, Rt, SolveSettings(w, l1, sweeps))
        else:
            backend.place(R, Rt, SolveSettings(w, l1, sweeps), row_l2)

        HtH = H.T @ H
        history: list[float] = []
        converged = False
        change = np.inf
        for iteration in range(1, max_iter + 1):
            if feedback == "explicit":
                user_bias[:] = _update_bias(R, raw, W, H, mu, item_bias, l2, bias_threads)
                item_bias[:] = _update_bias(Rt, raw_t, H, W, mu, user_bias, l2, bias_threads)
                _residual(raw, R, mu, user_bias, item_bias)
                _residual(raw_t, Rt, mu, item_bias, user_bias)
            W, WtW, _ = backend.solve(0, W, H, regularized_gram(HtH, w.beta, gram_l2), False)
            H, HtH, observed = backend.solve(1, H, W, regularized_gram(WtW, w.beta, gram_l2), True)

            loss = _loss(W, H, WtW, HtH, w, l2, l1, observed, row_l2)
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
        reference_mass=reference,
    )
def fold_in(
    item_factors: NDArray[np.floating],
    item_indices: NDArray[np.integer],
    weights: NDArray[np.floating] | None,
    *,
    feedback: str = DEFAULT_FEEDBACK,
    alpha: float = DEFAULT_ALPHA,
    confidence: str = DEFAULT_CONFIDENCE,
    l2: float = 0.01,
    l1: float = 0.0,
    frequency_scale: float = 0.0,
    reference_mass: float = 1.0,
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
    With ``frequency_scale`` ν ≠ 0 the row's ridge is ``RowPenalty(l2, ν, reference_mass)``
    of its own entry weight (``FitResult.reference_mass`` is the fit's m̄) and ``gram``
    is β HᵀH alone.
    """
    check_feedback(feedback)
    check_confidence(confidence)
    dtype = item_factors.dtype
    n_items, k = item_factors.shape
    item_indices = np.asarray(item_indices, dtype=np.intp).ravel()
    values = np.ones(item_indices.size, dtype) if weights is None else np.asarray(weights, dtype)
    row = sp.csr_matrix(  # COO -> CSR sums repeated items
        (values, (np.zeros_like(item_indices), item_indices)), shape=(1, n_items), dtype=dtype
    )
    w = weights_of(feedback, alpha)
    if feedback == "implicit":
        if confidence == "bm25" and bm25 is None:
            raise ValidationError(
                "fold_in with confidence='bm25' needs bm25=FitResult.bm25 (the corpus idf and "
                "average length); got bm25=None."
            )
        data = confidence_data(row, confidence, dtype, bm25)
    elif feedback == "explicit":
        bias = 0.0 if item_bias is None else np.asarray(item_bias)[row.indices]
        data = (row.data - global_mean - bias).astype(dtype)
    else:
        data = row.data
    row_l2 = None
    if frequency_scale:
        row_l2 = RowPenalty(l2, float(frequency_scale), reference_mass).of([mass_of_row(data, n_items, w)])
    if gram is None:
        gram = regularized_gram(item_factors.T @ item_factors, w.beta, 0.0 if frequency_scale else l2)
    x = np.zeros((1, k), dtype)
    half_step(
        triplet(row, np.ascontiguousarray(data, dtype)), x,
        np.ascontiguousarray(item_factors), np.ascontiguousarray(gram, dtype), SolveSettings(w, l1, n_sweeps), 1,
        row_l2=row_l2,
    )
    return x[0]
