"""Cleaning rules of interaction logs, one function each, and the report that counts them.

Rules, in the order they apply (a row is counted under the first rule that drops it):

1. rows the parser cannot split into the header's number of fields (the reader counts them);
2. :func:`drop_missing_ids`: a missing or unparseable user or item id;
3. :func:`drop_bad_ratings`: a missing or non-numeric rating, then a NaN or infinite
   one (or one beyond float32's range, which the model's float32 matrix would hold as
   infinite), then a negative one, then (``feedback`` other than ``"explicit"``) a zero
   one, which carries no signal;
4. :func:`drop_bad_timestamps`: a missing or unparseable timestamp, then one before
   1970 or more than a day in the future (only when a timestamp column is used);
5. :func:`drop_excluded_users`: users in ``exclude_users``;
6. :func:`drop_implausible_values`: single values above ``max_value``;
7. :func:`merge_duplicates`: duplicate (user, item) pairs merged: values summed for
   ``implicit`` and ``frobenius`` feedback (keeping the latest timestamp), the latest
   rating by timestamp (else the last one seen) for ``explicit``;
8. :func:`drop_implausible_users`: accounts with more distinct items than
   ``max_user_interactions``, by default :data:`MAX_USER_ITEMS`, more than a person
   plays or rates (bots, shared or aggregate accounts). Heavy listeners are kept: they
   are the users a recommender must serve best;
9. :func:`drop_sparse`: users with fewer than ``min_user_interactions`` items, then
   items with fewer than ``min_item_interactions`` users, repeated to a fixed point
   when ``iterate_min_counts`` is set.

``max_value="auto"`` is robust: more than 10 median absolute deviations (MADs) above
the median of ``log1p(value)``; when the MAD is zero there is no cap.

Rules 3 and 4 are also what the service checks on each ingested event
(``POST /api/v1/interactions``): :func:`rating_faults` and :func:`timestamp_faults` give
each rule's mask, keyed by the report field that counts it, so the loader drops and
counts the rows while ingestion refuses them and says why.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral.exceptions import DataError, ValidationError
from timbral.ids import IdMap
from timbral.io import RawColumns

__all__ = [
    "MAX_FUTURE_SECONDS", "MAX_USER_ITEMS", "CleaningOptions", "ValidationReport", "clean", "epoch_scale",
    "rating_faults", "timestamp_faults",
]

Feedback = Literal["implicit", "explicit", "frobenius"]
FEEDBACKS = ("implicit", "explicit", "frobenius")
MAX_USER_ITEMS = 100_000
"""Default ``max_user_interactions``: more distinct items than a person plays or rates.

Ten years of listening eight hours a day is about 500 000 plays; 100 000 *distinct*
tracks, artists or films is beyond what the most engaged person reaches, and what
bots, shared and aggregate accounts do."""
_MAD_CAP = 10.0
MAX_FUTURE_SECONDS = 86400.0
"""How far past the clock a timestamp may be (clock skew between sources), in seconds."""
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Epoch numbers above these magnitudes are nanoseconds, microseconds, milliseconds.
_EPOCH_SCALES = ((1e17, 1e-9), (1e14, 1e-6), (1e11, 1e-3))


@dataclass
class ValidationReport:
    """Counts of what loading read, merged and dropped, rule by rule.

    Row counts (``dropped_*``) are disjoint: a row is counted under the first rule
    that drops it (see :mod:`timbral.cleaning` for the order). ``print(report)`` shows
    an aligned table; :meth:`to_dict` and :meth:`to_json` serialise it.
    """

    source: str = "<memory>"
    format: str = "table"
    feedback: str = "implicit"
    columns: dict[str, str | None] = field(default_factory=dict)
    rows_read: int = 0
    rows_malformed: int = 0
    dropped_missing_id: int = 0
    dropped_invalid_rating: int = 0
    dropped_nonfinite_rating: int = 0
    dropped_negative_rating: int = 0
    dropped_zero_rating: int = 0
    dropped_invalid_timestamp: int = 0
    dropped_out_of_range_timestamp: int = 0
    excluded_users: int = 0
    dropped_excluded_user_rows: int = 0
    max_value: float | None = None
    dropped_implausible_value: int = 0
    duplicates_merged: int = 0
    max_user_interactions: float | None = None
    outlier_users: int = 0
    outlier_user_interactions: int = 0
    sparse_users_removed: int = 0
    sparse_items_removed: int = 0
    sparse_interactions_removed: int = 0
    min_count_passes: int = 0
    n_users: int = 0
    n_items: int = 0
    nnz: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-compatible dict."""
        return asdict(self)

    def to_json(self, **kwargs: Any) -> str:
        """Return the report as a JSON string; ``kwargs`` go to :func:`json.dumps`."""
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        lines = [
            ("source", self.source),
            ("format", self.format),
            ("feedback", self.feedback),
            ("columns", ", ".join(f"{k}={v}" for k, v in self.columns.items())),
        ]
        for name, value in self.to_dict().items():
            if name in ("source", "format", "feedback", "columns"):
                continue
            if isinstance(value, float):
                text = f"{value:.3g}" if name != "seconds" else f"{value:.2f}"
            elif value is None:
                text = "none"
            else:
                text = f"{value:,}"
            lines.append((name.replace("_", " "), text))
        width = max(len(name) for name, _ in lines)
        vwidth = max(len(text) for _, text in lines[4:])
        head = [f"{name:<{width}}  {text}" for name, text in lines[:4]]
        return "\n".join(head + [f"{name:<{width}}  {text:>{vwidth}}" for name, text in lines[4:]])


