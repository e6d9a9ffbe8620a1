"""Read, validate and clean interaction logs into an :class:`Interactions` matrix.

Interaction logs (one row per user, item and optional rating/play count and
timestamp) are read with pyarrow's multi-threaded readers, streamed in record
batches and converted column by column to NumPy, so no row is ever held as a
Python object. Cleaning is vectorised NumPy; every rule counts what it removed in
a :class:`ValidationReport`.

Rules, in the order they apply (a row is counted under the first rule that drops it):

1. rows the parser cannot split into the header's number of fields (CSV);
2. a missing or unparseable user or item id;
3. a missing or non-numeric rating, then a NaN or infinite one, then a negative one,
   then (``feedback`` other than ``"explicit"``) a zero one, which carries no signal;
4. a missing or unparseable timestamp, then one before 1970 or more than a day in
   the future (only when a timestamp column is used);
5. users in ``exclude_users``;
6. implausible single values above ``max_value``;
7. duplicate (user, item) pairs merged: values summed for ``implicit`` and
   ``frobenius`` feedback (keeping the latest timestamp), the latest rating by
   timestamp (else the last one seen) for ``explicit``;
8. outlier accounts with more than ``max_user_interactions`` distinct items;
9. users with fewer than ``min_user_interactions`` items, then items with fewer than
   ``min_item_interactions`` users, repeated to a fixed point when
   ``iterate_min_counts`` is set.

``"auto"`` thresholds are robust: more than 10 median absolute deviations (MADs)
above the median on a ``log1p`` scale; when the MAD is zero there is no cap.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral.exceptions import DataError, UnknownIdError, ValidationError

__all__ = ["Interactions", "ValidationReport", "load_interactions"]

Feedback = Literal["implicit", "explicit", "frobenius"]
_FEEDBACKS = ("implicit", "explicit", "frobenius")

USER_ALIASES = ("user_id", "userid", "user", "uid", "listener_id")
ITEM_ALIASES = ("item_id", "itemid", "artistid", "artist_id", "movieid", "item", "track_id", "song_id")
RATING_ALIASES = ("rating", "weight", "plays", "count", "play_count", "playcount", "score")
TIMESTAMP_ALIASES = ("timestamp", "ts", "time", "datetime")

_EXTENSIONS = {
    ".csv": "csv", ".tsv": "csv", ".dat": "csv", ".txt": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
}
_COMPRESSIONS = (".gz", ".bz2", ".zst", ".lz4")
_FORMATS = ("csv", "parquet", "jsonl", "json")
_SEPARATORS = (",", "\t", ";", "|", " ")
_MAD_CAP = 10.0
_BATCH_ROWS = 1 << 20
_CSV_BLOCK_BYTES = 8 << 20

_INT_RE = r"^[-+]?\d{1,18}$"
_CANONICAL_INT_RE = r"^-?(0|[1-9]\d{0,17})$"  # no leading zeros: "007" stays a string id
_FLOAT_RE = r"^[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|nan|inf|infinity)$"
_ISO_RE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"
_ZONE_RE = r"(Z|[+-]\d{2}:?\d{2})$"
_TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d", "%Y/%m/%d %H:%M:%S", "%Y/%m/%d")


# --------------------------------------------------------------------------- report


@dataclass
class ValidationReport:
    """Counts of what loading read, merged and dropped, rule by rule.

    Row counts (``dropped_*``) are disjoint: a row is counted under the first rule
    that drops it (see the module docstring for the order). ``print(report)`` shows
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


# ---------------------------------------------------------------------- interactions


