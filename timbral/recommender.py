"""Recommender: a fitted NMFModel that speaks external ids, and its model directory.

The model works on internal row and column indices; a ``Recommender`` adds the id
maps, the training matrix (seen items, explanations), item popularity (the fallback
for users the model has never seen) and metadata, and saves all of it as one
verified model directory (:mod:`timbral.artifact`). The server and the command
line use nothing else.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from timbral._version import __version__
from timbral.artifact import ModelArtifact, read_model_dir, write_model_dir
from timbral.exceptions import ArtifactError, UnknownIdError, ValidationError
from timbral.model import NMFModel

__all__ = ["Recommendations", "Recommender"]

ExternalId = int | str


@dataclass(frozen=True)
class Recommendations:
    """Ranked items for one user.

    Attributes
    ----------
    user_id : int or str
        The user's external id (as stored in the model when known, else as given).
    strategy : {"nmf", "fold_in", "popularity"}
        ``nmf`` for a user seen in training, ``fold_in`` for an unseen user whose
        recent items were folded into the model, ``popularity`` otherwise.
    items : list of (item_id, score)
        Best first; scores are model scores, or interaction counts for ``popularity``.
    """

    user_id: ExternalId
    strategy: str
    items: list[tuple[ExternalId, float]]

    def to_dict(self) -> dict[str, Any]:
        """``{"user_id", "strategy", "recommendations": [{"item_id", "score"}]}``."""
        return {
            "user_id": self.user_id,
            "strategy": self.strategy,
            "recommendations": [{"item_id": i, "score": s} for i, s in self.items],
        }


def _as_id_array(ids: ArrayLike, name: str) -> NDArray[Any]:
    """External ids as int64 or fixed-width unicode (never object), checked unique."""
    array = np.asarray(ids)
    if array.ndim != 1:
        raise ValidationError(f"`{name}` must be one-dimensional; got shape {array.shape}")
    if array.dtype.kind in "iu":
        if array.dtype.kind == "u" and array.size and array.max() > np.iinfo(np.int64).max:
            raise ValidationError(f"`{name}` has ids above the int64 range; pass them as strings")
        array = array.astype(np.int64)
    elif array.dtype.kind == "O" and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in array
    ):
        array = array.astype(np.int64)
    elif array.dtype.kind in "OUS":
        array = array.astype(str)
    else:
        raise ValidationError(
            f"`{name}` must hold integer or string ids; got dtype {array.dtype}. "
            "Convert float ids to int or str first"
        )
    return array


class _IdIndex:
    """External id -> internal index through a sorted copy of the ids (np.searchsorted)."""

    def __init__(self, ids: NDArray[Any], name: str) -> None:
        self.ids = ids
        self.name = name
        self._order = np.argsort(ids, kind="stable")
        self._sorted = ids[self._order]
        duplicated = self._sorted[1:][self._sorted[1:] == self._sorted[:-1]]
        if duplicated.size:
            raise ValidationError(
                f"`{name}s` must be unique; {duplicated[:3].tolist()} appear more than once"
            )

    def _coerce(self, values: Sequence[Any]) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        """``values`` in the ids' dtype, and which of them could be converted at all."""
        if self.ids.dtype.kind == "U":
            return np.asarray([str(v) for v in values], dtype=str), np.ones(len(values), bool)
        array = np.asarray(values) if len(values) else np.empty(0, np.int64)
        if array.dtype.kind in "iu" and array.ndim == 1:
            return array.astype(np.int64, copy=False), np.ones(array.size, bool)
        out = np.zeros(len(values), dtype=np.int64)
        ok = np.zeros(len(values), dtype=bool)
        for j, value in enumerate(values):  # mixed or string input (e.g. "42" from a URL)
            if isinstance(value, bool):
                continue
            try:
                out[j] = int(value) if isinstance(value, (int, np.integer)) else int(str(value).strip())
                ok[j] = True
            except (ValueError, OverflowError):
                pass
        return out, ok

    def lookup(self, values: Iterable[Any]) -> NDArray[np.int64]:
        """Internal index of each value, ``-1`` where unknown."""
        values = values if isinstance(values, (list, tuple, np.ndarray)) else list(values)
        keys, ok = self._coerce(values)
        if not self._sorted.size:
            return np.full(keys.shape[0], -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, keys), self._sorted.size - 1)
        found = ok & (self._sorted[pos] == keys)
        return np.where(found, self._order[pos], -1).astype(np.int64)

    def index(self, value: Any) -> int:
        """Internal index of one id; UnknownIdError if the model does not know it."""
        found = int(self.lookup([value])[0])
        if found < 0:
            raise UnknownIdError(f"{self.name} {value!r} is not known to the model")
        return found

    def external(self, indices: Any) -> Any:
        """External id(s) of internal index or indices, as Python ints or strs."""
        return self.ids[indices].tolist()