@dataclass(frozen=True)
class CleaningOptions:
    """The cleaning parameters of :func:`timbral.interactions.load_interactions`, checked."""

    feedback: str = "implicit"
    min_user: int = 5
    min_item: int = 1
    iterate: bool = False
    exclude_users: tuple[Any, ...] = ()
    max_user_interactions: float | None = MAX_USER_ITEMS
    max_value: float | str | None = "auto"

    @classmethod
    def make(
        cls,
        feedback: str,
        min_user: int,
        min_item: int,
        iterate: bool,
        exclude_users: Iterable[Any] | None,
        max_user_interactions: Any,
        max_value: Any,
    ) -> CleaningOptions:
        """Validate the options; :class:`ValidationError` names the first bad one."""
        if feedback not in FEEDBACKS:
            raise ValidationError(f"feedback must be one of {FEEDBACKS}, got {feedback!r}")
        for name, value in (("min_user_interactions", min_user), ("min_item_interactions", min_item)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValidationError(f"{name} must be a non-negative integer, got {value!r}")
        if not (max_user_interactions is None or _positive(max_user_interactions)):
            raise ValidationError(
                f"max_user_interactions must be None or a positive number, got {max_user_interactions!r}; "
                f"the default {MAX_USER_ITEMS:,} keeps every account a person could have"
            )
        if not (max_value is None or max_value == "auto" or _positive(max_value)):
            raise ValidationError(f"max_value must be 'auto', None or a positive number, got {max_value!r}")
        if isinstance(exclude_users, (str, bytes)):
            raise ValidationError(
                f"exclude_users must be a list of user ids, got the string {exclude_users!r}; "
                "wrap a single id in a list"
            )
        return cls(
            feedback, int(min_user), int(min_item), bool(iterate),
            tuple(exclude_users) if exclude_users is not None else (),
            max_user_interactions, max_value,
        )


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and value > 0


# ------------------------------------------------------------------- row rules


def drop_missing_ids(keep: NDArray[np.bool_], user_ok: NDArray[np.bool_], item_ok: NDArray[np.bool_],
                     report: ValidationReport) -> None:
    """Rule 2: rows without a usable user or item id."""
    report.dropped_missing_id = _drop(keep, ~(user_ok & item_ok))


def rating_faults(values: NDArray[np.float64], ok: NDArray[np.bool_],
                  feedback: str) -> list[tuple[str, NDArray[np.bool_]]]:
    """Rule 3 as ``(report field, mask of the rows it refuses)``, in the rule's order.

    ``ok`` marks the values that parsed as numbers. A row may be in several masks;
    the first one is its reason.
    """
    with np.errstate(invalid="ignore"):
        faults = [
            ("dropped_invalid_rating", ~ok),
            ("dropped_nonfinite_rating", ~np.isfinite(values) | (np.abs(values) > _FLOAT32_MAX)),
            ("dropped_negative_rating", values < 0),
        ]
        if feedback != "explicit":
            faults.append(("dropped_zero_rating", values == 0))
    return faults


def epoch_scale(magnitude: float) -> float:
    """The factor turning an epoch number of this magnitude into seconds.

    Above 1e17, 1e14 and 1e11 a number is read as nanoseconds, microseconds and
    milliseconds (1e11 seconds is the year 5138); below, as seconds.
    """
    return next((scale for bound, scale in _EPOCH_SCALES if magnitude > bound), 1.0)


def timestamp_faults(seconds: NDArray[np.float64], ok: NDArray[np.bool_],
                     now: float) -> list[tuple[str, NDArray[np.bool_]]]:
    """Rule 4 as ``(report field, mask of the rows it refuses)``: unparseable or non-finite
    times, then times before 1970 or more than :data:`MAX_FUTURE_SECONDS` after ``now``."""
    with np.errstate(invalid="ignore"):
        return [
            ("dropped_invalid_timestamp", ~ok | ~np.isfinite(seconds)),
            ("dropped_out_of_range_timestamp", (seconds < 0) | (seconds > now + MAX_FUTURE_SECONDS)),
        ]


def drop_bad_ratings(keep: NDArray[np.bool_], values: NDArray[np.float64], ok: NDArray[np.bool_],
                     feedback: str, report: ValidationReport) -> None:
    """Rule 3: unparseable, non-finite, negative, and (implicit feedback) zero ratings."""
    for name, bad in rating_faults(values, ok, feedback):
        setattr(report, name, _drop(keep, bad))


def drop_bad_timestamps(keep: NDArray[np.bool_], times: NDArray[np.float64], ok: NDArray[np.bool_],
                        numeric: bool, report: ValidationReport) -> NDArray[np.float64]:
    """Rule 4: unparseable timestamps, then those before 1970 or over a day ahead.

    Returns the times in seconds: numbers are scaled by :func:`epoch_scale` of their
    median (a file holds one unit).
    """
    now = time.time()
    (_, invalid), _ = timestamp_faults(times, ok, now)
    report.dropped_invalid_timestamp = _drop(keep, invalid)
    if numeric and keep.any():
        times = times * epoch_scale(float(np.median(times[keep])))
    _, (_, out_of_range) = timestamp_faults(times, ok, now)
    report.dropped_out_of_range_timestamp = _drop(keep, out_of_range)
    return times


def drop_excluded_users(rows: NDArray[np.int64], users: IdMap, exclude: tuple[Any, ...],
                        report: ValidationReport) -> NDArray[np.bool_]:
    """Rule 5: mask of the rows to keep once the users in ``exclude`` are removed."""
    found = users.lookup(list(exclude))
    excluded = np.unique(found[found >= 0])
    report.excluded_users = int(excluded.size)
    mask = np.zeros(len(users), bool)
    mask[excluded] = True
    drop = mask[rows]
    report.dropped_excluded_user_rows = int(drop.sum())
    return ~drop


def drop_implausible_values(values: NDArray[np.float64], max_value: float | str | None,
                            report: ValidationReport) -> NDArray[np.bool_] | None:
    """Rule 6: mask of the rows whose single value is at most the cap (None: no cap)."""
    cap = _mad_cap(values) if max_value == "auto" else max_value
    report.max_value = None if cap is None else float(cap)
    if cap is None:
        return None
    drop = values > cap
    report.dropped_implausible_value = int(drop.sum())
    return ~drop


def merge_duplicates(
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    values: NDArray[np.float64],
    times: NDArray[np.float64] | None,
    n_users: int,
    n_items: int,
    keep_latest: bool,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], NDArray[np.float64] | None]:
    """Rule 7: merge duplicate (row, col) pairs; return arrays sorted by (row, col)."""
    if times is None and not keep_latest:
        # Sum duplicates with SciPy's O(nnz) COO → CSR conversion.
        index = np.int32 if max(n_users, n_items) < 2**31 else np.int64
        merged = sp.csr_matrix(
            (values, (rows.astype(index), cols.astype(index))), shape=(n_users, n_items)
        )
        merged.sum_duplicates()
        out_rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(merged.indptr))
        return out_rows, merged.indices.astype(np.int64), merged.data, None
    key = rows * n_items + cols
    if keep_latest:  # by key, then time: the last of each run is the latest (else the last seen)
        order = np.lexsort((times, key)) if times is not None else np.argsort(key, kind="stable")
    else:  # sums and maxima do not care about order within a run: an unstable sort is enough
        order = np.argsort(key)
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    values = values[order]
    times = times[order] if times is not None else None
    if keep_latest:
        last = np.r_[starts[1:], len(key)] - 1
        values = values[last]
        times = times[last] if times is not None else None
    else:
        values = np.add.reduceat(values, starts)
        times = np.maximum.reduceat(times, starts) if times is not None else None
    key = key[starts]
    return key // n_items, key % n_items, values, times


