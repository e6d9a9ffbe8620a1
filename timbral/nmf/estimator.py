"""NMFModel: non-negative matrix factorization for recommendation, scikit-learn style.

The estimator validates, keeps the fitted state and speaks in internal indices; the
fit loop is :mod:`timbral.nmf.fit`, top-K is :mod:`timbral.scoring`, explanations
are :mod:`timbral.nmf.explain` and the file format is :mod:`timbral.artifact`.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from timbral._validation import (
    DEFAULT_SEED,
    NONE,
    Interval,
    Options,
    check_index,
    check_indices,
    check_k,
    check_params,
    check_random_state,
    check_user_items,
)
from timbral.exceptions import NotFittedError, ValidationError
from timbral.nmf.explain import Explainer, Explanation
from timbral.nmf.fit import HalfStepBackend, fit_nmf, fold_in, regularized_gram
from timbral.nmf.init import INIT_KINDS
from timbral.nmf.objective import (
    CONFIDENCE_SCALINGS,
    DEFAULT_ALPHA,
    DEFAULT_CONFIDENCE,
    DEFAULT_FEEDBACK,
    DEFAULT_FREQUENCY_SCALE,
    FEEDBACK_KINDS,
    BM25Stats,
    RowPenalty,
    auto_regularization,
    bm25_stats,
    kernel_data,
    reference_mass,
    row_masses,
    weights_of,
)
from timbral.scoring import TopK, exclude_rows, item_mask, top_k

if TYPE_CHECKING:
    from timbral.tuning import SearchResult  # tuning imports this module

#: Each constructor parameter's allowed values, checked at ``fit`` and at load.
PARAMETER_CONSTRAINTS: dict[str, list[Any]] = {
    "n_components": [Interval(numbers.Integral, 1, None), Options(("auto",))],
    "feedback": [Options(FEEDBACK_KINDS)],
    "alpha": [Interval(numbers.Real, 0, None), Options(("auto",))],
    "confidence": [Options((*CONFIDENCE_SCALINGS, "auto"))],
    "regularization": [Interval(numbers.Real, 0, None), Options(("auto",))],
    "frequency_scale": [Interval(numbers.Real, 0, 2), Options(("auto",))],
    "l1_ratio": [Interval(numbers.Real, 0, 1)],
    "max_iter": [Interval(numbers.Integral, 1, None)],
    "tol": [Interval(numbers.Real, 0, None)],
    "random_state": [Interval(numbers.Integral, 0, None), np.random.Generator, NONE],
    "n_threads": [Interval(numbers.Integral, 0, None)],
    "init": [Options(INIT_KINDS)],
    "warm_start": [bool],
}


@dataclass(frozen=True)
class FittedState:
    """Everything ``fit`` learns, as one value: what a saved model must hand back.

    ``user_factors`` (n_users, k), ``item_factors`` (n_items, k), ``user_bias``
    (n_users,), ``item_bias`` (n_items,), ``global_mean`` (zero unless explicit), the
    λ used (``regularization``), ``n_iter``, ``loss_history`` and ``user_items`` (the
    CSR matrix fitted on). ``confidence`` and ``alpha`` are the values the fit used
    (None: the parameters' own, as in directories written before "auto" could choose
    them), ``frequency_scale`` the ν of the ridge (None: the parameter's, or 0 for
    directories written before it existed) and ``search_results`` the validation table
    of the search (None without one).
    """

    user_factors: NDArray[np.floating]
    item_factors: NDArray[np.floating]
    user_bias: NDArray[np.floating]
    item_bias: NDArray[np.floating]
    global_mean: float
    regularization: float
    n_iter: int
    loss_history: list[float]
    user_items: sp.csr_matrix
    confidence: str | None = None
    alpha: float | None = None
    search_results: list[dict[str, Any]] | None = None
    frequency_scale: float | None = None


@dataclass(frozen=True)
class _Choice:
    """What ``fit`` uses for each parameter that may be "auto", and where the search left off."""

    n_components: int
    confidence: str
    alpha: float
    regularization: float
    frequency_scale: float
    search_results: list[dict[str, Any]] | None
    factors: tuple[NDArray[np.floating], NDArray[np.floating]] | None


class NMFModel:
    """Collaborative filtering by weighted non-negative matrix factorization.

    Factor a users × items matrix ``R`` into ``W`` (users × k) ≥ 0 and
    ``H`` (items × k) ≥ 0 by minimising

        Σ_all β (w_u·h_i)² + Σ_obs [c_ui (p_ui − w_u·h_i)² − β (w_u·h_i)²]
        + Σ_rows λ₂,row ‖x_row‖² + λ₁ (Σ W + Σ H)

    with alternating projected coordinate descent over rows
    (:mod:`timbral.nmf.objective` has the weights of each feedback kind).

    Parameters
    ----------
    n_components : int or "auto", default=50
        Number of latent factors ``k``; "auto" chooses among
        ``timbral.tuning.N_COMPONENTS_GRID`` by validation (implicit and explicit).
    feedback : {"implicit", "explicit", "frobenius"}, default="implicit"
        ``implicit``: play counts or likes (β=1, c=1+α·r', p=1) for top-K.
        ``explicit``: ratings (β=0, c=1, p=r−μ−b_u−b_i) with fitted biases.
        ``frobenius``: plain NMF of the zero-filled matrix (scikit-learn's objective).
    alpha : float or "auto", default=1.0
        Confidence slope for implicit feedback. As ``c = 1 + α·r'`` against the
        unobserved entries' weight 1, α also sets how much an unobserved entry
        weighs relative to an observed one; "auto" chooses it by validation.
    confidence : {"linear", "log", "bm25", "auto"}, default="auto"
        How raw implicit values become ``r'`` before ``c = 1 + α·r'``: ``r``,
        ``log(1 + r)`` or BM25 weights. "auto" chooses by validation: ``log``
        (which tames heavy-tailed play counts) unless another scaling beats it
        clearly on the validation split (``timbral.tuning``); a name turns that off.
    regularization : float or "auto", default="auto"
        Total penalty weight λ, split into L2 and L1 by ``l1_ratio``. "auto"
        (implicit and explicit feedback) chooses λ by validation on a split of
        the training matrix, along a warm-started path (``timbral.tuning``);
        for frobenius it is a light ridge (``timbral.nmf.objective.auto_regularization``).
        A number turns that search off. Every "auto" parameter is searched
        together; the values used are the fitted ``regularization_``,
        ``confidence_``, ``alpha_``, ``frequency_scale_`` and ``n_components_``.
    frequency_scale : float in [0, 2] or "auto", default="auto"
        ν of the frequency-scaled ridge (Rendle et al. 2021): each row of W and H
        gets λ₂ · (m / m̄)^ν, where m is the row's total entry weight (Σ of its
        confidences plus β per unobserved entry) and m̄ the mean over all rows, so
        heavily weighted rows are shrunk more (``timbral.nmf.objective.RowPenalty``).
        0 is the plain ridge; "auto" chooses among ``timbral.tuning.FREQUENCY_SCALE_GRID``
        by validation (implicit and explicit): 0 unless ν = 1 beats it clearly on the
        validation split. Frobenius fits, and "auto" without a search (a fixed λ and
        nothing else to choose), use 0.
    l1_ratio : float in [0, 1], default=0.0
        Share of ``regularization`` given to the L1 (sparsity) term.
    max_iter : int, default=200
        Maximum number of epochs (a W half-step and an H half-step each).
    tol : float, default=1e-4
        Stop when the relative decrease of the objective falls below ``tol``.
    random_state : int, numpy Generator or None, default=42
        Seed of the initial factors.
    n_threads : int, default=0
        Kernel threads; 0 uses every available core.
    init : {"random", "nndsvd"}, default="random"
        Initial factors.
    warm_start : bool, default=False
        Start ``fit`` from the factors of the previous fit (same shapes) instead
        of ``init``, as scikit-learn's ``warm_start``: a λ path refits cheaply.

    Attributes
    ----------
    user_factors_ : ndarray of shape (n_users, n_components)
    item_factors_ : ndarray of shape (n_items, n_components)
    user_bias_, item_bias_ : ndarray of shape (n_users,), (n_items,)
        Zero except for explicit feedback.
    global_mean_ : float
        μ for explicit feedback, else 0.
    regularization_, alpha_, frequency_scale_ : float
    confidence_ : str
        The values the fit used (chosen by validation where the parameter was "auto").
    search_results_ : list of dict or None
        The validation table of the search (one row per setting tried: its
        values, the validation metric, epochs and seconds); None without a search.
    n_iter_ : int
    loss_history_ : list of float
        The objective after every epoch.
    user_items_ : scipy.sparse.csr_matrix
        The matrix the model was fitted on (stored zeros dropped): seen items and
        explanations come from it.
    """

    _parameter_constraints = PARAMETER_CONSTRAINTS

    def __init__(
        self,
        *,
        n_components: int | str = 50,
        feedback: str = DEFAULT_FEEDBACK,
        alpha: float | str = DEFAULT_ALPHA,
        confidence: str = "auto",
        regularization: float | str = "auto",
        frequency_scale: float | str = "auto",
        l1_ratio: float = 0.0,
        max_iter: int = 200,
        tol: float = 1e-4,
        random_state: int | np.random.Generator | None = DEFAULT_SEED,
        n_threads: int = 0,
        init: str = "random",
        warm_start: bool = False,
    ) -> None:
        self.n_components = n_components
        self.feedback = feedback
        self.alpha = alpha
        self.confidence = confidence
        self.regularization = regularization
        self.frequency_scale = frequency_scale
        self.l1_ratio = l1_ratio
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.n_threads = n_threads
        self.init = init
        self.warm_start = warm_start

    # -- scikit-learn estimator protocol ------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters, by name."""
        return {name: getattr(self, name) for name in PARAMETER_CONSTRAINTS}

    def set_params(self, **params: Any) -> NMFModel:
        """Set constructor parameters; they are checked at the next ``fit``."""
        for name, value in params.items():
            if name not in PARAMETER_CONSTRAINTS:
                raise ValidationError(
                    f"NMFModel has no parameter {name!r}; valid ones are "
                    + ", ".join(PARAMETER_CONSTRAINTS)
                    + "."
                )
            setattr(self, name, value)
        return self

    def check_params(self) -> None:
        """Raise ValidationError naming the first parameter out of its range (``fit`` does this)."""
        check_params(self.get_params(), PARAMETER_CONSTRAINTS)

    def __repr__(self) -> str:
        defaults = NMFModel().get_params()
        changed = {k: v for k, v in self.get_params().items() if not _same(v, defaults[k])}
        return "NMFModel(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"

    # -- fitting ----------------------------------------------------------------------

    def fit(
        self,
        user_items: sp.spmatrix | sp.sparray | NDArray[np.floating],
        *,
        show_progress: bool = False,
        callback: Callable[[int, float], None] | None = None,
        backend: HalfStepBackend | None = None,
        search: SearchResult | None = None,
    ) -> NMFModel:
        """Learn user and item factors from a users × items matrix.

        Parameters
        ----------
        user_items : sparse matrix of shape (n_users, n_items)
            Play counts, likes or ratings; only stored entries are observed, and
            explicitly stored zeros are dropped (a zero is not an interaction; the
            loader drops them too). Dense arrays and other sparse formats are
            converted to CSR (a copy).
        show_progress : bool, default=False
            Show a progress bar (tqdm) over epochs, and over the search's settings.
        callback : callable(iteration, loss), optional
            Called after every epoch.
        backend : HalfStepBackend, optional
            Where the row solves run; default this machine
            (``timbral.distributed.fit_distributed`` passes a Dask backend). A backend
            without per-row ridges keeps ``frequency_scale="auto"`` at the plain ridge.
        search : timbral.tuning.SearchResult, optional
            A search already run for these parameters (e.g. on the training part of
            an evaluation split): its choices settle the "auto" parameters and it is
            not run again. Its factors are a start only when their shapes fit.

        Returns
        -------
        self
        """
        self.check_params()
        csr = check_user_items(user_items)
        rng = check_random_state(self.random_state)
        plain_ridge = backend is not None and not backend.supports_row_l2
        chosen = self._choose_parameters(csr, show_progress, search, plain_ridge)
        l1, l2 = _penalties(chosen.regularization, self.l1_ratio)
        initial = self._warm_start_factors(csr.shape, chosen.n_components) or chosen.factors
        progress = _progress_bar(self.max_iter) if show_progress else None

        def on_epoch(iteration: int, loss: float) -> None:
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.5g}")
            if callback is not None:
                callback(iteration, loss)

        try:
            result = fit_nmf(
                csr,
                n_components=chosen.n_components,
                feedback=self.feedback,
                alpha=chosen.alpha,
                confidence=chosen.confidence,
                l2=l2,
                l1=l1,
                frequency_scale=chosen.frequency_scale,
                max_iter=self.max_iter,
                tol=float(self.tol),
                rng=rng,
                init=self.init,
                n_threads=self.n_threads,
                dtype=np.float64 if csr.dtype == np.float64 else np.float32,
                callback=on_epoch,
                backend=backend,
                initial=initial,
            )
        finally:
            if progress is not None:
                progress.close()
        self._set_fitted(
            FittedState(
                result.user_factors, result.item_factors, result.user_bias, result.item_bias,
                result.global_mean, chosen.regularization, result.n_iter, result.loss_history, csr,
                chosen.confidence, chosen.alpha, chosen.search_results, chosen.frequency_scale,
            )
        )
        return self

    @classmethod
    def from_fitted(cls, params: Mapping[str, Any], state: FittedState) -> NMFModel:
        """A fitted model from its parameters and state (what ``timbral.artifact`` reads back).

        Every part is checked against the parameters and the others: shapes agree,
        factors and biases are finite, factors are non-negative, ``global_mean`` and
        the biases are zero unless ``feedback="explicit"``, λ and α are finite and ≥ 0,
        and the state records the values of parameters that were "auto" (k is the factors').

        Raises
        ------
        ValidationError
            Naming the first part that does not fit.
        """
        unknown = sorted(set(params) - set(PARAMETER_CONSTRAINTS))
        if unknown:
            raise ValidationError(
                f"`params` has unknown parameter(s) {unknown}; valid ones are {list(PARAMETER_CONSTRAINTS)}."
            )
        model = cls(**params)
        model.check_params()
        W, H = np.asarray(state.user_factors), np.asarray(state.item_factors)
        b_u, b_i = np.asarray(state.user_bias), np.asarray(state.item_bias)
        if W.ndim != 2 or H.ndim != 2 or W.shape[1] != H.shape[1] or model.n_components not in ("auto", W.shape[1]):
            raise ValidationError(
                f"factor shapes {W.shape} and {H.shape} do not match n_components={model.n_components}."
            )
        if b_u.shape != (W.shape[0],) or b_i.shape != (H.shape[0],):
            raise ValidationError(
                f"bias shapes {b_u.shape}, {b_i.shape} do not match {W.shape[0]} users × {H.shape[0]} items."
            )
        user_items = state.user_items
        if not sp.issparse(user_items) or user_items.shape != (W.shape[0], H.shape[0]):
            raise ValidationError(
                f"`user_items` must be a sparse matrix of shape {(W.shape[0], H.shape[0])} (users × items); "
                f"got {type(user_items).__name__} of shape {getattr(user_items, 'shape', None)}."
            )
        user_items = sp.csr_matrix(user_items)
        try:
            user_items.check_format(full_check=True)
        except ValueError as exc:
            raise ValidationError(f"`user_items` is not a valid CSR matrix ({exc}).") from None
        for name, array in (("user_factors", W), ("item_factors", H), ("user_bias", b_u), ("item_bias", b_i)):
            if array.dtype.kind != "f" or not np.all(np.isfinite(array)):
                raise ValidationError(
                    f"`{name}` must hold finite floats; got dtype {array.dtype} or non-finite values."
                )
        if (W.size and W.min() < 0) or (H.size and H.min() < 0):
            raise ValidationError("the factors must be non-negative; got negative entries.")
        mu = state.global_mean
        if not np.isfinite(mu) or (model.feedback != "explicit" and (mu != 0 or np.any(b_u) or np.any(b_i))):
            raise ValidationError(
                f"global_mean={mu!r} and non-zero biases belong to feedback='explicit' only; "
                f"this model has feedback={model.feedback!r}."
            )
        lam = state.regularization
        if isinstance(lam, bool) or not np.isfinite(lam) or lam < 0:
            raise ValidationError(f"`regularization` must be a finite number ≥ 0; got {lam!r}.")
        confidence = model.confidence if state.confidence is None else state.confidence
        if confidence not in CONFIDENCE_SCALINGS:
            raise ValidationError(
                f"`confidence` must be one of {', '.join(map(repr, CONFIDENCE_SCALINGS))} (the scaling the "
                f"fit used; 'auto' needs the state to record its choice); got {confidence!r}."
            )
        alpha = model.alpha if state.alpha is None else state.alpha
        if isinstance(alpha, (bool, str)) or not np.isfinite(alpha) or alpha < 0:
            raise ValidationError(
                f"`alpha` must be a finite number ≥ 0 (the slope the fit used; 'auto' needs the state "
                f"to record its choice); got {alpha!r}."
            )
        nu = state.frequency_scale
        if nu is None:  # directories written before the frequency-scaled ridge: the plain one
            nu = DEFAULT_FREQUENCY_SCALE if model.frequency_scale == "auto" else model.frequency_scale
        if not isinstance(nu, numbers.Real) or isinstance(nu, bool) or not (np.isfinite(nu) and 0 <= nu <= 2):
            raise ValidationError(
                f"`frequency_scale` must be a number in [0, 2] (the ν the fit used); got {nu!r}."
            )
        model._set_fitted(
            FittedState(
                W, H, b_u, b_i, mu, lam, state.n_iter, state.loss_history, user_items,
                confidence, float(alpha), state.search_results, float(nu),
            )
        )
        return model

    def _set_fitted(self, state: FittedState) -> None:
        """The one place the fitted state is assigned (and the per-model caches reset)."""
        self.user_factors_ = state.user_factors
        self.item_factors_ = state.item_factors
        self.user_bias_ = np.asarray(state.user_bias, dtype=state.user_factors.dtype)
        self.item_bias_ = np.asarray(state.item_bias, dtype=state.item_factors.dtype)
        self.global_mean_ = float(state.global_mean)
        self.regularization_ = float(state.regularization)
        self.confidence_ = str(state.confidence)
        self.alpha_ = float(state.alpha)
        self.frequency_scale_ = float(state.frequency_scale or 0.0)
        self.search_results_ = state.search_results
        self.n_iter_ = int(state.n_iter)
        self.loss_history_ = [float(x) for x in state.loss_history]
        user_items = state.user_items
        if not user_items.has_sorted_indices:
            user_items = user_items.sorted_indices()  # top-K walks each row's seen items in order
        self.user_items_ = user_items
        self._cache: dict[str, Any] = {}

    @property
    def n_users_(self) -> int:
        self._check_fitted()
        return self.user_factors_.shape[0]

    @property
    def n_items_(self) -> int:
        self._check_fitted()
        return self.item_factors_.shape[0]

    @property
    def n_components_(self) -> int:
        self._check_fitted()
        return self.item_factors_.shape[1]

    # -- scoring ----------------------------------------------------------------------

    def predict(self, users: ArrayLike, items: ArrayLike) -> NDArray[np.floating]:
        """Scores (predicted ratings for explicit feedback) of (user, item) pairs.

        ``users`` and ``items`` broadcast against each other.
        """
        self._check_fitted()
        u = check_indices(users, self.n_users_, name="users")
        i = check_indices(items, self.n_items_, name="items")
        try:
            u, i = np.broadcast_arrays(u, i)
        except ValueError:
            raise ValidationError(
                f"`users` (length {u.size}) and `items` (length {i.size}) must have the same "
                "length, or one of them length 1."
            ) from None
        scores = np.einsum("ij,ij->i", self.user_factors_[u], self.item_factors_[i])
        return scores + self._bias(u, i)

    def recommend(
        self,
        user: int,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        exclude_items: ArrayLike | None = None,
        items: ArrayLike | None = None,
        user_items: sp.csr_matrix | None = None,
    ) -> tuple[NDArray[np.int32], NDArray[np.floating]]:
        """The ``k`` best items for one user, best first.

        Parameters
        ----------
        user : int
            Internal user index.
        k : int, default=10
            At most the number of items (a larger ``k`` is clamped).
        exclude_seen : bool, default=True
            Leave out the items the user has in ``user_items``.
        exclude_items : array-like of int, optional
            Items never to recommend (a deny list).
        items : array-like of int, optional
            Recommend only among these items (an allow list).
        user_items : sparse matrix of shape (n_users, n_items), optional
            The interactions that count as seen (default: the training matrix
            ``user_items_``); rows must have sorted indices.

        Returns
        -------
        ids : ndarray of int32, scores : ndarray
            At most ``k`` each (fewer when fewer items are eligible).
        """
        self._check_fitted()
        user = check_index(user, self.n_users_, name="user")
        ids, scores = self.recommend_batch(
            [user], k, exclude_seen=exclude_seen, exclude_items=exclude_items, items=items,
            user_items=user_items,
        )
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def recommend_batch(
        self,
        users: ArrayLike,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        exclude_items: ArrayLike | None = None,
        items: ArrayLike | None = None,
        user_items: sp.csr_matrix | None = None,
    ) -> tuple[NDArray[np.int32], NDArray[np.floating]]:
        """The ``k`` best items for each of ``users`` (parameters as :meth:`recommend`).

        Returns
        -------
        ids : ndarray of int32, shape (n_users, min(k, n_items))
        scores : ndarray, shape (n_users, min(k, n_items))
            Best first; rows with fewer eligible items are padded with id ``-1``
            and score ``-inf``.
        """
        self._check_fitted()
        users = check_indices(users, self.n_users_, name="users")
        seen = None
        if exclude_seen:
            seen = self.user_items_ if user_items is None else self._seen(user_items)
        mask = self._item_mask(exclude_items, items)
        return self.recommend_trusted(users, check_k(k, limit=self.n_items_), seen=seen, item_mask=mask)

    def recommend_trusted(
        self,
        users: NDArray[np.int64],
        k: int,
        *,
        seen: sp.csr_matrix | None,
        item_mask: NDArray[np.bool_] | None,
    ) -> tuple[NDArray[np.int32], NDArray[np.floating]]:
        """:meth:`recommend_batch` for inputs the caller has already checked; no checks here.

        For callers that score many small batches and validate once, at their own entry
        (``Recommender.rank_batch``): every check of ``recommend_batch`` costs about as
        much as scoring one user against 10K items.

        Parameters
        ----------
        users : int64 ndarray of shape (n_users,)
            Internal user indices, each in ``[0, n_users_)``.
        k : int
            In ``[1, n_items_]`` (``check_k(k, limit=n_items_)``).
        seen : scipy.sparse.csr_matrix of shape (n_users_, n_items_), or None
            Items to leave out per user, with sorted indices; None leaves none out.
        item_mask : bool ndarray of shape (n_items_,), or None
            True = never recommend (``timbral.scoring.item_mask``).

        Returns
        -------
        As :meth:`recommend_batch`. Inputs outside this contract give wrong answers or
        NumPy errors, not the checked errors of :meth:`recommend_batch`.
        """
        scorer = self._cached("top_k", lambda: TopK(self._scoring_items()))
        query = self._scoring_query(self.user_factors_.take(users, axis=0))  # take: a third of fancy indexing's cost
        exclude = None if seen is None else exclude_rows(seen, users)
        ids, scores = scorer(query, k, exclude=exclude, item_mask=item_mask, n_threads=self.n_threads)
        return ids, self._with_bias(scores, users)

    def recommend_from_factors(
        self,
        factors: ArrayLike,
        k: int = 10,
        *,
        exclude: sp.spmatrix | ArrayLike | None = None,
        exclude_items: ArrayLike | None = None,
        items: ArrayLike | None = None,
    ) -> tuple[NDArray[np.int32], NDArray[np.floating]]:
        """Top-K for factor rows that are not in the model (e.g. from ``fold_in``).

        ``factors`` of shape (k,) gives 1-D results like ``recommend`` (``exclude`` is
        then a list of item indices); shape (n, k) gives padded 2-D results like
        ``recommend_batch`` (``exclude`` is then a CSR matrix with n rows).
        """
        self._check_fitted()
        query = np.asarray(factors, dtype=self.item_factors_.dtype)
        one = query.ndim == 1
        query = np.atleast_2d(query)
        if query.ndim != 2 or query.shape[1] != self.n_components_:
            raise ValidationError(
                f"`factors` must have shape (n_components,) or (n, n_components) with "
                f"n_components={self.n_components_}; got shape {np.shape(factors)}."
            )
        if one and exclude is not None and not sp.issparse(exclude):
            cols = check_indices(exclude, self.n_items_, name="exclude")
            exclude = sp.csr_matrix(
                (np.ones(cols.size, np.float32), (np.zeros(cols.size, np.int64), cols)),
                shape=(1, self.n_items_),
            )
        ids, scores = self._top_k(
            query, None, k, exclude=exclude, exclude_items=exclude_items, items=items
        )
        if not one:
            return ids, scores
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def similar_items(self, item: int, k: int = 10) -> tuple[NDArray[np.int32], NDArray[np.floating]]:
        """The ``k`` items whose factors are closest in cosine similarity; never ``item`` itself."""
        self._check_fitted()
        item = check_index(item, self.n_items_, name="item")
        normalized = self._normalized_items()
        exclude = sp.csr_matrix(([1.0], ([0], [item])), shape=(1, self.n_items_))
        ids, scores = top_k(
            normalized[item : item + 1], normalized, k, exclude=exclude, n_threads=self.n_threads
        )
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def fold_in(self, item_indices: ArrayLike, weights: ArrayLike | None = None) -> NDArray[np.floating]:
        """The factor row of a user the model has never seen, from their interactions.

        Solves the same non-negative least-squares problem as a training half-step
        against the fixed item factors (reusing the model's cached β HᵀH + λ₂ I), so
        the result is what ``fit`` would give this user. ``weights`` are play counts
        or ratings (default 1 each).
        """
        self._check_fitted()
        cols = check_indices(item_indices, self.n_items_, name="item_indices")
        if weights is None:
            values = np.ones(cols.size, dtype=np.float64)
        else:
            values = np.asarray(weights, dtype=np.float64).reshape(-1)
            if values.shape != cols.shape:
                raise ValidationError(
                    f"`weights` must have one value per item; got {values.size} for {cols.size} items."
                )
            if not np.all(np.isfinite(values)) or (values.size and values.min() < 0):
                raise ValidationError("`weights` must be finite and ≥ 0; got " f"{values.tolist()[:5]}.")
        l1, l2 = _penalties(self.regularization_, self.l1_ratio)
        return fold_in(
            self.item_factors_,
            cols,
            values,
            feedback=self.feedback,
            alpha=self.alpha_,
            confidence=self.confidence_,
            l2=l2,
            l1=l1,
            frequency_scale=self.frequency_scale_,
            reference_mass=self._reference_mass(),
            global_mean=self.global_mean_,
            item_bias=self.item_bias_,
            gram=self._gram(),
            bm25=self._bm25_stats(),
        )

    def explain(self, user: int, item: int, *, n_factors: int = 5, n_items: int = 5) -> Explanation:
        """Split ``user``'s score for ``item`` into latent factors and history items.

        Costs O(|history|·k² + k³): the user-independent part of the system is
        computed once per model.
        """
        self._check_fitted()
        user = check_index(user, self.n_users_, name="user")
        item = check_index(item, self.n_items_, name="item")
        n_factors = check_k(n_factors, name="n_factors")
        n_items = check_k(n_items, name="n_items")
        bias = float(np.sum(self._bias(np.array([user]), np.array([item]))))
        return self._explainer().explain(
            self.user_items_[user], user, item, self.user_factors_[user], bias, n_factors, n_items
        )

    # -- persistence ------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model as a model directory (``timbral.artifact``, ids 0..n-1).

        The directory is the one ``Recommender.save`` writes, metadata included
        (``model_version``, ``created_at``, parameters, checksums), so the server and
        ``Recommender.load`` read it as any other model.

        Returns
        -------
        pathlib.Path
        """
        from timbral.artifact import save_model  # the file format depends on the estimator

        return save_model(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NMFModel:
        """Read a model directory written by ``save`` (or ``Recommender.save``); refuse a damaged one.

        A single-file ``.npz`` written by timbral 0.1's ``NMFModel.save`` is refused
        with its format version and what to do.
        """
        from timbral.artifact import load_model

        return load_model(path)

    # -- internals ---------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "user_factors_"):
            raise NotFittedError("This NMFModel is not fitted yet; call fit(user_items) first.")

    def _seen(self, user_items: Any) -> sp.csr_matrix:
        """``user_items`` as the exclusion matrix: CSR with sorted indices, this model's shape."""
        seen = user_items if sp.isspmatrix_csr(user_items) else sp.csr_matrix(user_items)
        if seen.shape != (self.n_users_, self.n_items_):
            raise ValidationError(
                f"`user_items` must have shape {(self.n_users_, self.n_items_)}; got {seen.shape}."
            )
        return seen if seen.has_sorted_indices else seen.sorted_indices()

    def _choose_parameters(
        self, user_items: sp.csr_matrix, show_progress: bool = False, found: SearchResult | None = None,
        plain_ridge: bool = False,
    ) -> _Choice:
        """Settle every "auto" parameter by ``timbral.tuning.search`` (validation on a split of
        ``user_items``) or by ``found``; with the search's factors to start the fit from (None:
        from ``init``). ``plain_ridge``: the backend has no per-row ridge, so "auto" ν is 0, not searched."""
        from timbral import tuning  # tuning fits NMFModels: imported here, not at the top

        chosen, table, factors = self.get_params(), None, None
        if plain_ridge and chosen["frequency_scale"] == "auto":
            chosen["frequency_scale"] = DEFAULT_FREQUENCY_SCALE
        names = tuning.searched_parameters(chosen)
        if names:
            if found is None:
                found = tuning.search(user_items, chosen, show_progress=show_progress)
            missing = sorted(set(names) - set(found.params))
            if missing:
                raise ValidationError(
                    f"`search` chose {sorted(found.params)} but this model needs {names} ('auto'): it was run "
                    f"for other parameters. Run timbral.tuning.search with model.get_params(), or pass "
                    f"numbers for {missing}."
                )
            chosen |= {name: found.params[name] for name in names}
            table, factors = found.table, found.factors
            shapes = ((user_items.shape[0], chosen["n_components"]), (user_items.shape[1], chosen["n_components"]))
            if factors is not None and tuple(np.shape(F) for F in factors) != shapes:
                factors = None
        # Still "auto" only where the feedback kind ignores it (no confidence outside implicit).
        confidence = DEFAULT_CONFIDENCE if chosen["confidence"] == "auto" else chosen["confidence"]
        alpha = DEFAULT_ALPHA if chosen["alpha"] == "auto" else float(chosen["alpha"])
        # "auto" λ and ν are left only for frobenius, which has no validation metric: a fixed light ridge.
        reg = chosen["regularization"]
        regularization = auto_regularization(user_items, self.feedback, alpha, confidence) if reg == "auto" else reg
        nu = DEFAULT_FREQUENCY_SCALE if chosen["frequency_scale"] == "auto" else float(chosen["frequency_scale"])
        return _Choice(
            int(chosen["n_components"]), confidence, alpha, float(regularization), nu, table, factors
        )

    def _warm_start_factors(
        self, shape: tuple[int, int], n_components: int
    ) -> tuple[NDArray[np.floating], NDArray[np.floating]] | None:
        """The previous fit's factors when ``warm_start`` is on and a previous fit exists."""
        if not (self.warm_start and hasattr(self, "user_factors_")):
            return None
        expected = ((shape[0], n_components), (shape[1], n_components))
        if (self.user_factors_.shape, self.item_factors_.shape) != expected:
            raise ValidationError(
                f"warm_start=True needs the previous fit's shapes {expected}; it has "
                f"{self.user_factors_.shape} and {self.item_factors_.shape}. Fit the same matrix "
                "with the same n_components, or set warm_start=False."
            )
        return self.user_factors_, self.item_factors_

    def _cached(self, name: str, compute: Callable[[], Any]) -> Any:
        """A per-model value computed once (racing threads at worst compute it twice)."""
        if name not in self._cache:
            self._cache[name] = compute()
        return self._cache[name]

    def _bm25_stats(self) -> BM25Stats | None:
        """Corpus statistics for BM25 confidence, from the training matrix."""
        if self.feedback != "implicit" or self.confidence_ != "bm25":
            return None
        return self._cached("bm25", lambda: bm25_stats(self.user_items_))

    def _reference_mass(self) -> float:
        """m̄ of the frequency-scaled ridge, as the fit computed it (1 when ν = 0)."""
        if not self.frequency_scale_:
            return 1.0

        def compute() -> float:
            R = self.user_items_
            data = kernel_data(R, self.feedback, self.confidence_, self.item_factors_.dtype, self._bm25_stats())
            weights = weights_of(self.feedback, self.alpha_)
            return reference_mass(*row_masses(R.indptr, R.indices, data, R.shape, weights))

        return self._cached("reference_mass", compute)

    def _gram(self) -> NDArray[np.floating]:
        """β HᵀH + λ₂ I in the factor dtype (β HᵀH alone with a frequency-scaled ridge, whose
        λ is the row's): every fold-in's system starts from it."""
        l2 = 0.0 if self.frequency_scale_ else _penalties(self.regularization_, self.l1_ratio)[1]
        beta = weights_of(self.feedback, self.alpha_).beta
        H = self.item_factors_
        return self._cached("gram", lambda: regularized_gram(H.T @ H, beta, l2))

    def _explainer(self) -> Explainer:
        return self._cached(
            "explainer",
            lambda: Explainer(
                self.item_factors_,
                feedback=self.feedback,
                alpha=self.alpha_,
                confidence=self.confidence_,
                penalty=RowPenalty(
                    _penalties(self.regularization_, self.l1_ratio)[1], self.frequency_scale_, self._reference_mass()
                ),
                bm25=self._bm25_stats(),
                global_mean=self.global_mean_,
                user_bias=self.user_bias_,
                item_bias=self.item_bias_,
            ),
        )

    def _bias(self, users: NDArray[np.int64], items: NDArray[np.int64]) -> NDArray[np.floating] | float:
        if self.feedback != "explicit":
            return 0.0
        return self.global_mean_ + self.user_bias_[users] + self.item_bias_[items]

    def _normalized_items(self) -> NDArray[np.floating]:
        def normalize() -> NDArray[np.floating]:
            norms = np.linalg.norm(self.item_factors_, axis=1, keepdims=True)
            tiny = np.finfo(self.item_factors_.dtype).tiny
            return np.ascontiguousarray(self.item_factors_ / np.maximum(norms, tiny))

        return self._cached("normalized", normalize)

    def _scoring_items(self) -> NDArray[np.floating]:
        """Item factors, extended by the item bias for explicit feedback (score = w·h + b_i)."""
        def extend() -> NDArray[np.floating]:
            if self.feedback != "explicit":
                return np.ascontiguousarray(self.item_factors_)
            return np.ascontiguousarray(np.hstack([self.item_factors_, self.item_bias_[:, None]]))

        return self._cached("items", extend)

    def _top_k(
        self,
        query: NDArray[np.floating],
        users: NDArray[np.int64] | None,
        k: int,
        *,
        exclude: sp.spmatrix | tuple[NDArray[np.int64], NDArray[np.int32]] | None,
        exclude_items: ArrayLike | None,
        items: ArrayLike | None,
    ) -> tuple[NDArray[np.int32], NDArray[np.floating]]:
        mask = self._item_mask(exclude_items, items)
        if exclude is not None and not isinstance(exclude, tuple):
            exclude = sp.csr_matrix(exclude)
        ids, scores = top_k(
            np.ascontiguousarray(self._scoring_query(query), dtype=self.item_factors_.dtype),
            self._scoring_items(),
            k,
            exclude=exclude,
            item_mask=mask,
            n_threads=self.n_threads,
        )
        return ids, self._with_bias(scores, users)

    def _item_mask(self, exclude_items: ArrayLike | None, items: ArrayLike | None) -> NDArray[np.bool_] | None:
        """``item_mask`` from a deny and an allow list of item indices, checked."""
        return item_mask(
            self.n_items_,
            allow=None if items is None else check_indices(items, self.n_items_, name="items"),
            deny=None if exclude_items is None else check_indices(exclude_items, self.n_items_, name="exclude_items"),
        )

    def _scoring_query(self, query: NDArray[np.floating]) -> NDArray[np.floating]:
        """Factor rows as scored against ``_scoring_items``: explicit feedback appends a 1 that
        meets the item bias column."""
        if self.feedback != "explicit":
            return query
        return np.hstack([query, np.ones((query.shape[0], 1), dtype=query.dtype)])

    def _with_bias(self, scores: NDArray[np.floating], users: NDArray[np.int64] | None) -> NDArray[np.floating]:
        """Explicit feedback's scores plus μ + b_u (the kernel adds b_i through the extra item column)."""
        if self.feedback != "explicit":
            return scores
        offset = self.global_mean_ + (self.user_bias_[users] if users is not None else 0.0)
        return scores + np.asarray(offset, dtype=scores.dtype).reshape(-1, 1)


def _penalties(regularization: float, l1_ratio: float) -> tuple[float, float]:
    """(l1, l2) from the resolved λ and ``l1_ratio``."""
    return float(regularization * l1_ratio), float(regularization * (1.0 - l1_ratio))


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fit", unit="epoch", leave=False)