@dataclass
class Interactions:
    """A cleaned users × items interaction matrix with its id maps.

    Attributes
    ----------
    user_items : scipy.sparse.csr_matrix of shape (n_users, n_items)
        float32 values (summed play counts, or ratings), sorted indices, no
        duplicates.
    user_ids : ndarray of shape (n_users,)
        External id of each row, sorted ascending (int64, or str dtype ``U``).
    item_ids : ndarray of shape (n_items,)
        External id of each column, sorted ascending.
    timestamps : scipy.sparse.csr_matrix of shape (n_users, n_items) or None
        float64 epoch seconds with the same sparsity pattern as ``user_items``
        (the latest timestamp of merged duplicates).
    report : ValidationReport
        What was read, merged and dropped.
    """

    user_items: sp.csr_matrix
    user_ids: NDArray[Any]
    item_ids: NDArray[Any]
    timestamps: sp.csr_matrix | None = None
    report: ValidationReport = field(default_factory=ValidationReport)

    def __post_init__(self) -> None:
        n_users, n_items = self.user_items.shape
        if len(self.user_ids) != n_users or len(self.item_ids) != n_items:
            raise ValidationError(
                f"user_ids has {len(self.user_ids)} and item_ids {len(self.item_ids)} entries "
                f"but user_items has shape {self.user_items.shape}; pass one id per row and per column"
            )
        if self.timestamps is not None and self.timestamps.shape != self.user_items.shape:
            raise ValidationError(
                f"timestamps has shape {self.timestamps.shape}, user_items {self.user_items.shape}; "
                "they must share one sparsity pattern"
            )

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
        """Row index of an external user id; raise :class:`UnknownIdError` if absent."""
        return _lookup(self.user_ids, user_id, "user")

    def item_index(self, item_id: Any) -> int:
        """Column index of an external item id; raise :class:`UnknownIdError` if absent."""
        return _lookup(self.item_ids, item_id, "item")

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
        max_user_interactions: int | Literal["auto"] | None = "auto",
        max_value: float | Literal["auto"] | None = "auto",
    ) -> Interactions:
        """Validate and clean an in-memory table (pandas DataFrame or pyarrow Table).

        Parameters are those of :func:`load_interactions` (columns are matched the
        same way, and the same cleaning rules apply).

        Returns
        -------
        Interactions
        """
        if isinstance(frame, pa.Table):
            table = frame
        elif hasattr(frame, "columns") and hasattr(frame, "iloc"):
            table = pa.Table.from_pandas(frame, preserve_index=False)
        else:
            raise ValidationError(
                f"frame must be a pandas DataFrame or a pyarrow Table, got {type(frame).__name__}"
            )
        options = _Options.make(
            feedback, min_user_interactions, min_item_interactions, iterate_min_counts,
            exclude_users, max_user_interactions, max_value,
        )
        columns = _resolve_columns(table.column_names, user_col, item_col, rating_col, timestamp_col, "<frame>")
        report = ValidationReport(source="<memory>", format="table", feedback=feedback, columns=columns)
        kinds = _id_kinds(table.schema, columns, "<frame>")
        raw = _Collector(columns, kinds)
        for batch in table.select([c for c in columns.values() if c is not None]).to_batches(_BATCH_ROWS):
            raw.add(batch)
        return _clean(raw, options, report, time.perf_counter())


def _lookup(ids: NDArray[Any], key: Any, what: str) -> int:
    try:
        probe = np.asarray(key, dtype=ids.dtype) if ids.dtype.kind in "iu" else np.asarray(str(key))
    except (TypeError, ValueError):
        probe = None
    if probe is not None and probe.ndim == 0:
        pos = int(np.searchsorted(ids, probe))
        if pos < len(ids) and ids[pos] == probe:
            return pos
    raise UnknownIdError(f"{what} id {key!r} is not in the data ({len(ids)} {what}s)")


