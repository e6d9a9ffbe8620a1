"""Record batches -> NumPy columns: exact ids, float ratings, epoch-second timestamps.

Nothing here drops a row: each column comes with a mask of the values that parsed,
and :mod:`timbral.cleaning` counts and drops the rest. Ids are never converted
through float (:mod:`timbral.ids`): an id chunk is int64 or text, and a column's kind
is settled once all of it has been read (:meth:`RawColumns.ids`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from timbral.exceptions import DataError
from timbral.ids import INT64_MAX, MAX_ID_BYTES, first_overlong

__all__ = ["RawColumns", "to_float", "to_seconds"]

_CANONICAL_INT_RE = r"^(0|-?[1-9][0-9]{0,18})$"  # an int64's one decimal form (range checked apart)
_INTEGER_LIKE_RE = r"^[-+]?[0-9]+$"
_FLOAT_RE = r"^[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|nan|inf|infinity)$"
_ISO_RE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?$"
_ZONE_RE = r"(Z|[+-]\d{2}:?\d{2})$"
_CAST_CHUNK = 256  # a value Arrow cannot parse costs its chunk of 256 one-value casts, not the batch
_FLOAT_EXACT = 2.0**53  # every integer up to here has one float64
_GARBAGE_SHARE = 0.01  # an inferred text id column is int when at most 1 % is non-numeric garbage


def is_text(typ: pa.DataType) -> bool:
    """Whether ``typ`` is an Arrow string type."""
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


def valid(arr: pa.Array) -> NDArray[np.bool_]:
    """Mask of the non-null values of ``arr``."""
    if arr.null_count == 0:
        return np.ones(len(arr), dtype=bool)
    return arr.is_valid().to_numpy(zero_copy_only=False)


class RawColumns:
    """The role columns of a stream of record batches, as NumPy arrays and Arrow text.

    Parameters
    ----------
    columns : dict
        Role -> column name (rating and timestamp may be None).
    infer_ids : bool
        The source has no types (CSV): an id column that is all canonical int64
        text, bar at most 1 % non-numeric garbage, is read as integers. Typed
        sources keep their string columns as strings.
    trim : bool
        Strip surrounding whitespace from text values (CSV fields such as ``1, 2, 3``).
    max_id_bytes : int
        Longest id accepted; a longer one raises :class:`DataError` naming its row.
    """

    def __init__(self, columns: dict[str, str | None], *, infer_ids: bool = False, trim: bool = False,
                 max_id_bytes: int = MAX_ID_BYTES) -> None:
        self.columns = columns
        self.infer_ids = infer_ids
        self.trim = trim
        self.max_id_bytes = max_id_bytes
        self.id_chunks: dict[str, list[pa.Array]] = {"user": [], "item": []}
        self.rating: list[NDArray[np.float64]] = []
        self.rating_ok: list[NDArray[np.bool_]] = []
        self.time: list[NDArray[np.float64]] = []
        self.time_ok: list[NDArray[np.bool_]] = []
        self.time_numeric = False
        self.n_rows = 0

    def _column(self, batch: pa.RecordBatch, name: str, trim: bool = True) -> pa.Array:
        arr = batch.column(name)
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if trim and self.trim and is_text(arr.type):
            arr = pc.utf8_trim_whitespace(arr)
        return arr

    def add(self, batch: pa.RecordBatch) -> None:
        """Convert one batch and append it."""
        for role in ("user", "item"):
            name = self.columns[role]
            chunk = _id_chunk(self._column(batch, name, trim=False), f"{role} column {name!r}")  # trimmed in ids()
            if is_text(chunk.type) and len(chunk):
                overlong = first_overlong(chunk, self.max_id_bytes)
                if overlong is not None:
                    row, longest = overlong
                    raise DataError(
                        f"the {role} id in data row {self.n_rows + row + 1:,} is {longest:,} bytes long; "
                        f"ids are at most {self.max_id_bytes} bytes: fix or drop that row, "
                        "or pass a larger max_id_bytes="
                    )
                if self.infer_ids:  # int64 now if canonical: exact, and a third of the memory of text
                    ints = _all_canonical_ints(chunk)
                    chunk = chunk if ints is None else ints
            self.id_chunks[role].append(chunk)
        if self.columns["rating"] is not None:
            values, ok = to_float(self._column(batch, self.columns["rating"]), "rating")
            self.rating.append(values)
            self.rating_ok.append(ok)
        if self.columns["timestamp"] is not None:
            values, ok, numeric = to_seconds(self._column(batch, self.columns["timestamp"]))
            self.time.append(values)
            self.time_ok.append(ok)
            self.time_numeric |= numeric
        self.n_rows += batch.num_rows

    def ids(self, role: str) -> tuple[NDArray[np.int64] | pa.Array, NDArray[np.bool_]]:
        """All of a role's ids, as int64 or Arrow text, and the mask of present ids.

        Consumes the chunks. Text ids are exact strings; int ids fit int64 exactly.
        A text column holding an integer that is not an int64 in canonical form
        (``007``, ``+7``, ``2**63``) stays text, so ``"007"`` and ``"7"`` never merge.
        """
        chunks, self.id_chunks[role] = self.id_chunks[role], []
        if all(pa.types.is_int64(c.type) for c in chunks):
            return _int_numpy(pa.chunked_array(chunks, pa.int64()).combine_chunks())
        # Int chunks of a text source were canonical text, so casting them back is exact.
        text = pa.chunked_array([c.cast(pa.large_string()) for c in chunks], pa.large_string()).combine_chunks()
        if self.trim:
            text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.large_string()), pc.utf8_trim_whitespace(text))
        ok = valid(text)
        if self.infer_ids:
            canonical = _canonical_ints(text)
            n_valid, n_canonical = int(ok.sum()), int(canonical.sum())
            integer_like = pc.fill_null(pc.match_substring_regex(text, _INTEGER_LIKE_RE), False).to_numpy(
                zero_copy_only=False)
            exact = not (integer_like & ~canonical).any()
            if n_valid and exact and n_canonical >= (1 - _GARBAGE_SHARE) * n_valid:
                values = pc.cast(pc.if_else(pa.array(canonical), text, "0"), pa.int64())
                return values.to_numpy(zero_copy_only=False), canonical
        return text, ok


def _int_numpy(ints: pa.Array) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
    """int64 values (0 where null) and the mask of present ones."""
    filled = ints.fill_null(0) if ints.null_count else ints
    return filled.to_numpy(zero_copy_only=False), valid(ints)


def _all_canonical_ints(text: pa.Array) -> pa.Array | None:
    """``text`` as int64 when every value is an int64 in canonical form, else None.

    The fast path of a clean integer column: Arrow's cast refuses signs, spaces,
    ``_``, non-ASCII digits and overflow, so only leading zeros remain to check.
    """
    try:
        ints = pc.cast(text, pa.int64())
    except pa.ArrowInvalid:
        return None
    _, offsets, data = text.buffers()
    if data is None:
        return ints
    starts = np.frombuffer(offsets, np.int64, count=len(text) + 1)[text.offset:text.offset + len(text) + 1]
    chars = np.frombuffer(data, np.uint8)
    lengths = np.diff(starts)
    first = chars[np.minimum(starts[:-1], chars.size - 1)]
    second = chars[np.minimum(starts[:-1] + 1, chars.size - 1)]
    padded = (lengths > 1) & ((first == ord("0")) | ((first == ord("-")) & (second == ord("0"))))
    return None if padded.any() else ints


def _canonical_ints(text: pa.Array) -> NDArray[np.bool_]:
    """Mask of the text values that are an int64 in canonical decimal form."""
    match = pc.fill_null(pc.match_substring_regex(text, _CANONICAL_INT_RE), False).to_numpy(zero_copy_only=False)
    lengths = pc.fill_null(pc.utf8_length(text), 0).to_numpy(zero_copy_only=False)
    for j in np.flatnonzero(match & (lengths >= 19)).tolist():  # the few that may overflow
        value = int(text[j].as_py())
        match[j] = -(2**63) <= value <= INT64_MAX
    return match


def _id_chunk(arr: pa.Array, what: str) -> pa.Array:
    """One batch of ids as int64 or large_string, missing ids as nulls (never via float)."""
    typ = arr.type
    if pa.types.is_null(typ):
        return pa.nulls(len(arr), pa.int64())
    if is_text(typ):
        arr = arr.cast(pa.large_string())
        if len(arr) and pc.min(pc.binary_length(arr)).as_py() == 0:  # an empty id is a missing one
            arr = pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.large_string()), arr)
        return arr
    if pa.types.is_unsigned_integer(typ):
        biggest = pc.max(arr).as_py()
        return arr.cast(pa.large_string() if biggest is not None and biggest > INT64_MAX else pa.int64())
    if pa.types.is_integer(typ):
        return arr.cast(pa.int64())
    if pa.types.is_floating(typ):  # e.g. pandas int ids with a NaN: exact only below 2**53
        values = arr.cast(pa.float64()).fill_null(0.5).to_numpy(zero_copy_only=False)
        integral = np.isfinite(values) & (values == np.round(values))
        if (integral & (np.abs(values) > _FLOAT_EXACT)).any():
            raise DataError(
                f"the {what} holds floating-point ids above 2**53, which cannot be told apart; "
                "store the ids as integers or strings"
            )
        return pa.array(np.where(integral, values, 0).astype(np.int64), mask=~integral)
    raise DataError(f"the {what} has type {typ}; ids must be integers or strings")


def to_float(arr: pa.Array, what: str) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Values as float64 and the mask of those that parsed (text is parsed, nulls fail)."""
    typ = arr.type
    if pa.types.is_dictionary(typ):
        arr, typ = arr.dictionary_decode(), typ.value_type
    if pa.types.is_null(typ):
        return np.zeros(len(arr)), np.zeros(len(arr), bool)
    if is_text(typ):
        ok = pc.fill_null(pc.match_substring_regex(arr, _FLOAT_RE, ignore_case=True), False)
        values = pc.cast(pc.if_else(ok, arr, "0"), pa.float64())
        return values.to_numpy(zero_copy_only=False), ok.to_numpy(zero_copy_only=False)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ) or pa.types.is_decimal(typ):
        ok = valid(arr)
        return pc.cast(arr, pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False), ok
    raise DataError(f"the {what} column has type {typ}; expected numbers")


