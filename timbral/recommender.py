"""Recommender: a fitted NMFModel that speaks external ids, and its model directory.

The model works on internal row and column indices; a ``Recommender`` adds the id
maps, the training matrix (seen items, explanations), item popularity (the fallback
for users the model has never seen) and metadata, and saves all of it as one
verified model directory (:mod:`timbral.artifact`). The server and the command
line use nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import ArrayLike, NDArray

from timbral._validation import check_k
from timbral.artifact import item_popularity as popularity_of  # `item_popularity` is also an argument
from timbral.artifact import (
    model_artifact,
    model_from_artifact,
    read_model_dir,
    version_metadata,
    write_model_dir,
)
from timbral.exceptions import ValidationError
from timbral.ids import IdMap
from timbral.nmf import Explanation, NMFModel
from timbral.scoring import item_mask

__all__ = ["RankedBatch", "Recommendations", "Recommender"]

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


@dataclass(frozen=True)
class RankedBatch:
    """Ranked items for many users, as flat arrays (what the service encodes without
    building a Python object per item).

    Row ``r`` (user ``user_ids[r]``, strategy ``strategies[r]``) holds the items
    ``item_ids[offsets[r]:offsets[r + 1]]``, best first, with their ``scores``.

    Attributes
    ----------
    user_ids : list of int or str
    strategies : list of {"nmf", "popularity"}
    item_ids : ndarray of shape (total,)
        External item ids: int64, or an object array of str.
    scores : float64 ndarray of shape (total,)
    offsets : int64 ndarray of shape (n_users + 1,)
    """

    user_ids: list[ExternalId]
    strategies: list[str]
    item_ids: NDArray[Any]
    scores: NDArray[np.float64]
    offsets: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.user_ids)

    def rows(self) -> list[Recommendations]:
        """One :class:`Recommendations` per user, in order."""
        pairs = list(zip(self.item_ids.tolist(), self.scores.tolist(), strict=True))
        bounds = self.offsets.tolist()
        return [
            Recommendations(user, strategy, pairs[start:stop])
            for user, strategy, start, stop in zip(
                self.user_ids, self.strategies, bounds[:-1], bounds[1:], strict=True
            )
        ]


class Recommender:
    """A fitted :class:`~timbral.model.NMFModel` with external ids and seen items.

    Parameters
    ----------
    model : NMFModel
        A fitted model.
    user_ids : array-like of shape (n_users,) or IdMap
        External id of each model row (exact int64 or str), unique; see :mod:`timbral.ids`.
    item_ids : array-like of shape (n_items,) or IdMap
        External id of each model column, unique.
    user_items : scipy.sparse.csr_matrix of shape (n_users, n_items), optional
        Interactions whose items count as seen (default: ``model.user_items_``):
        ``exclude_seen`` leaves these out, and they are saved with the model. Pass
        all of a user's interactions when the model was fitted on only part of them
        (``train(refit=False)``), so held-out items are never recommended.
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
        user_ids: ArrayLike | IdMap,
        item_ids: ArrayLike | IdMap,
        user_items: sp.csr_matrix | None = None,
        metadata: Mapping[str, Any] | None = None,
        item_popularity: ArrayLike | None = None,
    ) -> None:
        if not isinstance(model, NMFModel) or not hasattr(model, "user_factors_"):
            raise ValidationError(
                f"`model` must be a fitted NMFModel; got {type(model).__name__}. Call model.fit(user_items) first"
            )
        self.model = model
        self._users = user_ids if isinstance(user_ids, IdMap) else IdMap.from_ids(user_ids, name="user_id")
        self._items = item_ids if isinstance(item_ids, IdMap) else IdMap.from_ids(item_ids, name="item_id")
        n_users, n_items = model.user_factors_.shape[0], model.item_factors_.shape[0]
        if len(self._users) != n_users or len(self._items) != n_items:
            raise ValidationError(
                f"`user_ids` ({len(self._users)}) and `item_ids` ({len(self._items)}) "
                f"must match the model's {n_users} users and {n_items} items"
            )
        seen = model.user_items_ if user_items is None else sp.csr_matrix(user_items)
        if seen.shape != (n_users, n_items):
            raise ValidationError(f"`user_items` must have shape {(n_users, n_items)}; got {seen.shape}")
        if not seen.has_sorted_indices:
            seen = seen.sorted_indices()
        self.user_items = seen
        if item_popularity is None:
            self.item_popularity = popularity_of(seen)
        else:
            self.item_popularity = np.asarray(item_popularity, dtype=np.float64)
            if self.item_popularity.shape != (n_items,):
                raise ValidationError(
                    f"`item_popularity` must have shape ({n_items},); got {self.item_popularity.shape}"
                )
        self._popular_order = np.argsort(-self.item_popularity, kind="stable")
        self.metadata: dict[str, Any] = dict(metadata or {})
        if "model_version" not in self.metadata:
            self.metadata |= version_metadata(model)

    # -- facts ---------------------------------------------------------------------------

    @property
    def model_version(self) -> str:
        """Identifier of this fitted model: creation time and a hash of the factors."""
        return str(self.metadata["model_version"])

    @property
    def n_users(self) -> int:
        return len(self._users)

    @property
    def n_items(self) -> int:
        return len(self._items)

    @property
    def user_map(self) -> IdMap:
        """The user id map (parse ids received as text with ``user_map.parse``)."""
        return self._users

    @property
    def item_map(self) -> IdMap:
        """The item id map."""
        return self._items

    @property
    def user_ids(self) -> NDArray[Any]:
        """External user ids, in model row order (int64, or an object array of str)."""
        return self._users.ids

    @property
    def item_ids(self) -> NDArray[Any]:
        """External item ids, in model column order (int64, or an object array of str)."""
        return self._items.ids

    def known_user(self, user_id: Any) -> bool:
        """Whether the model was trained on this user (``"42"`` matches int id 42, ``"042"`` does not)."""
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
        k = check_k(k, limit=self.n_items)
        return self._popular(k, self._known_items(exclude_items), self._known_items(items))

    def _popular(
        self, k: int, exclude: NDArray[np.int64] | None, allow: NDArray[np.int64] | None
    ) -> list[tuple[ExternalId, float]]:
        top = self._popular_indices(k, exclude, allow)
        return self._pairs(top, self.item_popularity[top])

    def _popular_indices(
        self, k: int, exclude: NDArray[np.int64] | None, allow: NDArray[np.int64] | None
    ) -> NDArray[np.int64]:
        """Internal indices of the ``k`` most popular items allowed and not excluded."""
        order = self._popular_order
        banned = item_mask(self.n_items, allow=allow, deny=exclude)
        if banned is not None:
            order = order[~banned[order]]
        return order[:k]

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
            External user id, matched exactly: ``"42"`` and ``42`` are the same id for
            integer ids, ``"042"``, ``" 42"`` and ``"+42"`` are not (:mod:`timbral.ids`).
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
        k = check_k(k, limit=self.n_items)
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
                user, k, exclude_seen=exclude_seen, exclude_items=deny, items=allow,
                user_items=self.user_items,
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
        k = check_k(k, limit=self.n_items)
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
        return self.rank_batch(
            user_ids, k, exclude_seen=exclude_seen, exclude_items=exclude_items, items=items
        ).rows()

    def rank_batch(
        self,
        user_ids: Sequence[Any],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        exclude_items: Iterable[Any] | None = None,
        items: Iterable[Any] | None = None,
    ) -> RankedBatch:
        """:meth:`recommend_batch` as flat arrays (:class:`RankedBatch`).

        Known users get strategy ``nmf`` (scored in one kernel call), unknown ones the
        popular items (``popularity``). The ids are mapped for the whole batch at once:
        per-row NumPy calls would cost more than scoring a small batch.
        """
        k = check_k(k, limit=self.n_items)
        if isinstance(user_ids, (str, bytes)) or not isinstance(user_ids, Iterable):
            raise ValidationError(f"`user_ids` must be a list of user ids; got {user_ids!r}")
        user_ids = list(user_ids)
        deny = self._known_items(exclude_items)
        allow = self._known_items(items)
        rows = self._users.lookup(user_ids)
        # Everything the model would check is checked above (indices from the id maps,
        # k clamped, user_items in the constructor): score through its unchecked path.
        seen = self.user_items if exclude_seen else None
        mask = item_mask(self.n_items, allow=allow, deny=deny)
        # min() of a list: for a batch of a few users, ndarray.min's Python wrapper costs more
        if rows.size and min(rows.tolist()) >= 0:  # the usual case: every user known, no padded copy
            ranked, scores = self.model.recommend_trusted(rows, k, seen=seen, item_mask=mask)
            user_ids, strategies = self._users.external(rows), ["nmf"] * rows.size
        else:
            ranked, scores, strategies = self._rank_mixed(rows, user_ids, k, seen, mask, deny, allow)
        if ranked.size and min(ranked[:, -1].tolist()) >= 0:  # full rows (ids are -1 only at a row's end)
            offsets = np.arange(0, ranked.size + 1, ranked.shape[1], dtype=np.int64)
            return RankedBatch(user_ids, strategies, self.item_ids[ranked.ravel()],
                               scores.ravel().astype(np.float64), offsets)
        keep = ranked >= 0
        offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
        np.cumsum(keep.sum(axis=1), out=offsets[1:])
        return RankedBatch(
            user_ids, strategies, self.item_ids[ranked[keep]], scores[keep].astype(np.float64), offsets
        )

    def _rank_mixed(
        self,
        rows: NDArray[np.int64],
        user_ids: list[Any],
        k: int,
        seen: sp.csr_matrix | None,
        mask: NDArray[np.bool_] | None,
        deny: NDArray[np.int64] | None,
        allow: NDArray[np.int64] | None,
    ) -> tuple[NDArray[np.integer], NDArray[np.floating], list[str]]:
        """:meth:`rank_batch` when some users are unknown: ids and scores padded to ``k``
        (unknown users get the popular items), and the strategies; stores the known
        users' ids as the model holds them into ``user_ids``."""
        known = np.flatnonzero(rows >= 0)
        strategies = ["popularity"] * len(user_ids)
        ranked = np.full((len(user_ids), k), -1, dtype=np.int64)
        scores = np.zeros((len(user_ids), k), dtype=np.float64)
        if known.size:
            ranked[known], scores[known] = self.model.recommend_trusted(rows[known], k, seen=seen, item_mask=mask)
            for position, user in zip(known.tolist(), self._users.external(rows[known]), strict=True):
                user_ids[position] = user
                strategies[position] = "nmf"
        top = self._popular_indices(k, deny, allow)
        unknown = rows < 0
        ranked[unknown, : top.size] = top
        scores[unknown, : top.size] = self.item_popularity[top]
        return ranked, scores, strategies

    def similar(self, item_id: Any, k: int = 10) -> list[tuple[ExternalId, float]]:
        """The ``k`` items closest to ``item_id`` (cosine of item factors), itself excluded.

        Raises
        ------
        UnknownIdError
            If the model does not know ``item_id``.
        """
        ids, scores = self.model.similar_items(self._items.index(item_id), k)
        return self._pairs(ids, scores)

    def explain(self, user_id: Any, item_id: Any, *, n_factors: int = 5, n_items: int = 5) -> Explanation:
        """Why the model scores ``item_id`` for ``user_id`` as it does.

        Returns
        -------
        Explanation
            The model's explanation (``NMFModel.explain``) in external ids: ``user``,
            ``item``, ``score``, ``bias`` (explicit feedback), ``factors`` (largest
            first) and ``items`` (the user's history items that push the score up
            most, as ``(item_id, contribution)``); ``to_dict()`` gives the HTTP shape.

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
        return why.with_ids(self._users.external(user), self._items.external(item), self._items.external(history))

    # -- persistence -------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
        """Write the model directory (see :mod:`timbral.artifact`) atomically.

        Returns
        -------
        pathlib.Path
        """
        artifact = model_artifact(
            self.model,
            users=self._users,
            items=self._items,
            seen=self.user_items,
            item_popularity=self.item_popularity,
            metadata=self.metadata,
        )
        return write_model_dir(directory, artifact, overwrite=overwrite)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Recommender:
        """Read and verify a model directory written by :meth:`save` or ``timbral train``.

        Raises
        ------
        ArtifactError
            If a file is missing, damaged or edited, shapes or parameters are invalid,
            or the format is newer than this library.
        """
        artifact = read_model_dir(directory)
        model, seen = model_from_artifact(artifact, source=f"model directory {str(directory)!r}")
        a = artifact.arrays
        users = IdMap.from_arrays(a, "user", name="user_id")
        items = IdMap.from_arrays(a, "item", name="item_id")
        return cls(model, users, items, seen, artifact.metadata, a["item_popularity"])