# ------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _Options:
    feedback: str
    min_user: int
    min_item: int
    iterate: bool
    exclude_users: tuple[Any, ...]
    max_user_interactions: float | str | None
    max_value: float | str | None

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
    ) -> _Options:
        if feedback not in _FEEDBACKS:
            raise ValidationError(f"feedback must be one of {_FEEDBACKS}, got {feedback!r}")
        for name, value in (("min_user_interactions", min_user), ("min_item_interactions", min_item)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValidationError(f"{name} must be a non-negative integer, got {value!r}")
        for name, value in (("max_user_interactions", max_user_interactions), ("max_value", max_value)):
            ok = value is None or value == "auto" or (
                isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and value > 0
            )
            if not ok:
                raise ValidationError(f"{name} must be 'auto', None or a positive number, got {value!r}")
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


# ------------------------------------------------------------------------- loading


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
    max_user_interactions: int | Literal["auto"] | None = "auto",
    max_value: float | Literal["auto"] | None = "auto",
    progress: bool = False,
) -> Interactions:
    """Read an interaction log, validate and clean it, and map ids to indices.

    Parameters
    ----------
    path : str or PathLike
        A CSV/TSV/``.dat``/``.txt`` file (optionally ``.gz``/``.bz2``/``.zst``
        compressed), a Parquet file, JSON lines, or a JSON array of flat objects.
        The first line of a text file is the header.
    format : {"csv", "parquet", "jsonl", "json"}, optional
        Overrides the format implied by the extension.
    user_col, item_col, rating_col, timestamp_col : str, optional
        Column names (case-insensitive). By default common aliases are tried
        (``user_id``/``userId``/``user``/``uid``…, ``item_id``/``artistID``/
        ``movieId``/``track_id``…, ``rating``/``weight``/``plays``/``count``…,
        ``timestamp``/``ts``/``time``…). Without a rating column every
        interaction counts 1; without a timestamp column there are no timestamps.
    sep : str, optional
        Field separator of a text file; sniffed from its first lines by default.
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
    max_user_interactions : int, "auto" or None, default "auto"
        Users with more distinct items are removed as outlier accounts. ``"auto"``:
        more than 10 MADs above the median of ``log1p(items per user)``.
    max_value : float, "auto" or None, default "auto"
        Rows whose single rating/play count is larger are dropped as implausible.
        ``"auto"``: more than 10 MADs above the median of ``log1p(value)``.
    progress : bool, default False
        Show a progress bar (rows read) on stderr.

    Returns
    -------
    Interactions

    Raises
    ------
    DataError
        The file is missing, a directory, empty, binary or malformed; a column
        cannot be found; or cleaning left no interaction (the message names the
        rule and what to relax).
    ValidationError
        An option has an invalid value.

    Notes
    -----
    Numeric timestamps are epoch seconds; values whose median exceeds 1e11, 1e14
    or 1e17 are read as milliseconds, microseconds or nanoseconds. The id type
    (integer or string) of a CSV column is inferred from its first block, and a
    text column whose ids are at least 99 % canonical integers is read as integers;
    values that do not parse as the chosen type are dropped as missing ids. Missing
    markers (empty, ``NA``, ``null``, ``NaN``) count as invalid, ``±inf`` as
    non-finite. A stray unterminated quote makes the parser treat the rest of the
    file as one field (standard CSV quoting); the row is counted as malformed.
    """
    started = time.perf_counter()
    options = _Options.make(
        feedback, min_user_interactions, min_item_interactions, iterate_min_counts,
        exclude_users, max_user_interactions, max_value,
    )
    path = os.fspath(path)
    fmt, compression = _detect_format(path, format)
    _check_file(path, fmt, compression)
    report = ValidationReport(source=path, format=fmt, feedback=feedback)
    names = (user_col, item_col, rating_col, timestamp_col)
    with _Progress(progress) as tick:
        if fmt == "csv":
            raw = _read_csv(path, compression, sep, names, report, tick)
        elif fmt == "parquet":
            raw = _read_parquet(path, names, report, tick)
        else:
            raw = _read_json(path, fmt, compression, names, report, tick)
    return _clean(raw, options, report, started)


class _Progress:
    """Context manager yielding ``tick(n_rows)``; a tqdm bar when enabled."""

    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(unit=" rows", unit_scale=True, desc="reading", leave=False)

    def __enter__(self) -> Callable[[int], None]:
        return self.bar.update if self.bar is not None else (lambda n: None)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _detect_format(path: str, format: str | None) -> tuple[str, str | None]:
    lower = path.lower()
    compression = None
    for ext in _COMPRESSIONS:
        if lower.endswith(ext):
            compression = {"gz": "gzip", "bz2": "bz2", "zst": "zstd", "lz4": "lz4"}[ext[1:]]
            lower = lower[: -len(ext)]
    if format is not None:
        fmt = {"tsv": "csv", "dat": "csv", "txt": "csv", "ndjson": "jsonl", "pq": "parquet"}.get(
            format.lower(), format.lower()
        )
        if fmt not in _FORMATS:
            raise ValidationError(f"format must be one of {_FORMATS}, got {format!r}")
        return fmt, compression
    ext = os.path.splitext(lower)[1]
    if ext not in _EXTENSIONS:
        raise DataError(
            f"cannot tell the format of {path!r} from its extension {ext or '(none)'!r}; "
            f"pass format= one of {_FORMATS} (CLI: --format), or use one of {sorted(_EXTENSIONS)}"
        )
    return _EXTENSIONS[ext], compression


def _check_file(path: str, fmt: str, compression: str | None) -> None:
    if not os.path.exists(path):
        raise DataError(f"file not found: {path!r}; check the path")
    if os.path.isdir(path):
        raise DataError(f"{path!r} is a directory, not a data file; pass the path of a CSV, Parquet or JSON file")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path!r} is empty (0 bytes); it needs a header line and at least one row")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if fmt == "parquet":
        if magic != b"PAR1":
            raise DataError(
                f"{path!r} is not a Parquet file (no PAR1 magic bytes); pass format='csv' or "
                "'jsonl' if it is text"
            )
        return
    head = _head_bytes(path, compression)
    if not head.strip():
        raise DataError(f"{path!r} is empty (only whitespace); it needs a header line and at least one row")
    try:
        text_ok = b"\x00" not in head and _decodes(head)
    except UnicodeDecodeError:
        text_ok = False
    if not text_ok:
        hint = " it looks like Parquet: pass format='parquet' or rename it .parquet;" if magic == b"PAR1" else ""
        raise DataError(
            f"{path!r} is a binary file, not {fmt.upper()} text;{hint} expected UTF-8 text "
            "with a header line"
        )


