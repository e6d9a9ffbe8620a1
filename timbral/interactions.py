"""Interactions: a cleaned users × items matrix with its id maps, and how to load one.

:func:`load_interactions` reads a file (:mod:`timbral.io`), cleans it rule by rule
(:mod:`timbral.cleaning`) and maps ids to contiguous indices (:mod:`timbral.ids`);
:meth:`Interactions.from_frame` does the same for a pandas DataFrame or a pyarrow Table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral.cleaning import MAX_USER_ITEMS, CleaningOptions, Feedback, ValidationReport, clean
from timbral.exceptions import ValidationError
from timbral.ids import MAX_ID_BYTES, IdMap
from timbral.io import RawColumns, read_columns, resolve_columns

__all__ = ["Interactions", "load_interactions"]

_BATCH_ROWS = 1 << 20


@dataclass
class Interactions:
    """A cleaned users × items interaction matrix with its id maps.

    Attributes
    ----------
    user_items : scipy.sparse.csr_matrix of shape (n_users, n_items)
        float32 values (summed play counts, or ratings), sorted indices, no
        duplicates.
    users : IdMap
        External id of each row, sorted ascending (exact int64 or str, see
        :mod:`timbral.ids`). An array of ids is accepted and converted.
    items : IdMap
        External id of each column, sorted ascending.
    timestamps : scipy.sparse.csr_matrix of shape (n_users, n_items) or None
        float64 epoch seconds with the same sparsity pattern as ``user_items``
        (the latest timestamp of merged duplicates).
    report : ValidationReport
        What was read, merged and dropped.
    """

    user_items: sp.csr_matrix
    users: IdMap
    items: IdMap
    timestamps: sp.csr_matrix | None = None
    report: ValidationReport = field(default_factory=ValidationReport)

    def __post_init__(self) -> None:
        if not isinstance(self.users, IdMap):
            self.users = IdMap.from_ids(self.users, name="user_id")
        if not isinstance(self.items, IdMap):
            self.items = IdMap.from_ids(self.items, name="item_id")
        n_users, n_items = self.user_items.shape
        if len(self.users) != n_users or len(self.items) != n_items:
            raise ValidationError(
                f"users has {len(self.users)} and items {len(self.items)} ids "
                f"but user_items has shape {self.user_items.shape}; pass one id per row and per column"
            )
        if self.timestamps is not None and self.timestamps.shape != self.user_items.shape:
            raise ValidationError(
                f"timestamps has shape {self.timestamps.shape}, user_items {self.user_items.shape}; "
                "they must share one sparsity pattern"
            )

    @property
    def user_ids(self) -> NDArray[Any]:
        """External user ids in row order (int64, or an object array of str)."""
        return self.users.ids

    @property
    def item_ids(self) -> NDArray[Any]:
        """External item ids in column order."""
        return self.items.ids

    @property
    def n_users(self) -> int:
        """Number of users (rows)."""
        return int(self.user_items.shape[0])

    @property
    def n_items(self) -> int:
        """Number of items (columns)."""
        return int(self.user_items.shape[1])

    @property
    def nnz(self) -> int:
        """Number of stored (user, item) interactions."""
        return int(self.user_items.nnz)

    def user_index(self, user_id: Any) -> int:
        """Row index of an external user id (exact match); :class:`UnknownIdError` if absent."""
        return self.users.index(user_id)

    def item_index(self, item_id: Any) -> int:
        """Column index of an external item id (exact match); :class:`UnknownIdError` if absent."""
        return self.items.index(item_id)

    @classmethod
    def from_frame(
        cls,
        frame: Any,
        user_col: str | None = None,
        item_col: str | None = None,
        rating_col: str | None = None,
        timestamp_col: str | None = None,
        *,
        feedback: Feedback = "implicit",
        min_user_interactions: int = 5,
        min_item_interactions: int = 1,
        iterate_min_counts: bool = False,
        exclude_users: Iterable[Any] | None = None,
        max_user_interactions: int | None = MAX_USER_ITEMS,
        max_value: float | Literal["auto"] | None = "auto",
        max_id_bytes: int = MAX_ID_BYTES,
    ) -> Interactions:
        """Validate and clean an in-memory table (pandas DataFrame or pyarrow Table).

        Parameters are those of :func:`load_interactions` (columns are matched the
        same way, and the same cleaning rules apply).

        Returns
        -------
        Interactions
        """
        started = time.perf_counter()
        if isinstance(frame, pa.Table):
            table = frame
        elif hasattr(frame, "columns") and hasattr(frame, "iloc"):
            table = pa.Table.from_pandas(frame, preserve_index=False)
        else:
            raise ValidationError(
                f"frame must be a pandas DataFrame or a pyarrow Table, got {type(frame).__name__}"
            )
        options = CleaningOptions.make(
            feedback, min_user_interactions, min_item_interactions, iterate_min_counts,
            exclude_users, max_user_interactions, max_value,
        )
        columns = resolve_columns(table.column_names, user_col, item_col, rating_col, timestamp_col, "<frame>")
        report = ValidationReport(source="<memory>", format="table", feedback=feedback, columns=columns)
        raw = RawColumns(columns, max_id_bytes=max_id_bytes)
        for batch in table.select([c for c in columns.values() if c is not None]).to_batches(_BATCH_ROWS):
            raw.add(batch)
        user_items, users, items, stamps = clean(raw, options, report, started)
        return cls(user_items, users, items, stamps, report)


def load_interactions(
    path: str | os.PathLike[str],
    format: str | None = None,
    user_col: str | None = None,
    item_col: str | None = None,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    sep: str | None = None,
    *,
    feedback: Feedback = "implicit",
    min_user_interactions: int = 5,
    min_item_interactions: int = 1,
    iterate_min_counts: bool = False,
    exclude_users: Iterable[Any] | None = None,
    max_user_interactions: int | None = MAX_USER_ITEMS,
    max_value: float | Literal["auto"] | None = "auto",
    max_id_bytes: int = MAX_ID_BYTES,
    progress: bool = False,
) -> Interactions:
    """Read an interaction log, validate and clean it, and map ids to indices.

    Parameters
    ----------
    path : str or PathLike
        A CSV/TSV/``.dat``/``.txt`` file (optionally ``.gz``/``.bz2``/``.zst``
        compressed; ``::``-separated MovieLens files too), a Parquet file, JSON
        lines, or a JSON array of flat objects. The first line of a text file is the
        header (except MovieLens ``::`` files, which have none).
    format : {"csv", "parquet", "jsonl", "json"}, optional
        Overrides the format implied by the extension.
    user_col, item_col, rating_col, timestamp_col : str, optional
        Column names, compared ignoring case, spaces, ``-`` and ``_``. By default
        common aliases are tried (``user_id``/``user``/``uid``…,
        ``item_id``/``artist_id``/``movie_id``/``track_id``/``game_title``…,
        ``rating``/``weight``/``plays``/``count``…, ``timestamp``/``ts``/``time``…),
        so ``userID``, ``user-id`` and ``User ID`` all match. Without a rating
        column every interaction counts 1; without a timestamp column there are no
        timestamps.
    sep : str, optional
        Field separator of a text file (one character, or ``"::"``); sniffed from
        its first lines by default.
    feedback : {"implicit", "explicit", "frobenius"}, default "implicit"
        How duplicates merge (sum, or latest rating) and whether zero values are
        dropped (all but ``explicit``). ``explicit`` needs a rating column.
    min_user_interactions : int, default 5
        Users with fewer distinct items are removed.
    min_item_interactions : int, default 1
        Items with fewer distinct users are removed.
    iterate_min_counts : bool, default False
        Repeat the two minimum-count rules until neither removes anything.
    exclude_users : iterable, optional
        External user ids to drop (test accounts and the like).
    max_user_interactions : int or None, default MAX_USER_ITEMS (100 000)
        Accounts with more distinct items are removed as not being one person
        (bots, shared accounts). Heavy listeners below it are kept. None: no limit.
    max_value : float, "auto" or None, default "auto"
        Rows whose single rating/play count is larger are dropped as implausible.
        ``"auto"``: more than 10 MADs above the median of ``log1p(value)``.
    max_id_bytes : int, default MAX_ID_BYTES (256)
        Longest user or item id accepted, in bytes of UTF-8; a longer one is an
        error naming its row.
    progress : bool, default False
        Show a progress bar (rows read) on stderr.

    Returns
    -------
    Interactions

    Raises
    ------
    DataError
        The file is missing, a directory, empty, binary, truncated or malformed; a
        column cannot be found; an id is too long; or cleaning left no interaction
        (the message names the rule and what to relax).
    ValidationError
        An option has an invalid value.

    Notes
    -----
    Ids are exact (:mod:`timbral.ids`): a column is read as int64 ids only when
    every id is an int64 written in canonical form; any other integer (leading
    zeros as in ``007``, a ``+`` sign, beyond int64 as uint64 ids can be) makes the
    column string ids, so ``"007"`` and ``"7"`` stay two ids. Ids are never read
    through floating point. In a CSV, where nothing declares types, a column of
    canonical integers with at most 1 % non-numeric garbage is read as integers and
    the garbage dropped as missing ids; CSV fields are stripped of surrounding
    spaces. Numeric timestamps are epoch seconds; values whose median exceeds 1e11,
    1e14 or 1e17 are read as milliseconds, microseconds or nanoseconds. Missing
    markers (empty, ``NA``, ``null``, ``NaN``) count as invalid, ``±inf`` as
    non-finite. A stray unterminated quote makes the parser treat the rest of the
    file as one field (standard CSV quoting); the row is counted as malformed.
    """
    started = time.perf_counter()
    options = CleaningOptions.make(
        feedback, min_user_interactions, min_item_interactions, iterate_min_counts,
        exclude_users, max_user_interactions, max_value,
    )
    names = (user_col, item_col, rating_col, timestamp_col)
    read = read_columns(path, format, names, sep, progress=progress, max_id_bytes=max_id_bytes)
    report = ValidationReport(source=os.fspath(path), format=read.format, feedback=feedback,
                              columns=read.columns, rows_malformed=read.rows_malformed)
    user_items, users, items, stamps = clean(read.raw, options, report, started)
    return Interactions(user_items, users, items, stamps, report)
