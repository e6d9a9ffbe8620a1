"""The objective's vocabulary: feedback kinds, confidence scalings, weights and constants.

The objective (users × items matrix R, factors W ≥ 0 and H ≥ 0, ``s = W Hᵀ``)::

    Σ_all β s²  +  Σ_obs [c (p − s)² − β s²]  +  Σ_rows λ_row ‖x_row‖²  +  l1 (Σ W + Σ H)

    λ_row = l2 · (m_row / m̄)^ν                 (frequency-scaled; ν = 0: the plain ridge l2)
    m_row = Σ_obs c + β · (n_other − n_obs)   (the total weight of the row's entries)

    feedback     β   c                       p
    implicit     1   1 + alpha · r'          1           r' = r, log1p(r / LOG_EPSILON) or BM25(r)
    explicit     0   1                       r − μ − b_u − b_i   (+ l2 (‖b_u‖² + ‖b_i‖²))
    frobenius    1   1                       r

This module is the one place that knows these names and numbers; the fit loop, the
estimator, fold-in and explanations all read them from here.

The frequency-scaled ridge is Rendle et al.'s λ·(n_u + α₀·n_items)^ν written for
per-entry confidences: their observed entries weigh 1 and every entry α₀, so
n_u + α₀·n_items is the row's total weight, which is m_row here. Dividing by m̄,
the mean m over the rows of both sides, keeps λ on the scale of the plain ridge
whatever ν, so one λ grid serves every ν. For explicit feedback (β = 0, c = 1) it is
ALS-WR's λ·n_u (ν = 1).

References
----------
Hu, Koren, Volinsky. Collaborative Filtering for Implicit Feedback Datasets. ICDM 2008.
Zhou, Wilkinson, Schreiber, Pan. Large-Scale Parallel Collaborative Filtering for the
Netflix Prize. AAIM 2008 (ALS-WR).
Rendle, Krichene, Zhang, Koren. Revisiting the Performance of iALS on Item
Recommendation Benchmarks. RecSys 2022.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral.exceptions import ValidationError

FEEDBACK_KINDS = ("implicit", "explicit", "frobenius")
CONFIDENCE_SCALINGS = ("linear", "log", "bm25")
DEFAULT_FEEDBACK = "implicit"
#: The scaling used when none is chosen by validation, and the one ``confidence="auto"``
#: keeps unless another wins clearly: ``log`` tames heavy-tailed play counts (measured best
#: on Last.fm and MovieLens).
DEFAULT_CONFIDENCE = "log"
DEFAULT_ALPHA = 1.0
#: ν of the frequency-scaled ridge (``RowPenalty``) used when none is chosen by validation, and the
#: one ``frequency_scale="auto"`` keeps unless another wins clearly: 0, the plain ridge.
DEFAULT_FREQUENCY_SCALE = 0.0
#: ``confidence="log"``: r' = log1p(r / LOG_EPSILON); a play count of 1 gives r' = log 2.
LOG_EPSILON = 1.0
#: ``confidence="bm25"``: implicit's ``bm25_weight`` defaults.
BM25_K1, BM25_B = 100.0, 0.8
#: Coordinate-descent sweeps per row in each half-step of a fit. Implicit does
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
#: ``regularization="auto"`` for plain NMF: a light ridge, as the objective has no scale of its own.
FROBENIUS_AUTO_REGULARIZATION = 0.01


@dataclass(frozen=True)
class Weights:
    """How the kernel weighs entries: c = conf_offset + conf_scale · r', p = 1 if target_one else r', β = beta."""

    conf_offset: float
    conf_scale: float
    target_one: bool
    beta: float


@dataclass(frozen=True)
class BM25Stats:
    """Corpus statistics BM25 needs to weight a new user's row exactly like the fit did.

    ``idf[i] = max(0, log(n_users) − log1p(n_users_of_item_i))``; ``average_length`` is
    the mean row sum of the raw matrix.
    """

    idf: NDArray[np.float64]
    average_length: float


@dataclass(frozen=True)
class RowPenalty:
    """The ridge of each row: λ_row = ``l2 · (mass / reference)^frequency_scale``.

    ``mass`` is a row's total entry weight (:func:`row_masses`); ``reference`` the
    mean mass of the training rows of both sides. ``frequency_scale`` = ν = 0 gives
    ``l2`` for every row.
    """

    l2: float
    frequency_scale: float = 0.0
    reference: float = 1.0

    def of(self, mass: NDArray[np.floating] | float) -> NDArray[np.float64]:
        """λ of rows of total entry weight ``mass``."""
        mass = np.asarray(mass, dtype=np.float64)
        if not self.frequency_scale:
            return np.full(mass.shape, self.l2)
        ratio = mass / max(self.reference, np.finfo(float).tiny)
        return self.l2 * np.maximum(ratio, 0.0) ** self.frequency_scale


def row_masses(
    indptr: NDArray[np.integer], indices: NDArray[np.integer], data: NDArray[np.floating],
    shape: tuple[int, int], weights: Weights,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Total entry weight of every row and every column of a CSR matrix of kernel data r'.

        m_row = Σ_obs c + β · (n_cols − n_obs),   c = conf_offset + conf_scale · r'

    and the same down each column (with n_rows): the row sizes of the W and H
    half-steps, the m of :class:`RowPenalty`.
    """
    n_rows, n_cols = shape
    c = weights.conf_offset + weights.conf_scale * np.asarray(data, dtype=np.float64)
    counts = np.diff(indptr)
    rows = np.zeros(n_rows)
    if c.size:
        nonempty = counts > 0
        rows[nonempty] = np.add.reduceat(c, indptr[:-1][nonempty])
    columns = np.bincount(indices, weights=c, minlength=n_cols)
    rows += weights.beta * (n_cols - counts)
    columns += weights.beta * (n_rows - np.bincount(indices, minlength=n_cols))
    return rows, columns