def _head_bytes(path: str, compression: str | None, n: int = 1 << 16) -> bytes:
    try:
        with pa.input_stream(path, compression=compression) as stream:
            return stream.read(n)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {path!r} as {compression or 'uncompressed'} data: {exc}") from exc


def _decodes(head: bytes) -> bool:
    # A multi-byte character may be cut at the end of the sample: drop the last line.
    cut = head.rfind(b"\n")
    (head[:cut] if cut > 0 else head[:-4] if len(head) > 4 else head).decode("utf-8")
    return True


def _sniff_separator(path: str, head: bytes) -> str:
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = [ln for ln in text.splitlines()[:21] if ln.strip()]
    if len(lines) > 1 and len(head) >= (1 << 16):
        lines = lines[:-1]  # last line may be cut
    lines = [re.sub(r'"[^"]*"', "x", ln) for ln in lines]
    if lines and "::" in lines[0] and all(ln.count("::") == lines[0].count("::") for ln in lines):
        raise DataError(
            f"{path!r} separates fields with '::' (MovieLens .dat style), which the CSV reader "
            "does not support; convert it to CSV, e.g. sed 's/::/,/g'"
        )
    best, best_count = None, 0
    for cand in _SEPARATORS:
        counts = [ln.count(cand) for ln in lines]
        if counts and counts[0] > 0 and all(c == counts[0] for c in counts) and counts[0] > best_count:
            best, best_count = cand, counts[0]
    if best is None:
        raise DataError(
            f"cannot detect the field separator of {path!r} from its first lines "
            f"(tried {', '.join(repr(s) for s in _SEPARATORS)}); pass sep= (CLI: --sep)"
        )
    return best


def _resolve_columns(
    names: Sequence[str],
    user_col: str | None,
    item_col: str | None,
    rating_col: str | None,
    timestamp_col: str | None,
    source: str,
) -> dict[str, str | None]:
    lowered = {}
    for name in names:
        lowered.setdefault(name.strip().lower(), name)
    found = ", ".join(repr(n) for n in names)
    hint = " (the file may lack a header line)" if names and all(re.fullmatch(r"[-+.\d]+", n.strip()) for n in names) else ""
    resolved: dict[str, str | None] = {}
    for role, given, aliases, required in (
        ("user", user_col, USER_ALIASES, True),
        ("item", item_col, ITEM_ALIASES, True),
        ("rating", rating_col, RATING_ALIASES, False),
        ("timestamp", timestamp_col, TIMESTAMP_ALIASES, False),
    ):
        option = f"{role}_col=" + f" (CLI: --{role}-col)"
        if given is not None:
            if given.strip().lower() not in lowered:
                raise DataError(
                    f"{role}_col={given!r} is not a column of {source}; columns found: {found}{hint}; "
                    f"pass one of them as {option}"
                )
            resolved[role] = lowered[given.strip().lower()]
            continue
        match = next((lowered[a] for a in aliases if a in lowered), None)
        if match is None and required:
            raise DataError(
                f"no {role} column in {source}: columns found: {found}{hint}; none matches the "
                f"usual names ({', '.join(aliases)}); pass {option}"
            )
        resolved[role] = match
    used = [c for c in resolved.values() if c is not None]
    if len(set(used)) != len(used):
        raise DataError(f"one column was chosen for two roles: {resolved}; pass user_col=, item_col=, rating_col= explicitly")
    return resolved


def _id_kinds(schema: pa.Schema, columns: dict[str, str | None], source: str) -> dict[str, str]:
    kinds = {}
    for role in ("user", "item"):
        typ = schema.field(columns[role]).type
        if pa.types.is_dictionary(typ):
            typ = typ.value_type
        if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_null(typ):
            kinds[role] = "int"
        elif pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
            kinds[role] = "str"
        else:
            raise DataError(
                f"{role} column {columns[role]!r} of {source} has type {typ}; ids must be integers or strings"
            )
    return kinds


# --------------------------------------------------------------------------- readers