def _cast_or_null(text: pa.Array, target: pa.DataType) -> pa.Array:
    """``text`` cast to ``target`` by Arrow's own parser, null where a value cannot be
    parsed (a 13th month, hour 25).

    One bad value makes Arrow refuse a whole cast; only the chunks holding one are
    parsed value by value, so every other value, zoned or fractional, keeps the fast
    path's exact reading.
    """
    try:
        return pc.cast(text, target)
    except pa.ArrowInvalid:
        pass
    pieces = []
    for start in range(0, len(text), _CAST_CHUNK):
        chunk = text[start:start + _CAST_CHUNK]
        try:
            pieces.append(pc.cast(chunk, target))
        except pa.ArrowInvalid:
            pieces.append(pa.array([_cast_one(value, target) for value in chunk], type=target))
    return pa.concat_arrays(pieces)


def _cast_one(value: pa.Scalar, target: pa.DataType) -> Any:
    try:
        return pc.cast(value, target).as_py()
    except pa.ArrowInvalid:
        return None


def to_seconds(arr: pa.Array) -> tuple[NDArray[np.float64], NDArray[np.bool_], bool]:
    """Return (epoch seconds, parsed mask, whether the values were plain numbers)."""
    typ = arr.type
    n = len(arr)
    if pa.types.is_timestamp(typ):
        unit = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[typ.unit]
        raw = pc.cast(arr, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        return raw * unit, valid(arr), False
    if pa.types.is_date(typ):
        days = pc.cast(pc.cast(arr, pa.date32()), pa.int32()).fill_null(0).to_numpy(zero_copy_only=False)
        return days.astype(np.float64) * 86400.0, valid(arr), False
    values, ok = to_float(arr, "timestamp")
    if not is_text(typ):
        return values, ok, True
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
        parsed = _cast_or_null(pc.if_else(mask, arr, placeholder), target)
        seconds = pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False)
        got = mask.to_numpy(zero_copy_only=False) & valid(parsed)
        values = np.where(got, np.nan_to_num(seconds.astype(np.float64)) * 1e-6, values)
        ok = ok | got
    return values, ok, numeric and n > 0