def _item_popularity(user_items: sp.csr_matrix) -> NDArray[np.float64]:
    """Number of users who interacted with each item."""
    return np.bincount(user_items.indices, minlength=user_items.shape[1]).astype(np.float64)


def _model_version(model: NMFModel, created_at: datetime) -> str:
    """``YYYYmmddTHHMMSSZ-<first 8 hex of sha256(item factors, user factors)>``."""
    digest = hashlib.sha256(np.ascontiguousarray(model.item_factors_).tobytes())
    digest.update(np.ascontiguousarray(model.user_factors_).tobytes())
    return f"{created_at:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}"


class Recommender:
    """A fitted :class:`~timbral.model.NMFModel` with external ids and seen items.

    Parameters
    ----------
    model : NMFModel
        A fitted model.
    user_ids : array-like of shape (n_users,)
        External id of each model row (int or str), unique.
    item_ids : array-like of shape (n_items,)
        External id of each model column, unique.
    user_items : scipy.sparse.csr_matrix of shape (n_users, n_items), optional
        Interactions whose items count as seen (default: ``model.user_items_``).
    metadata : dict, optional
        JSON-serialisable facts about the model (data report, metrics, timings...),
        saved with it. ``model_version`` and ``created_at`` are set when missing.
    item_popularity : array-like of shape (n_items,), optional
        Score of each item for users the model does not know (default: the number
        of users who interacted with it in ``user_items``).

    Notes
    -----
    Instances are read-only once built and may be shared between threads.
    """

    def __init__(
        self,
        model: NMFModel,
        user_ids: ArrayLike,
        item_ids: ArrayLike,
        user_items: sp.csr_matrix | None = None,
        metadata: Mapping[str, Any] | None = None,
        item_popularity: ArrayLike | None = None,
    ) -> None:
        if not hasattr(model, "user_factors_"):
            raise ValidationError("`model` must be a fitted NMFModel; call model.fit(user_items) first")
        self.model = model
        self._users = _IdIndex(_as_id_array(user_ids, "user_ids"), "user_id")
        self._items = _IdIndex(_as_id_array(item_ids, "item_ids"), "item_id")
        n_users, n_items = model.user_factors_.shape[0], model.item_factors_.shape[0]
        if self._users.ids.shape[0] != n_users or self._items.ids.shape[0] != n_items:
            raise ValidationError(
                f"`user_ids` ({self._users.ids.shape[0]}) and `item_ids` ({self._items.ids.shape[0]}) "
                f"must match the model's {n_users} users and {n_items} items"
            )
        seen = model.user_items_ if user_items is None else sp.csr_matrix(user_items)
        if seen.shape != (n_users, n_items):
            raise ValidationError(f"`user_items` must have shape {(n_users, n_items)}; got {seen.shape}")
        if not seen.has_sorted_indices:
            seen = seen.sorted_indices()
        self.user_items = seen
        if item_popularity is None:
            self.item_popularity = _item_popularity(seen)
        else:
            self.item_popularity = np.asarray(item_popularity, dtype=np.float64)
            if self.item_popularity.shape != (n_items,):
                raise ValidationError(
                    f"`item_popularity` must have shape ({n_items},); got {self.item_popularity.shape}"
                )
        self._popular_order = np.argsort(-self.item_popularity, kind="stable")
        self.metadata: dict[str, Any] = dict(metadata or {})
        if "model_version" not in self.metadata:
            created = datetime.now(timezone.utc)
            self.metadata["created_at"] = created.isoformat(timespec="seconds").replace("+00:00", "Z")
            self.metadata["model_version"] = _model_version(model, created)

    # -- facts ---------------------------------------------------------------------------

    @property
    def model_version(self) -> str:
        """Identifier of this fitted model: creation time and a hash of the factors."""
        return str(self.metadata["model_version"])

    @property
    def n_users(self) -> int:
        return int(self._users.ids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self._items.ids.shape[0])

    @property
    def user_ids(self) -> NDArray[Any]:
        """External user ids, in model row order (int64 or str)."""
        return self._users.ids

    @property
    def item_ids(self) -> NDArray[Any]:
        """External item ids, in model column order (int64 or str)."""
        return self._items.ids

    def known_user(self, user_id: Any) -> bool:
        """Whether the model was trained on this user (``"42"`` matches int id 42)."""
        return bool(self._users.lookup([user_id])[0] >= 0)

    def known_item(self, item_id: Any) -> bool:
        """Whether the model knows this item."""
        return bool(self._items.lookup([item_id])[0] >= 0)

    def __repr__(self) -> str:
        return (
            f"Recommender(model_version={self.model_version!r}, n_users={self.n_users}, "
            f"n_items={self.n_items}, n_components={self.model.item_factors_.shape[1]})"
        )

    # -- recommendations ---------------------------------------------------------------

    def _known_items(self, ids: Iterable[Any] | None) -> NDArray[np.int64] | None:
        """Internal indices of the known ids among ``ids`` (unknown ones are dropped)."""
        if ids is None:
            return None
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise ValidationError(f"item id lists must be lists of ids; got {ids!r}")
        found = self._items.lookup(ids)
        return found[found >= 0]

    def _pairs(self, ids: NDArray[np.integer], scores: NDArray[np.floating]) -> list[tuple[ExternalId, float]]:
        keep = ids >= 0
        return list(zip(self._items.external(ids[keep]), scores[keep].astype(float).tolist(), strict=True))

    def popular(
        self,
        k: int = 10,
        *,
        exclude_items: Iterable[Any] | None = None,
        items: Iterable[Any] | None = None,
    ) -> list[tuple[ExternalId, float]]:
        """The ``k`` items most users interacted with, with those counts as scores.

        ``exclude_items`` (deny list) and ``items`` (allow list) take external ids;
        unknown ids in them are ignored.
        """
        k = _check_k(k)
        return self._popular(k, self._known_items(exclude_items), self._known_items(items))

    def _popular(
        self, k: int, exclude: NDArray[np.int64] | None, allow: NDArray[np.int64] | None
    ) -> list[tuple[ExternalId, float]]:
        order = self._popular_order
        if exclude is not None or allow is not None:
            banned = np.zeros(self.n_items, dtype=bool)
            if allow is not None:
                banned[:] = True
                banned[allow] = False
            if exclude is not None:
                banned[exclude] = True
            order = order[~banned[order]]
        top = order[:k]
        return self._pairs(top, self.item_popularity[top])

    def recommend(
        self,
        user_id: Any,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        exclude_items: Iterable[Any] | None = None,
        items: Iterable[Any] | None = None,
        recent_items: Iterable[Any] | Mapping[Any, float] | None = None,
    ) -> Recommendations:
        """Top-``k`` items for a user, by external ids.

        Parameters
        ----------
        user_id : int or str
            External user id. ``"42"`` and ``42`` are the same id for integer ids.
        k : int, default=10
        exclude_seen : bool, default=True
            Leave out the user's training items (and ``recent_items``).
        exclude_items : iterable of item ids, optional
            Never recommend these. Unknown ids are ignored.
        items : iterable of item ids, optional
            Recommend only among these. Unknown ids are ignored.
        recent_items : iterable of item ids, or mapping item id -> weight, optional
            What an unseen user just played (weights are play counts or ratings,
            default 1). Folded into the model for a user it has never seen
            (strategy ``fold_in``); for a known user they only count as seen.

        Returns
        -------
        Recommendations
            Strategy ``nmf`` for a known user, ``fold_in`` for an unseen user with
            at least one known recent item, else ``popularity``.
        """
        k = _check_k(k)
        if not isinstance(exclude_seen, (bool, np.bool_)):
            raise ValidationError(f"`exclude_seen` must be true or false; got {exclude_seen!r}")
        deny = self._known_items(exclude_items)
        allow = self._known_items(items)
        recent, weights = self._recent(recent_items)
        if exclude_seen and recent.size:
            deny = recent if deny is None else np.concatenate([deny, recent])
        user = int(self._users.lookup([user_id])[0])
        if user >= 0:
            ids, scores = self.model.recommend(
                user, k, exclude_seen=exclude_seen, exclude_items=deny, items=allow
            )
            return Recommendations(self._users.external(user), "nmf", self._pairs(ids, scores))
        if recent.size:
            factors = self.model.fold_in(recent, weights)
            ids, scores = self.model.recommend_from_factors(
                factors, k, exclude_items=deny, items=allow
            )
            return Recommendations(user_id, "fold_in", self._pairs(ids, scores))
        return Recommendations(user_id, "popularity", self._popular(k, deny, allow))

    def recommend_with_recent(
        self,
        user_id: Any,
        recent_items: Iterable[Any] | Mapping[Any, float],
        k: int = 10,
        *,
        exclude_seen: bool = True,
    ) -> Recommendations:
        """Top-``k`` for a user after folding their plays since training into the model.

        For a known user, the training history and ``recent_items`` (merged, weights
        added) are folded in together against the fixed item factors, the least-squares
        problem of a training half-step, so new plays count without retraining
        (strategy ``fold_in``). For an unknown user, or without known recent items,
        this is :meth:`recommend` with ``recent_items``.
        """
        user = int(self._users.lookup([user_id])[0])
        recent, weights = self._recent(recent_items)
        if user < 0 or not recent.size:
            return self.recommend(user_id, k, exclude_seen=exclude_seen, recent_items=recent_items)
        k = _check_k(k)
        row = self.user_items[user]
        added = np.ones(recent.size) if weights is None else weights
        items, inverse = np.unique(np.concatenate([row.indices, recent]), return_inverse=True)
        totals = np.bincount(inverse, weights=np.concatenate([row.data, added]), minlength=items.size)
        factors = self.model.fold_in(items, totals)
        ids, scores = self.model.recommend_from_factors(
            factors, k, exclude_items=items if exclude_seen else None
        )
        return Recommendations(self._users.external(user), "fold_in", self._pairs(ids, scores))

    def _recent(
        self, recent_items: Iterable[Any] | Mapping[Any, float] | None
    ) -> tuple[NDArray[np.int64], NDArray[np.float64] | None]:
        """Known recent items (internal, merged duplicates) and their weights."""
        if recent_items is None:
            return np.empty(0, dtype=np.int64), None
        if isinstance(recent_items, Mapping):
            ids = list(recent_items.keys())
            raw = list(recent_items.values())
            try:
                values = np.asarray(raw, dtype=np.float64)
            except (TypeError, ValueError):
                raise ValidationError(f"`recent_items` weights must be numbers; got {raw[:5]!r}") from None
            if not np.all(np.isfinite(values)) or (values.size and values.min() < 0):
                raise ValidationError(f"`recent_items` weights must be finite and ≥ 0; got {raw[:5]!r}")
        elif isinstance(recent_items, (str, bytes)) or not isinstance(recent_items, Iterable):
            raise ValidationError(f"`recent_items` must be a list of item ids or a mapping; got {recent_items!r}")
        else:
            ids = list(recent_items)
            values = None
        found = self._items.lookup(ids)
        keep = found >= 0
        if values is None:
            return np.unique(found[keep]), None
        unique, inverse = np.unique(found[keep], return_inverse=True)
        return unique, np.bincount(inverse, weights=values[keep], minlength=unique.size)

    def recommend_batch(
        self,
        user_ids: Sequence[Any],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        exclude_items: Iterable[Any] | None = None,
        items: Iterable[Any] | None = None,
    ) -> list[Recommendations]:
        """:meth:`recommend` for many users at once; known users are scored in one batch."""
        k = _check_k(k)
        if isinstance(user_ids, (str, bytes)) or not isinstance(user_ids, Iterable):
            raise ValidationError(f"`user_ids` must be a list of user ids; got {user_ids!r}")
        user_ids = list(user_ids)
        deny = self._known_items(exclude_items)
        allow = self._known_items(items)
        rows = self._users.lookup(user_ids)
        known = np.flatnonzero(rows >= 0)
        out: list[Recommendations | None] = [None] * len(user_ids)
        if known.size:
            ids, scores = self.model.recommend_batch(
                rows[known], k, exclude_seen=exclude_seen, exclude_items=deny, items=allow
            )
            for j, position in enumerate(known.tolist()):
                out[position] = Recommendations(
                    self._users.external(rows[position]), "nmf", self._pairs(ids[j], scores[j])
                )
        if known.size < len(user_ids):
            fallback = self._popular(k, deny, allow)
            for position in np.flatnonzero(rows < 0).tolist():
                out[position] = Recommendations(user_ids[position], "popularity", list(fallback))
        return out  # type: ignore[return-value]

    def similar(self, item_id: Any, k: int = 10) -> list[tuple[ExternalId, float]]:
        """The ``k`` items closest to ``item_id`` (cosine of item factors), itself excluded.

        Raises
        ------
        UnknownIdError
            If the model does not know ``item_id``.
        """
        ids, scores = self.model.similar_items(self._items.index(item_id), _check_k(k))
        return self._pairs(ids, scores)

    def explain(
        self, user_id: Any, item_id: Any, *, n_factors: int = 5, n_items: int = 5
    ) -> dict[str, Any]:
        """Why the model scores ``item_id`` for ``user_id`` as it does.

        Returns
        -------
        dict
            ``user_id``, ``item_id``, ``score``, ``bias`` (explicit feedback), ``factors``
            (``[{"factor", "contribution"}]``, largest first) and ``items``
            (``[{"item_id", "contribution"}]``: the user's history items that push
            the score up most).

        Raises
        ------
        UnknownIdError
            If the user or the item is not known to the model (explanations need a
            user seen in training).
        """
        user = self._users.index(user_id)
        item = self._items.index(item_id)
        why = self.model.explain(user, item, n_factors=n_factors, n_items=n_items)
        history = np.asarray([j for j, _ in why.items], dtype=np.int64)
        return {
            "user_id": self._users.external(user),
            "item_id": self._items.external(item),
            "score": why.score,
            "bias": why.bias,
            "factors": [{"factor": f, "contribution": c} for f, c in why.factors],
            "items": [
                {"item_id": external, "contribution": c}
                for external, (_, c) in zip(self._items.external(history), why.items, strict=True)
            ],
        }

    # -- persistence -------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
        """Write the model directory (see :mod:`timbral.artifact`) atomically.

        Returns
        -------
        pathlib.Path
        """
        state, fields = self.model._state()
        arrays = state | {
            "user_ids": self._users.ids,
            "item_ids": self._items.ids,
            "item_popularity": self.item_popularity,
        }
        metadata = dict(self.metadata)
        metadata["timbral_version"] = __version__
        metadata["params"] = fields["params"]
        metadata["fit"] = fields
        return write_model_dir(directory, ModelArtifact(arrays, metadata), overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Recommender:
        """Read and verify a model directory written by :meth:`save` or ``timbral train``.

        Raises
        ------
        ArtifactError
            If a file is missing, damaged or edited, shapes disagree, or the format
            is newer than this library.
        """
        artifact = read_model_dir(directory)
        a, meta = artifact.arrays, artifact.metadata
        where = f"model directory {str(directory)!r}"
        try:
            fields = meta["fit"]
            if (fields.get("shape") or [None, None]) != [meta["n_users"], meta["n_items"]]:
                raise ArtifactError(
                    f"{where}: metadata.json records {meta['n_users']} users × {meta['n_items']} items "
                    f"but the model was fitted on shape {fields.get('shape')}; retrain the model"
                )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(
                f"{where}: metadata.json does not describe a valid model ({type(exc).__name__}: {exc}); "
                "retrain the model"
            ) from None
        model = NMFModel._from_state(a, fields, source=where)
        return cls(model, a["user_ids"], a["item_ids"], model.user_items_, meta, a["item_popularity"])


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValidationError(f"`k` must be a positive integer; got {k!r}")
    return int(k)