def _read_csv(
    path: str,
    compression: str | None,
    sep: str | None,
    names: tuple[str | None, ...],
    report: ValidationReport,
    tick: Callable[[int], None],
) -> _Collector:
    head = _head_bytes(path, compression)
    if sep is None:
        sep = _sniff_separator(path, head)
    elif len(sep) != 1:
        raise ValidationError(f"sep must be a single character, got {sep!r}; multi-character separators are not supported")
    first = head.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()[0]
    header = [h.strip() for h in next(csv.reader([first], delimiter=sep))]
    columns = _resolve_columns(header, *names, repr(path))
    report.columns = columns
    include = [c for c in columns.values() if c is not None]
    malformed = [0]

    def skip(row: Any) -> str:
        malformed[0] += 1
        return "skip"

    def open_reader(column_types: dict[str, pa.DataType] | None) -> pcsv.CSVStreamingReader:
        malformed[0] = 0
        return pcsv.open_csv(
            pa.input_stream(path, compression=compression),
            read_options=pcsv.ReadOptions(use_threads=True, block_size=_CSV_BLOCK_BYTES),
            parse_options=pcsv.ParseOptions(delimiter=sep, invalid_row_handler=skip),
            convert_options=pcsv.ConvertOptions(
                include_columns=include, column_types=column_types or {}, strings_can_be_null=True
            ),
        )

    reader = open_reader(None)
    kinds = _id_kinds(reader.schema, columns, repr(path))
    first_types = {name: reader.schema.field(name).type for name in include}
    raw = _Collector(columns, kinds)
    try:
        for batch in reader:
            raw.add(batch)
            tick(batch.num_rows)
    except pa.ArrowInvalid:
        # A value later in the file does not fit the type inferred from the first
        # block: read every column as text and coerce it, dropping what fails.
        raw = _Collector(columns, kinds, first_types)
        reader = open_reader({name: pa.large_string() for name in include})
        for batch in reader:
            raw.add(batch)
            tick(batch.num_rows)
    report.rows_malformed = malformed[0]
    for role in ("user", "item"):
        if raw.kinds[role] == "str":
            raw.int_like_to_int(role)
    return raw


def _read_parquet(
    path: str, names: tuple[str | None, ...], report: ValidationReport, tick: Callable[[int], None]
) -> _Collector:
    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {path!r} as Parquet: {exc}") from exc
    schema = handle.schema_arrow
    columns = _resolve_columns(schema.names, *names, repr(path))
    report.columns = columns
    raw = _Collector(columns, _id_kinds(schema, columns, repr(path)))
    for batch in handle.iter_batches(batch_size=_BATCH_ROWS, columns=[c for c in columns.values() if c is not None]):
        raw.add(batch)
        tick(batch.num_rows)
    return raw


def _read_json(
    path: str,
    fmt: str,
    compression: str | None,
    names: tuple[str | None, ...],
    report: ValidationReport,
    tick: Callable[[int], None],
) -> _Collector:
    with pa.input_stream(path, compression=compression) as stream:
        data = stream.read()
    body = data.strip()
    if fmt == "json" and body.startswith(b"["):
        if not body.endswith(b"]"):
            raise DataError(f"{path!r} starts a JSON array with '[' but does not end with ']'; is it truncated?")
        # A JSON array of flat objects becomes JSON lines, one object per line.
        data = re.sub(rb"\}\s*,\s*\{", b"}\n{", body[1:-1].strip())
        if not data:
            raise DataError(f"{path!r} holds an empty JSON array; it needs at least one object")
    try:
        table = pjson.read_json(io.BytesIO(data), read_options=pjson.ReadOptions(use_threads=True))
        first_types = None
    except pa.ArrowInvalid:
        table, first_types = _json_lines_slow(data, report)
    if table.num_rows == 0 or not table.column_names:
        raise DataError(f"{path!r} holds no JSON objects; expected one object per line or a JSON array of objects")
    columns = _resolve_columns(table.column_names, *names, repr(path))
    report.columns = columns
    kinds = _id_kinds(first_types or table.schema, columns, repr(path))
    raw = _Collector(columns, kinds, {c: (first_types or table.schema).field(c).type for c in columns.values() if c})
    for batch in table.select([c for c in columns.values() if c is not None]).to_batches(_BATCH_ROWS):
        raw.add(batch)
        tick(batch.num_rows)
    return raw


def _json_lines_slow(data: bytes, report: ValidationReport) -> tuple[pa.Table, pa.Schema]:
    """Parse dirty JSON lines one by one: skip lines that are not objects, read values as text.

    Only used when pyarrow rejects the file (a garbage line or a value whose type
    changes mid-file). The type of each column is that of its first value.
    """
    values: dict[str, list[str | None]] = {}
    first_type: dict[str, pa.DataType] = {}
    n = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            report.rows_malformed += 1
            continue
        for key in obj.keys() - values.keys():
            values[key] = [None] * n
        for key, column in values.items():
            value = obj.get(key)
            if value is not None and key not in first_type:
                first_type[key] = (
                    pa.string() if isinstance(value, str) or isinstance(value, bool)
                    else pa.int64() if isinstance(value, int) else pa.float64()
                )
            column.append(None if value is None else str(value))
        n += 1
    table = pa.table({k: pa.array(v, type=pa.large_string()) for k, v in values.items()})
    schema = pa.schema([(k, first_type.get(k, pa.string())) for k in values])
    return table, schema


# ------------------------------------------------------------------ column coercion