def drop_implausible_users(rows: NDArray[np.int64], n_users: int, limit: float | None,
                           report: ValidationReport) -> NDArray[np.bool_]:
    """Rule 8: mask of the users kept: present, and with at most ``limit`` distinct items."""
    counts = np.bincount(rows, minlength=n_users)
    report.max_user_interactions = None if limit is None else float(limit)
    keep = counts > 0
    if limit is not None:
        outliers = counts > limit
        report.outlier_users = int(outliers.sum())
        report.outlier_user_interactions = int(counts[outliers].sum())
        keep &= ~outliers
    return keep


def drop_sparse(rows: NDArray[np.int64], cols: NDArray[np.int64], user_keep: NDArray[np.bool_], n_items: int,
                options: CleaningOptions, report: ValidationReport) -> NDArray[np.bool_]:
    """Rule 9: mask of the rows left once too-sparse users, then items, are removed."""
    n_users = len(user_keep)
    item_keep = np.ones(n_items, bool)
    live = user_keep[rows]
    while True:
        report.min_count_passes += 1
        user_counts = np.bincount(rows[live], minlength=n_users)
        sparse_users = user_keep & (user_counts < options.min_user)
        user_keep &= ~sparse_users
        live &= user_keep[rows]
        item_counts = np.bincount(cols[live], minlength=n_items)
        sparse_items = item_keep & (item_counts < options.min_item) & (item_counts > 0)
        item_keep &= item_counts >= max(options.min_item, 1)
        live &= item_keep[cols]
        report.sparse_users_removed += int(sparse_users.sum())
        report.sparse_items_removed += int(sparse_items.sum())
        if live.sum() == 0:
            most = int(user_counts.max()) if len(user_counts) else 0
            raise DataError(
                f"no interactions left in {report.source}: min_user_interactions={options.min_user} and "
                f"min_item_interactions={options.min_item} removed every user and item (the most active "
                f"remaining user had {most} items); lower min_user_interactions / min_item_interactions"
            )
        if not options.iterate or not (sparse_users.any() or sparse_items.any()):
            break
    report.sparse_interactions_removed = len(rows) - report.outlier_user_interactions - int(live.sum())
    return live


