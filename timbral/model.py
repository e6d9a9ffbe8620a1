"""NMFModel: non-negative matrix factorization for recommendation, scikit-learn style.

The estimator validates, keeps the fitted state and speaks in internal indices;
the maths runs in ``timbral._solvers`` (fit loops) and ``timbral._scoring``
(top-K), which call the GIL-free kernels in ``timbral._core``.
"""

from __future__ import annotations

import hashlib
import io
import json
import numbers
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from timbral import _solvers
from timbral._scoring import exclude_rows, top_k
from timbral._validation import (
    NONE,
    Interval,
    Options,
    check_index,
    check_indices,
    check_k,
    check_params,
    check_user_items,
)
from timbral._version import __version__
from timbral.exceptions import ArtifactError, NotFittedError, ValidationError

FEEDBACK_KINDS = ("implicit", "explicit", "frobenius")
CONFIDENCE_SCALINGS = ("linear", "log", "bm25")
MODEL_FORMAT_VERSION = 1
#: ``regularization="auto"`` for plain NMF: a light ridge, as the objective has no scale of its own.
FROBENIUS_AUTO_REGULARIZATION = 0.01
#: The arrays of a fitted model's state, in both file formats.
STATE_ARRAYS = (
    "user_factors",
    "item_factors",
    "user_bias",
    "item_bias",
    "user_items_indptr",
    "user_items_indices",
    "user_items_data",
)


@dataclass(frozen=True)
class Explanation:
    """Why ``user`` is recommended ``item``.

    Attributes
    ----------
    user, item : int
        Internal indices.
    score : float
        The model's score for the pair (``predict``).
    factors : list of (factor, contribution)
        The latent factors with the largest ``w_uf · h_if``; they sum (with the
        rest) to the factor part of the score.
    items : list of (history item, contribution)
        The user's own interactions that push the score up most: the score's
        linear decomposition over the row solver's right-hand side,
        ``c_j p_j · h_jᵀ A_u⁻¹ h_i`` (as implicit's ALS ``explain``).
    bias : float
        ``μ + b_u + b_i`` for explicit feedback, else 0.
    """

    user: int
    item: int
    score: float
    factors: list[tuple[int, float]] = field(default_factory=list)
    items: list[tuple[int, float]] = field(default_factory=list)
    bias: float = 0.0