class _Collector:
    """Accumulate the role columns of record batches as NumPy arrays (and Arrow strings).

    ``text_types`` maps column name → the type to coerce text to (used when a file
    is re-read as text after a type error).
    """

    def __init__(
        self,
        columns: dict[str, str | None],
        kinds: dict[str, str],
        text_types: dict[str, pa.DataType] | None = None,
    ) -> None:
        self.columns = columns
        self.kinds = kinds
        self.text_types = text_types or {}
        self.ids: dict[str, list[Any]] = {"user": [], "item": []}
        self.id_ok: dict[str, list[NDArray[np.bool_]]] = {"user": [], "item": []}
        self.rating: list[NDArray[np.float64]] = []
        self.rating_ok: list[NDArray[np.bool_]] = []
        self.time: list[NDArray[np.float64]] = []
        self.time_ok: list[NDArray[np.bool_]] = []
        self.time_numeric = False
        self.n_rows = 0

    def int_like_to_int(self, role: str) -> None:
        """Turn inferred string ids into integer ids when at least 99 % are integers.

        Garbage rows in a CSV's first block make pyarrow infer text for an integer
        id column; the non-integer ids are then dropped as invalid instead.
        """
        chunks = self.ids[role]
        matches = [pc.match_substring_regex(c, _CANONICAL_INT_RE) for c in chunks]
        n_int = sum(pc.sum(m).as_py() or 0 for m in matches)
        n_valid = sum(int(ok.sum()) for ok in self.id_ok[role])
        if n_valid == 0 or n_int < 0.99 * n_valid:
            return
        for j, (chunk, match) in enumerate(zip(chunks, matches)):
            match = pc.fill_null(match, False)
            chunks[j] = pc.cast(pc.if_else(match, chunk, "0"), pa.int64()).to_numpy(zero_copy_only=False)
            self.id_ok[role][j] &= match.to_numpy(zero_copy_only=False)
        self.kinds[role] = "int"

    def _column(self, batch: pa.RecordBatch, name: str) -> pa.Array:
        arr = batch.column(name)
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if _is_text(arr.type) and name in self.text_types and not _is_text(self.text_types[name]):
            return pc.utf8_trim_whitespace(arr)
        return arr

    def add(self, batch: pa.RecordBatch) -> None:
        self.n_rows += batch.num_rows
        for role in ("user", "item"):
            arr = self._column(batch, self.columns[role])
            if self.kinds[role] == "int":
                values, ok = _to_int(arr)
                self.ids[role].append(values)
            else:
                arr = arr.cast(pa.large_string())
                ok = _valid(arr) & (pc.utf8_length(arr.fill_null("")).to_numpy(zero_copy_only=False) > 0)
                self.ids[role].append(arr)
            self.id_ok[role].append(ok)
        if self.columns["rating"] is not None:
            values, ok = _to_float(self._column(batch, self.columns["rating"]), "rating")
            self.rating.append(values)
            self.rating_ok.append(ok)
        if self.columns["timestamp"] is not None:
            values, ok, numeric = _to_seconds(self._column(batch, self.columns["timestamp"]))
            self.time.append(values)
            self.time_ok.append(ok)
            self.time_numeric |= numeric


def _is_text(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


def _valid(arr: pa.Array) -> NDArray[np.bool_]:
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    return arr.is_valid().to_numpy(zero_copy_only=False)


def _to_int(arr: pa.Array) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    typ = arr.type
    if pa.types.is_null(typ):
        return np.zeros(len(arr), np.int64), np.zeros(len(arr), bool)
    if _is_text(typ):
        ok = pc.fill_null(pc.match_substring_regex(arr, _INT_RE), False)
        values = pc.cast(pc.if_else(ok, arr, "0"), pa.int64())
        return values.to_numpy(zero_copy_only=False), ok.to_numpy(zero_copy_only=False)
    if pa.types.is_floating(typ):
        values = arr.fill_null(0.5).to_numpy(zero_copy_only=False)
        ok = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2.0**62)
        return np.where(ok, values, 0).astype(np.int64), ok
    return arr.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False), _valid(arr)


def _to_float(arr: pa.Array, what: str) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    typ = arr.type
    if pa.types.is_null(typ):
        return np.zeros(len(arr)), np.zeros(len(arr), bool)
    if _is_text(typ):
        ok = pc.fill_null(pc.match_substring_regex(arr, _FLOAT_RE, ignore_case=True), False)
        values = pc.cast(pc.if_else(ok, arr, "0"), pa.float64())
        return values.to_numpy(zero_copy_only=False), ok.to_numpy(zero_copy_only=False)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ) or pa.types.is_decimal(typ):
        ok = _valid(arr)
        return pc.cast(arr, pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False), ok
    raise DataError(f"the {what} column has type {typ}; expected numbers")