# ------------------------------------------------------------------------ pipeline


def clean(
    raw: RawColumns, options: CleaningOptions, report: ValidationReport, started: float
) -> tuple[sp.csr_matrix, IdMap, IdMap, sp.csr_matrix | None]:
    """Apply every rule to the columns read; return the matrix, the id maps and the timestamps.

    Raises
    ------
    DataError
        No data rows, no rating column for explicit feedback, or a rule left nothing.
    """
    n = raw.n_rows
    report.rows_read = n
    if n == 0:
        raise DataError(f"{report.source} has a header but no data rows; add interactions (one per line)")
    ids = {role: raw.ids(role) for role in ("user", "item")}
    keep = np.ones(n, bool)
    drop_missing_ids(keep, ids["user"][1], ids["item"][1], report)
    values = _cat(raw.rating) if raw.columns["rating"] is not None else None
    if values is None and options.feedback == "explicit":
        raise DataError(
            f"feedback='explicit' needs a rating column, and none was found among {report.columns}; "
            "pass rating_col= (CLI: --rating-col)"
        )
    if values is not None:
        drop_bad_ratings(keep, values, _cat(raw.rating_ok), options.feedback, report)
    times = None
    if raw.columns["timestamp"] is not None:
        times = drop_bad_timestamps(keep, _cat(raw.time), _cat(raw.time_ok), raw.time_numeric, report)
    _require_rows(keep, report, "validating rows")

    # Ids -> contiguous codes in sorted id order (rows already dropped are left out).
    maps, codes = {}, {}
    for role in ("user", "item"):
        column = ids.pop(role)[0]
        kept = column[keep] if isinstance(column, np.ndarray) else column.filter(pa.array(keep))
        maps[role], codes[role] = IdMap.encode(kept, name=f"{role}_id", max_bytes=None)
    rows, cols = codes["user"], codes["item"]
    values = values[keep] if values is not None else np.ones(len(rows))
    times = times[keep] if times is not None else None
    del keep

    if options.exclude_users:
        mask = drop_excluded_users(rows, maps["user"], options.exclude_users, report)
        rows, cols, values, times = _subset(mask, rows, cols, values, times)
        _require(len(rows), report, "exclude_users removed every remaining user; check the list of excluded ids")
    mask = drop_implausible_values(values, options.max_value, report)
    if mask is not None:
        rows, cols, values, times = _subset(mask, rows, cols, values, times)
        _require(len(rows), report, f"max_value={options.max_value!r} (cap {report.max_value:.4g}) dropped every "
                                    "row; raise max_value or pass None")

    n_users, n_items = len(maps["user"]), len(maps["item"])
    before = len(rows)
    rows, cols, values, times = merge_duplicates(rows, cols, values, times, n_users, n_items,
                                                 options.feedback == "explicit")
    report.duplicates_merged = before - len(rows)
    user_keep = drop_implausible_users(rows, n_users, options.max_user_interactions, report)
    _require(int(user_keep[rows].sum()), report,
             "max_user_interactions removed every user; raise max_user_interactions or pass None")
    live = drop_sparse(rows, cols, user_keep, n_items, options, report)
    return _assemble(rows, cols, values, times, live, maps["user"], maps["item"], report, started)