def mass_of_row(data: NDArray[np.floating], n_other: int, weights: Weights) -> float:
    """m of one row from its kernel data r' alone (fold-in, explanations): :func:`row_masses`
    for a single row, without the per-column sums."""
    c = weights.conf_offset * data.size + weights.conf_scale * float(np.sum(data, dtype=np.float64))
    return c + weights.beta * (n_other - data.size)


def reference_mass(user_masses: NDArray[np.float64], item_masses: NDArray[np.float64]) -> float:
    """m̄ of :class:`RowPenalty`: the mean total entry weight over the rows of both sides."""
    total = user_masses.size + item_masses.size
    return float((user_masses.sum() + item_masses.sum()) / total) if total else 1.0


def check_feedback(value: object, *, name: str = "feedback") -> str:
    """``value`` if it names a feedback kind, else a ValidationError that lists them."""
    if not isinstance(value, str) or value not in FEEDBACK_KINDS:
        raise ValidationError(
            f"`{name}` must be one of {', '.join(map(repr, FEEDBACK_KINDS))}; got {value!r}."
        )
    return value


def check_confidence(value: object, *, name: str = "confidence") -> str:
    """``value`` if it names a confidence scaling, else a ValidationError that lists them."""
    if not isinstance(value, str) or value not in CONFIDENCE_SCALINGS:
        raise ValidationError(
            f"`{name}` must be one of {', '.join(map(repr, CONFIDENCE_SCALINGS))}; got {value!r}."
        )
    return value


def weights_of(feedback: str, alpha: float) -> Weights:
    """β, c and p of ``feedback`` (module docstring table)."""
    if check_feedback(feedback) == "implicit":
        return Weights(1.0, float(alpha), True, 1.0)
    if feedback == "explicit":
        return Weights(1.0, 0.0, False, 0.0)
    return Weights(1.0, 0.0, False, 1.0)


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


def confidence_data(
    user_items: sp.csr_matrix, confidence: str, dtype: np.dtype, stats: BM25Stats | None
) -> NDArray[np.floating]:
    """r' for each stored entry, in CSR order (shares R's data when nothing changes).

    ``stats`` (from :func:`bm25_stats` on the training matrix) is required for ``bm25``.
    """
    data = user_items.data.astype(dtype, copy=False)
    if check_confidence(confidence) == "log":
        return np.log1p(data / dtype.type(LOG_EPSILON))
    if confidence == "bm25":
        if stats is None:
            raise ValidationError(
                "confidence='bm25' needs the training matrix's BM25 statistics (bm25_stats(user_items)); "
                "got stats=None."
            )
        lengths = np.asarray(user_items.sum(axis=1), dtype=dtype).ravel()
        row_length = np.repeat(lengths, np.diff(user_items.indptr))
        return _bm25(data, row_length, user_items.indices, stats)
    return data


def kernel_data(
    user_items: sp.csr_matrix, feedback: str, confidence: str, dtype: np.dtype, stats: BM25Stats | None
) -> NDArray[np.floating]:
    """The stored values as the row solver reads them: r' for implicit feedback, else r."""
    if feedback == "implicit":
        return confidence_data(user_items, confidence, dtype, stats)
    return user_items.data.astype(dtype, copy=False)


def auto_regularization(user_items: sp.csr_matrix, feedback: str, alpha: float, confidence: str) -> float:
    """λ for ``regularization="auto"`` when no validation search picks one.

    Implicit and explicit feedback: λ = Σ_obs c_ui / (n_users + n_items), the
    confidence mass an average factor row carries, so the penalty keeps pace with
    the data term (the measured optimum on Last.fm play counts and MovieLens
    ratings lies within 30 % of it). Frobenius: ``FROBENIUS_AUTO_REGULARIZATION``.
    """
    if feedback == "frobenius":
        return FROBENIUS_AUTO_REGULARIZATION
    if feedback == "implicit":
        stats = bm25_stats(user_items) if confidence == "bm25" else None
        scaled = confidence_data(user_items, confidence, np.dtype(np.float64), stats)
        mass = user_items.nnz + float(alpha) * float(scaled.sum())  # Σ (1 + α·r')
    else:
        mass = float(user_items.nnz)  # c = 1
    return mass / sum(user_items.shape)