class NMFModel:
    """Collaborative filtering by weighted non-negative matrix factorization.

    Factor a users × items matrix ``R`` into ``W`` (users × k) ≥ 0 and
    ``H`` (items × k) ≥ 0 by minimising

        Σ_all β (w_u·h_i)² + Σ_obs [c_ui (p_ui − w_u·h_i)² − β (w_u·h_i)²]
        + λ₂ (‖W‖² + ‖H‖²) + λ₁ (Σ W + Σ H)

    with alternating projected coordinate descent over rows (DESIGN.md §2).

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
    confidence : {"linear", "log", "bm25", "auto"}, default="log"
        How raw implicit values become ``r'`` before ``c = 1 + α·r'``: ``r``,
        ``log(1 + r)`` or BM25 weights. ``log`` tames heavy-tailed play counts;
        "auto" chooses among the three by validation.
    regularization : float or "auto", default="auto"
        Total penalty weight λ, split into L2 and L1 by ``l1_ratio``. "auto"
        (implicit and explicit feedback) chooses λ by validation on a split of
        the training matrix, along a warm-started path (``timbral.tuning``);
        for frobenius λ = 0.01. A number turns that search off. Every "auto"
        parameter is searched together; the values used are the fitted
        ``regularization_``, ``confidence_``, ``alpha_`` and ``n_components_``.
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
    n_iter_ : int
    loss_history_ : list of float
        The objective after every epoch.
    regularization_, alpha_ : float
    confidence_ : str
        The values the fit used (chosen by validation where the parameter was "auto").
    search_results_ : list of dict or None
        The validation table of the search (one row per setting tried: its
        values, the validation metric, epochs and seconds); None without a search.
    user_items_ : scipy.sparse.csr_matrix
        The matrix the model was fitted on: seen items and explanations come from it.
    """

    _parameter_constraints: dict[str, list[Any]] = {
        "n_components": [Interval(numbers.Integral, 1, None), Options(("auto",))],
        "feedback": [Options(FEEDBACK_KINDS)],
        "alpha": [Interval(numbers.Real, 0, None), Options(("auto",))],
        "confidence": [Options(CONFIDENCE_SCALINGS + ("auto",))],
        "regularization": [Interval(numbers.Real, 0, None), Options(("auto",))],
        "l1_ratio": [Interval(numbers.Real, 0, 1)],
        "max_iter": [Interval(numbers.Integral, 1, None)],
        "tol": [Interval(numbers.Real, 0, None)],
        "random_state": [Interval(numbers.Integral, 0, None), np.random.Generator, NONE],
        "n_threads": [Interval(numbers.Integral, 0, None)],
        "init": [Options(("random", "nndsvd"))],
        "warm_start": [bool],
    }

    def __init__(
        self,
        *,
        n_components: int | str = 50,
        feedback: str = "implicit",
        alpha: float | str = 1.0,
        confidence: str = "log",
        regularization: float | str = "auto",
        l1_ratio: float = 0.0,
        max_iter: int = 200,
        tol: float = 1e-4,
        random_state: int | np.random.Generator | None = 42,
        n_threads: int = 0,
        init: str = "random",
        warm_start: bool = False,
    ) -> None:
        self.n_components = n_components
        self.feedback = feedback
        self.alpha = alpha
        self.confidence = confidence
        self.regularization = regularization
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
        return {name: getattr(self, name) for name in self._parameter_constraints}

    def set_params(self, **params: Any) -> NMFModel:
        """Set constructor parameters; they are checked at the next ``fit``."""
        for name, value in params.items():
            if name not in self._parameter_constraints:
                raise ValidationError(
                    f"NMFModel has no parameter {name!r}; valid ones are "
                    + ", ".join(self._parameter_constraints)
                    + "."
                )
            setattr(self, name, value)
        return self

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
    ) -> NMFModel:
        """Learn user and item factors from a users × items matrix.

        Parameters
        ----------
        user_items : sparse matrix of shape (n_users, n_items)
            Play counts, likes or ratings; only stored entries are observed. Dense
            arrays and other sparse formats are converted to CSR (a copy).
        show_progress : bool, default=False
            Show a progress bar (tqdm) over epochs, and over the search's settings.
        callback : callable(iteration, loss), optional
            Called after every epoch.

        Returns
        -------
        self
        """
        check_params(self.get_params(), self._parameter_constraints)
        csr = check_user_items(user_items)
        rng = (
            self.random_state
            if isinstance(self.random_state, np.random.Generator)
            else np.random.default_rng(self.random_state)
        )
        n_components, searched = self._choose_parameters(csr, show_progress)
        l1, l2 = self._penalties()
        initial = self._warm_start_factors(csr.shape, n_components) or searched
        progress = _progress_bar(self.max_iter) if show_progress else None

        def on_epoch(iteration: int, loss: float) -> None:
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.5g}")
            if callback is not None:
                callback(iteration, loss)

        try:
            result = _solvers.fit_nmf(
                csr,
                n_components=n_components,
                feedback=self.feedback,
                alpha=self.alpha_,
                confidence=self.confidence_,
                l2=l2,
                l1=l1,
                max_iter=self.max_iter,
                tol=float(self.tol),
                rng=rng,
                init=self.init,
                n_threads=self.n_threads,
                dtype=np.float64 if csr.dtype == np.float64 else np.float32,
                callback=on_epoch,
                initial=initial,
            )
        finally:
            if progress is not None:
                progress.close()
        self.user_factors_ = result.user_factors
        self.item_factors_ = result.item_factors
        self.user_bias_ = np.asarray(result.user_bias, dtype=result.user_factors.dtype)
        self.item_bias_ = np.asarray(result.item_bias, dtype=result.item_factors.dtype)
        self.global_mean_ = float(result.global_mean)
        self.n_iter_ = int(result.n_iter)
        self.loss_history_ = list(result.loss_history)
        self.user_items_ = csr
        self._reset_caches()
        return self

    @property
    def n_users_(self) -> int:
        self._check_fitted()
        return self.user_factors_.shape[0]

    @property
    def n_items_(self) -> int:
        self._check_fitted()
        return self.item_factors_.shape[0]

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
    ) -> tuple[NDArray[np.int32], NDArray[np.floating]]:
        """The ``k`` best items for one user, best first.

        Parameters
        ----------
        user : int
            Internal user index.
        k : int, default=10
        exclude_seen : bool, default=True
            Leave out the items the user interacted with in the training matrix.
        exclude_items : array-like of int, optional
            Items never to recommend (a deny list).
        items : array-like of int, optional
            Recommend only among these items (an allow list).

        Returns
        -------
        ids : ndarray of int32, scores : ndarray
            At most ``k`` each (fewer when fewer items are eligible).
        """
        self._check_fitted()
        user = check_index(user, self.n_users_, name="user")
        ids, scores = self.recommend_batch(
            [user], k, exclude_seen=exclude_seen, exclude_items=exclude_items, items=items
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
    ) -> tuple[NDArray[np.int32], NDArray[np.floating]]:
        """The ``k`` best items for each of ``users``.

        Returns
        -------
        ids : ndarray of int32, shape (n_users, k)
        scores : ndarray, shape (n_users, k)
            Best first; rows with fewer eligible items are padded with id ``-1``
            and score ``-inf``.
        """
        self._check_fitted()
        users = check_indices(users, self.n_users_, name="users")
        exclude = exclude_rows(self.user_items_, users) if exclude_seen else None
        return self._top_k(
            self.user_factors_[users], users, k, exclude=exclude, exclude_items=exclude_items, items=items
        )

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
        k = check_k(k)
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
        against the fixed item factors, so the result is what ``fit`` would give this
        user. ``weights`` are play counts or ratings (default 1 each).
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
        return _solvers.fold_in(
            self.item_factors_,
            cols,
            values,
            **self._solver_params(),
            global_mean=self.global_mean_,
            item_bias=self.item_bias_,
            bm25=self._bm25_stats(),
        )

    def explain(self, user: int, item: int, *, n_factors: int = 5, n_items: int = 5) -> Explanation:
        """Split ``user``'s score for ``item`` into latent factors and history items."""
        self._check_fitted()
        user = check_index(user, self.n_users_, name="user")
        item = check_index(item, self.n_items_, name="item")
        w, h = self.user_factors_[user].astype(np.float64), self.item_factors_[item].astype(np.float64)
        per_factor = w * h
        top_factors = np.argsort(-per_factor, kind="stable")[: check_k(n_factors, name="n_factors")]
        history, contributions = self._history_contributions(user, item)
        order = np.argsort(-contributions, kind="stable")[: check_k(n_items, name="n_items")]
        bias = float(np.sum(self._bias(np.array([user]), np.array([item]))))
        return Explanation(
            user=user,
            item=item,
            score=float(per_factor.sum() + bias),
            factors=[(int(f), float(per_factor[f])) for f in top_factors],
            items=[(int(history[j]), float(contributions[j])) for j in order],
            bias=bias,
        )

    # -- persistence ------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the fitted model to one ``.npz`` file (no pickle) with embedded metadata.

        The metadata (JSON) records the format version, the parameters and a
        sha256 of every array, so ``load`` can refuse a damaged or edited file.
        Model directories with id maps are ``timbral.Recommender.save``'s job.
        """
        arrays, fields = self._state()
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        metadata = {
            "format_version": MODEL_FORMAT_VERSION,
            "timbral_version": __version__,
            "model": fields,
            "sha256": {name: _sha256(a) for name, a in arrays.items()},
        }
        encoded = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, metadata=encoded, **arrays)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(buffer.getvalue())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NMFModel:
        """Read a model written by ``save``; refuse a damaged, edited or newer file."""
        path = Path(path)
        try:
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
                stored = {name: npz[name] for name in npz.files}
        except FileNotFoundError:
            raise ArtifactError(f"no model file at {path}; check the path or train a model first.") from None
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise ArtifactError(
                f"{path} is not a readable model file ({type(exc).__name__}: {exc}); re-save or retrain it."
            ) from None
        source = str(path)
        if "metadata" not in stored:
            raise ArtifactError(f"{source} lacks array(s) metadata; it is not a Timbral model.")
        try:
            metadata = json.loads(stored.pop("metadata").tobytes())
        except ValueError as exc:
            raise ArtifactError(f"{source} has unreadable metadata ({exc}).") from None
        version = metadata.get("format_version")
        if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
            raise ArtifactError(
                f"{source} has model format version {version!r}; this Timbral {__version__} reads "
                f"versions up to {MODEL_FORMAT_VERSION}. Upgrade timbral to load it."
            )
        checksums = metadata.get("sha256", {})
        for name in STATE_ARRAYS:
            if name in stored and _sha256(stored[name]) != checksums.get(name):
                raise ArtifactError(
                    f"{source}: array {name!r} does not match its recorded sha256; "
                    "the file was modified or damaged. Re-save or retrain the model."
                )
        return cls._from_state(stored, metadata.get("model", {}), source=source)

    def _state(self) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        """The fitted state as plain arrays and JSON fields; both file formats store these."""
        self._check_fitted()
        params = self.get_params()
        if not isinstance(params["random_state"], (int, type(None))):
            params["random_state"] = None  # a Generator cannot be written down
        arrays = {
            "user_factors": self.user_factors_,
            "item_factors": self.item_factors_,
            "user_bias": self.user_bias_,
            "item_bias": self.item_bias_,
            "user_items_indptr": self.user_items_.indptr.astype(np.int64),
            "user_items_indices": self.user_items_.indices.astype(np.int64),
            "user_items_data": self.user_items_.data,
        }
        fields = {
            "params": params,
            "regularization": self.regularization_,
            "confidence": self.confidence_,
            "alpha": self.alpha_,
            "search_results": self.search_results_,
            "global_mean": self.global_mean_,
            "n_iter": self.n_iter_,
            "loss_history": [float(x) for x in self.loss_history_],
            "shape": list(self.user_items_.shape),
        }
        return arrays, fields

    @classmethod
    def _from_state(cls, arrays: dict[str, NDArray[Any]], fields: dict[str, Any], *, source: str) -> NMFModel:
        """Rebuild a fitted model from ``_state``'s output, checking that the parts agree."""
        missing = [name for name in STATE_ARRAYS if name not in arrays]
        if missing:
            raise ArtifactError(f"{source} lacks array(s) {', '.join(missing)}; it is not a Timbral model.")
        try:
            model = cls(**fields["params"])
            n_users, n_items = (int(n) for n in fields["shape"])
            model.regularization_ = float(fields["regularization"])
            # Files written before the search recorded its choices hold them in params.
            model.confidence_ = str(fields.get("confidence", fields["params"]["confidence"]))
            model.alpha_ = float(fields.get("alpha", fields["params"]["alpha"]))
            model.search_results_ = fields.get("search_results")
            model.global_mean_ = float(fields["global_mean"])
            model.n_iter_ = int(fields["n_iter"])
            model.loss_history_ = [float(x) for x in fields["loss_history"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(
                f"{source}: the metadata does not describe a fitted model ({type(exc).__name__}: {exc}); "
                "retrain the model."
            ) from None
        W, H = arrays["user_factors"], arrays["item_factors"]
        b_u, b_i = arrays["user_bias"], arrays["item_bias"]
        indptr, indices = arrays["user_items_indptr"], arrays["user_items_indices"]
        data = arrays["user_items_data"]
        if (
            W.ndim != 2 or H.ndim != 2 or W.shape[0] != n_users or H.shape[0] != n_items
            or W.shape[1] != H.shape[1] or b_u.shape != (n_users,) or b_i.shape != (n_items,)
        ):
            raise ArtifactError(
                f"{source}: factor shapes {W.shape}, {H.shape} and bias shapes {b_u.shape}, {b_i.shape} "
                f"do not match the recorded {n_users} users × {n_items} items; retrain the model."
            )
        if (
            indptr.shape != (n_users + 1,) or indptr[0] != 0 or indptr[-1] != indices.size
            or indices.size != data.size or np.any(np.diff(indptr) < 0)
            or (indices.size and (indices.min() < 0 or indices.max() >= n_items))
        ):
            raise ArtifactError(
                f"{source}: the stored training matrix is not a valid {n_users} × {n_items} CSR; "
                "retrain the model."
            )
        model.user_factors_, model.item_factors_ = W, H
        model.user_bias_, model.item_bias_ = b_u, b_i
        model.user_items_ = sp.csr_matrix((data, indices, indptr), shape=(n_users, n_items))
        model.user_items_.sort_indices()  # top-K walks each row's seen items in order
        model._reset_caches()
        return model

    # -- internals ---------------------------------------------------------------------

    @property
    def _fitted(self) -> bool:
        return hasattr(self, "user_factors_")

    @property
    def n_components_(self) -> int:
        self._check_fitted()
        return self.item_factors_.shape[1]

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise NotFittedError("This NMFModel is not fitted yet; call fit(user_items) first.")

    def _reset_caches(self) -> None:
        self._cache: dict[str, Any] = {}

    def _solver_params(self) -> dict[str, Any]:
        return {
            "feedback": self.feedback,
            "alpha": self.alpha_,
            "confidence": self.confidence_,
            "l2": self._penalties()[1],
            "l1": self._penalties()[0],
        }

    def _choose_parameters(
        self, user_items: sp.csr_matrix, show_progress: bool = False
    ) -> tuple[int, tuple[NDArray[np.floating], NDArray[np.floating]] | None]:
        """Settle every "auto" parameter (by ``timbral.tuning.search``) into the fitted
        ``regularization_``, ``confidence_``, ``alpha_`` and ``search_results_``; return
        k and the search's factors to start the refit from (None: start from ``init``)."""
        from timbral import tuning  # tuning fits NMFModels: imported here, not at the top

        chosen, factors = self.get_params(), None
        self.search_results_: list[dict[str, Any]] | None = None
        if tuning.searched_parameters(chosen):
            found = tuning.search(user_items, chosen, show_progress=show_progress)
            chosen |= found.params
            self.search_results_, factors = found.table, found.factors
        # Still "auto" only where the feedback kind ignores it (no confidence outside implicit).
        self.confidence_ = "log" if chosen["confidence"] == "auto" else chosen["confidence"]
        self.alpha_ = 1.0 if chosen["alpha"] == "auto" else float(chosen["alpha"])
        # "auto" is left only for frobenius, which has no validation metric: a light ridge.
        reg = chosen["regularization"]
        self.regularization_ = FROBENIUS_AUTO_REGULARIZATION if reg == "auto" else float(reg)
        return int(chosen["n_components"]), factors

    def _warm_start_factors(
        self, shape: tuple[int, int], n_components: int
    ) -> tuple[NDArray[np.floating], NDArray[np.floating]] | None:
        """The previous fit's factors when ``warm_start`` is on and a previous fit exists."""
        if not (self.warm_start and self._fitted):
            return None
        expected = ((shape[0], n_components), (shape[1], n_components))
        if (self.user_factors_.shape, self.item_factors_.shape) != expected:
            raise ValidationError(
                f"warm_start=True needs the previous fit's shapes {expected}; it has "
                f"{self.user_factors_.shape} and {self.item_factors_.shape}. Fit the same matrix "
                "with the same n_components, or set warm_start=False."
            )
        return self.user_factors_, self.item_factors_

    def _penalties(self) -> tuple[float, float]:
        """(l1, l2) from the resolved λ and ``l1_ratio``."""
        return (
            float(self.regularization_ * self.l1_ratio),
            float(self.regularization_ * (1.0 - self.l1_ratio)),
        )

    def _bm25_stats(self) -> _solvers.BM25Stats | None:
        """Corpus statistics for BM25 confidence, from the training matrix (cached)."""
        if self.feedback != "implicit" or self.confidence_ != "bm25":
            return None
        if "bm25" not in self._cache:
            self._cache["bm25"] = _solvers.bm25_stats(self.user_items_)
        return self._cache["bm25"]

    def _history_contributions(self, user: int, item: int) -> tuple[NDArray[np.int32], NDArray[np.float64]]:
        """Each history item's share of ``user``'s score for ``item``.

        The user's factors solve (without the bound) ``A_u w_u = b_u`` with
        ``b_u = Σ_j c_j p_j h_j``, so ``w_u·h_i = Σ_j c_j p_j · h_jᵀ A_u⁻¹ h_i``:
        one term per history item, as implicit's ALS ``explain``.
        """
        row = self.user_items_[user]
        weights = _solvers._weights(self.feedback, self.alpha_)
        H = self.item_factors_.astype(np.float64)
        if self.feedback == "implicit":
            scaled = _solvers._confidence_data(row, self.confidence_, np.dtype(np.float64), self._bm25_stats())
            confidence, target = weights.conf_offset + weights.conf_scale * scaled, 1.0
        elif self.feedback == "explicit":
            confidence = np.ones(row.nnz)
            target = row.data - self.global_mean_ - self.user_bias_[user] - self.item_bias_[row.indices]
        else:
            confidence, target = np.ones(row.nnz), row.data.astype(np.float64)
        history = H[row.indices]
        l2 = self._solver_params()["l2"]
        system = weights.beta * (H.T @ H) + l2 * np.eye(H.shape[1])
        system += (history * (confidence - weights.beta)[:, None]).T @ history
        direction = np.linalg.lstsq(system, H[item], rcond=None)[0]
        return row.indices, confidence * target * (history @ direction)

    def _bias(self, users: NDArray[np.int64], items: NDArray[np.int64]) -> NDArray[np.floating] | float:
        if self.feedback != "explicit":
            return 0.0
        return self.global_mean_ + self.user_bias_[users] + self.item_bias_[items]

    def _normalized_items(self) -> NDArray[np.floating]:
        if "normalized" not in self._cache:
            norms = np.linalg.norm(self.item_factors_, axis=1, keepdims=True)
            self._cache["normalized"] = np.ascontiguousarray(
                self.item_factors_ / np.maximum(norms, np.finfo(self.item_factors_.dtype).tiny)
            )
        return self._cache["normalized"]

    def _scoring_items(self) -> NDArray[np.floating]:
        """Item factors, extended by the item bias for explicit feedback (score = w·h + b_i)."""
        if "items" not in self._cache:
            items = self.item_factors_
            if self.feedback == "explicit":
                items = np.hstack([items, self.item_bias_[:, None]])
            self._cache["items"] = np.ascontiguousarray(items)
        return self._cache["items"]

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
        k = check_k(k)
        mask = None
        if items is not None:
            mask = np.ones(self.n_items_, dtype=bool)
            mask[check_indices(items, self.n_items_, name="items")] = False
        if exclude_items is not None:
            mask = np.zeros(self.n_items_, dtype=bool) if mask is None else mask
            mask[check_indices(exclude_items, self.n_items_, name="exclude_items")] = True
        if exclude is not None and not isinstance(exclude, tuple):
            exclude = sp.csr_matrix(exclude)
            if exclude.shape != (query.shape[0], self.n_items_):
                raise ValidationError(
                    f"`exclude` must have shape {(query.shape[0], self.n_items_)}; got {exclude.shape}."
                )
            if not exclude.has_sorted_indices:
                exclude = exclude.sorted_indices()
        if self.feedback == "explicit":
            query = np.hstack([query, np.ones((query.shape[0], 1), dtype=query.dtype)])
        ids, scores = top_k(
            np.ascontiguousarray(query, dtype=self.item_factors_.dtype),
            self._scoring_items(),
            k,
            exclude=exclude,
            item_mask=mask,
            n_threads=self.n_threads,
        )
        if self.feedback == "explicit":
            offset = self.global_mean_ + (self.user_bias_[users] if users is not None else 0.0)
            scores = scores + np.asarray(offset, dtype=scores.dtype).reshape(-1, 1)
        return ids, scores


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def _sha256(array: NDArray[Any]) -> str:
    digest = hashlib.sha256(str(array.dtype).encode() + str(array.shape).encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fit", unit="epoch", leave=False)


__all__: Sequence[str] = ["NMFModel", "Explanation"]