def _to_seconds(arr: pa.Array) -> tuple[NDArray[np.float64], NDArray[np.bool_], bool]:
    """Return (epoch seconds, parsed mask, whether the values were plain numbers)."""
    typ = arr.type
    n = len(arr)
    if pa.types.is_timestamp(typ):
        unit = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[typ.unit]
        raw = pc.cast(arr, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        return raw * unit, _valid(arr), False
    if pa.types.is_date(typ):
        days = pc.cast(pc.cast(arr, pa.date32()), pa.int32()).fill_null(0).to_numpy(zero_copy_only=False)
        return days.astype(np.float64) * 86400.0, _valid(arr), False
    if not _is_text(typ):
        values, ok = _to_float(arr, "timestamp")
        return values, ok, True
    values, ok = _to_float(arr, "timestamp")
    numeric = bool(ok.any())
    iso = pc.fill_null(pc.match_substring_regex(arr, _ISO_RE), False)
    zoned = pc.and_(iso, pc.fill_null(pc.match_substring_regex(arr, _ZONE_RE), False))
    naive = pc.and_(iso, pc.invert(zoned))
    for mask, target, placeholder in (
        (naive, pa.timestamp("us"), "1970-01-01 00:00:00"),
        (zoned, pa.timestamp("us", tz="UTC"), "1970-01-01T00:00:00Z"),
    ):
        if not pc.any(mask).as_py():
            continue
        try:
            parsed = pc.cast(pc.if_else(mask, arr, placeholder), target)
        except pa.ArrowInvalid:  # e.g. a 13th month: parse format by format instead
            parsed = pc.coalesce(*(
                pc.strptime(arr, format=f, unit="us", error_is_null=True) for f in _TIME_FORMATS
            ))
            parsed = pc.if_else(mask, parsed, None)
        seconds = pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False)
        got = mask.to_numpy(zero_copy_only=False) & _valid(parsed)
        values = np.where(got, np.nan_to_num(seconds.astype(np.float64)) * 1e-6, values)
        ok = ok | got
    return values, ok, numeric and n > 0


# ------------------------------------------------------------------------- cleaning