def _assemble(
    rows: NDArray[np.int64], cols: NDArray[np.int64], values: NDArray[np.float64],
    times: NDArray[np.float64] | None, live: NDArray[np.bool_], users: IdMap, items: IdMap,
    report: ValidationReport, started: float,
) -> tuple[sp.csr_matrix, IdMap, IdMap, sp.csr_matrix | None]:
    """The surviving rows as CSR matrices over the users and items that still have one."""
    user_keep = np.bincount(rows[live], minlength=len(users)) > 0
    item_keep = np.bincount(cols[live], minlength=len(items)) > 0
    rows, cols, values, times = _subset(live, rows, cols, values, times)
    rows, cols = (np.cumsum(user_keep) - 1)[rows], (np.cumsum(item_keep) - 1)[cols]
    shape = (int(user_keep.sum()), int(item_keep.sum()))
    indptr = np.zeros(shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
    index_dtype = np.int32 if max(shape[1], len(cols)) < 2**31 else np.int64
    indptr = indptr.astype(index_dtype)
    cols = cols.astype(index_dtype)
    user_items = sp.csr_matrix((values.astype(np.float32), cols, indptr), shape=shape)
    user_items.has_sorted_indices = True
    stamps = None
    if times is not None:
        stamps = sp.csr_matrix((times.astype(np.float64), cols.copy(), indptr.copy()), shape=shape)
        stamps.has_sorted_indices = True
    report.n_users, report.n_items, report.nnz = shape[0], shape[1], int(user_items.nnz)
    report.seconds = time.perf_counter() - started
    return user_items, users.select(user_keep), items.select(item_keep), stamps


def _cat(parts: list[NDArray[Any]]) -> NDArray[Any]:
    out = np.concatenate(parts) if len(parts) > 1 else parts[0]
    parts.clear()
    return out


def _mad_cap(values: NDArray[np.float64]) -> float | None:
    """``expm1(median + 10 MAD)`` of ``log1p(values)``, or None when the MAD is zero."""
    if len(values) == 0:
        return None
    logs = np.log1p(values)
    median = float(np.median(logs))
    mad = float(np.median(np.abs(logs - median)))
    if mad == 0.0:
        return None
    return float(np.expm1(median + _MAD_CAP * mad))


def _drop(keep: NDArray[np.bool_], bad: NDArray[np.bool_]) -> int:
    """Clear ``keep`` where ``bad``; return how many kept rows that dropped."""
    hit = keep & bad
    count = int(hit.sum())
    if count:
        keep &= ~hit
    return count


def _require_rows(keep: NDArray[np.bool_], report: ValidationReport, stage: str) -> None:
    if keep.any():
        return
    reasons = {k: v for k, v in report.to_dict().items() if k.startswith("dropped_") and v}
    raise DataError(
        f"every one of the {report.rows_read} rows of {report.source} was dropped while {stage} "
        f"({', '.join(f'{k[8:]}: {v}' for k, v in reasons.items())}); check that the columns "
        f"{report.columns} are the right ones (user_col=, item_col=, rating_col=, timestamp_col=)"
    )


def _require(remaining: int, report: ValidationReport, message: str) -> None:
    if remaining == 0:
        raise DataError(f"no interactions left in {report.source}: {message}")


def _subset(mask: NDArray[np.bool_], *arrays: NDArray[Any] | None) -> list[NDArray[Any] | None]:
    return [None if a is None else a[mask] for a in arrays]