def _encode_ints(values: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Map int64 ids to ranks in their sorted unique values: (unique, codes)."""
    if len(values) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = int(values.min()), int(values.max())
    span = hi - lo + 1
    if span <= max(2 * len(values), 1 << 20):
        shifted = values - lo
        present = np.zeros(span, dtype=bool)
        present[shifted] = True
        rank = np.cumsum(present, dtype=np.int32 if span < 2**31 else np.int64)
        return np.flatnonzero(present) + lo, (rank[shifted] - 1).astype(np.int64)
    unique, codes = np.unique(values, return_inverse=True)
    return unique, codes.astype(np.int64)


def _encode_strings(chunks: list[pa.Array], keep: NDArray[np.bool_]) -> tuple[NDArray[np.str_], NDArray[np.int64]]:
    arr = pa.concat_arrays(chunks).filter(pa.array(keep))
    encoded = pc.dictionary_encode(arr)
    dictionary = encoded.dictionary
    order = pc.array_sort_indices(dictionary).to_numpy(zero_copy_only=False)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    unique = dictionary.take(pa.array(order)).to_numpy(zero_copy_only=False).astype(str)
    return unique, codes


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


def _clean(raw: _Collector, options: _Options, report: ValidationReport, started: float) -> Interactions:
    n = raw.n_rows
    report.rows_read = n
    if n == 0:
        raise DataError(f"{report.source} has a header but no data rows; add interactions (one per line)")

    def cat(parts: list[NDArray[Any]]) -> NDArray[Any]:
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        parts.clear()
        return out

    keep = cat(raw.id_ok["user"]) & cat(raw.id_ok["item"])
    report.dropped_missing_id = n - int(keep.sum())
    values = cat(raw.rating) if raw.columns["rating"] is not None else None
    if values is None and options.feedback == "explicit":
        raise DataError(
            f"feedback='explicit' needs a rating column, and none was found among {report.columns}; "
            "pass rating_col= (CLI: --rating-col)"
        )
    if values is not None:
        ok = cat(raw.rating_ok)
        report.dropped_invalid_rating = _drop(keep, ~ok)
        report.dropped_nonfinite_rating = _drop(keep, ~np.isfinite(values))
        report.dropped_negative_rating = _drop(keep, values < 0)
        if options.feedback != "explicit":
            report.dropped_zero_rating = _drop(keep, values == 0)
    times = None
    if raw.columns["timestamp"] is not None:
        times = cat(raw.time)
        report.dropped_invalid_timestamp = _drop(keep, ~cat(raw.time_ok) | ~np.isfinite(times))
        if raw.time_numeric and keep.any():
            median = float(np.median(times[keep]))
            for threshold, scale in ((1e17, 1e-9), (1e14, 1e-6), (1e11, 1e-3)):
                if median > threshold:
                    times = times * scale
                    break
        report.dropped_out_of_range_timestamp = _drop(keep, (times < 0) | (times > time.time() + 86400.0))
    _require_rows(keep, report, "validating rows")

    # Ids → contiguous codes in sorted id order (rows already dropped are left out).
    uniques, codes = {}, {}
    for role in ("user", "item"):
        if raw.kinds[role] == "int":
            uniques[role], codes[role] = _encode_ints(cat(raw.ids[role])[keep])
        else:
            uniques[role], codes[role] = _encode_strings(raw.ids[role], keep)
            raw.ids[role].clear()
    rows, cols = codes["user"], codes["item"]
    values = values[keep] if values is not None else np.ones(len(rows))
    times = times[keep] if times is not None else None
    del keep

    if options.exclude_users:
        excluded = _codes_of(uniques["user"], options.exclude_users)
        report.excluded_users = len(excluded)
        mask = np.zeros(len(uniques["user"]), bool)
        mask[excluded] = True
        drop = mask[rows]
        report.dropped_excluded_user_rows = int(drop.sum())
        rows, cols, values, times = _subset(~drop, rows, cols, values, times)
        _require(len(rows), report, "exclude_users removed every remaining user; check the list of excluded ids")

    cap = _mad_cap(values) if options.max_value == "auto" else options.max_value
    report.max_value = None if cap is None else float(cap)
    if cap is not None:
        drop = values > cap
        report.dropped_implausible_value = int(drop.sum())
        if drop.any():
            rows, cols, values, times = _subset(~drop, rows, cols, values, times)
        _require(len(rows), report, f"max_value={options.max_value!r} (cap {cap:.4g}) dropped every row; raise max_value or pass None")

    n_users, n_items = len(uniques["user"]), len(uniques["item"])
    before = len(rows)
    rows, cols, values, times = _merge(rows, cols, values, times, n_users, n_items, options.feedback == "explicit")
    report.duplicates_merged = before - len(rows)

    counts = np.bincount(rows, minlength=n_users)
    cap = _mad_cap(counts[counts > 0].astype(np.float64)) if options.max_user_interactions == "auto" else options.max_user_interactions
    report.max_user_interactions = None if cap is None else float(cap)
    user_keep = counts > 0
    if cap is not None:
        outliers = counts > cap
        report.outlier_users = int(outliers.sum())
        report.outlier_user_interactions = int(counts[outliers].sum())
        user_keep &= ~outliers
    item_keep = np.ones(n_items, bool)
    live = user_keep[rows]
    _require(int(live.sum()), report, "max_user_interactions removed every user; raise max_user_interactions or pass None")

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
    remaining = int(live.sum())
    report.sparse_interactions_removed = len(rows) - report.outlier_user_interactions - remaining
    user_keep = np.bincount(rows[live], minlength=n_users) > 0
    item_keep = np.bincount(cols[live], minlength=n_items) > 0
    rows, cols, values, times = _subset(live, rows, cols, values, times)

    user_new = np.cumsum(user_keep) - 1
    item_new = np.cumsum(item_keep) - 1
    rows, cols = user_new[rows], item_new[cols]
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
    return Interactions(user_items, uniques["user"][user_keep], uniques["item"][item_keep], stamps, report)


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
    reasons = {
        k: v for k, v in report.to_dict().items() if k.startswith("dropped_") and v
    }
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


def _codes_of(unique: NDArray[Any], ids: Iterable[Any]) -> NDArray[np.int64]:
    """Codes of the ``ids`` present in sorted ``unique`` (absent ids are ignored)."""
    if unique.dtype.kind in "iu":
        wanted = []
        for value in ids:
            try:
                wanted.append(int(value))
            except (TypeError, ValueError):
                continue
        probe = np.asarray(wanted, dtype=np.int64)
    else:
        probe = np.asarray([str(v) for v in ids])
    if len(probe) == 0 or len(unique) == 0:
        return np.zeros(0, np.int64)
    probe = np.unique(probe)
    pos = np.minimum(np.searchsorted(unique, probe), len(unique) - 1)
    return pos[unique[pos] == probe].astype(np.int64)


def _merge(
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    values: NDArray[np.float64],
    times: NDArray[np.float64] | None,
    n_users: int,
    n_items: int,
    keep_latest: bool,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], NDArray[np.float64] | None]:
    """Merge duplicate (row, col) pairs; return arrays sorted by (row, col)."""
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
