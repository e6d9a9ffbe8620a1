"""External ids <-> contiguous internal indices: the only id encoding in Timbral.

An id map holds either exact 64-bit integers (kind ``"int"``) or strings (kind
``"str"``), never floats: an id is matched exactly or not at all. An ``"int"`` map
matches Python and NumPy integers, and strings only in their canonical decimal form
(ASCII digits, an optional leading ``-``, no leading zeros, no spaces, ``_`` or
``+``), so ``"4_2"``, ``" 42"``, ``"+42"``, ``"٤٢"`` and ``"042"`` are not user 42.
A ``"str"`` map matches strings exactly (an integer matches its decimal string), so
``"007"`` and ``"7"`` are two ids.

String ids live in a NumPy object array of Python strings (memory proportional to
their total length, never a fixed-width ``U<longest>`` array) and are saved as UTF-8
bytes plus offsets (:meth:`IdMap.to_arrays`), which need no pickle.

The length of a string id is counted in bytes of UTF-8, everywhere: an id is at most
:data:`MAX_ID_BYTES` bytes unless a caller sets another limit (the loader's
``max_id_bytes=``, the server's ``TIMBRAL_MAX_ID_LENGTH``, which may only lower it, as
the ids it accepts are later loaded with the default). :func:`check_id_text` applies
the limit to one id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from timbral.exceptions import ArtifactError, UnknownIdError, ValidationError

__all__ = [
    "INT64_MAX", "INT64_MIN", "MAX_ID_BYTES", "IdMap", "canonical_int", "check_id_text", "encodes_utf8",
    "first_overlong",
]

MAX_ID_BYTES = 256
"""Longest string id accepted by default, in bytes of UTF-8: the loader's limit, and the
most the server's ``TIMBRAL_MAX_ID_LENGTH`` may allow (the service's ids end up in
training data read with this limit)."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]{0,18}")
_SHOWN = 60  # characters of an id quoted in a message


def canonical_int(text: str) -> int | None:
    """The int64 whose canonical decimal form is ``text``, else None (never via float)."""
    if not _CANONICAL_INT.fullmatch(text):
        return None
    value = int(text)
    return value if INT64_MIN <= value <= INT64_MAX else None


def _show(value: Any) -> str:
    """``repr`` of an id, cut so a hostile 20 000-character id never floods a message."""
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(str(value))} characters)"


def _int_or_none(value: Any) -> int | None:
    """``value`` as an exact int64 for an int map, else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        value = int(value)
        return value if INT64_MIN <= value <= INT64_MAX else None
    if isinstance(value, str):
        return canonical_int(value)
    return None


def _str_or_none(value: Any) -> str | None:
    """``value`` as a string id for a str map (an integer as its decimal form), else None."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    return None


def _normalise(ids: Any, name: str) -> tuple[str, NDArray[Any]]:
    """``(kind, array)``: int64 ids, or an object array of str ids; refuses the rest."""
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        ids = ids.to_numpy(zero_copy_only=False)
    if isinstance(ids, np.ndarray):
        array = ids
    else:  # an object array: NumPy would turn [2**64 - 1, 1] into floats
        values = list(ids)
        array = np.empty(len(values), dtype=object)
        array[:] = values
        if any(isinstance(v, (list, tuple, np.ndarray)) for v in values):
            array = np.asarray(values)
    if array.ndim != 1:
        raise ValidationError(f"`{name}` must be one-dimensional ids; got shape {array.shape}")
    kind = array.dtype.kind
    if kind == "i":
        return "int", array.astype(np.int64, copy=False)
    if kind == "u":
        if array.size and int(array.max()) > INT64_MAX:  # uint64 beyond int64: exact as text
            return "str", np.array([str(v) for v in array.tolist()], dtype=object)
        return "int", array.astype(np.int64)
    if kind == "U":
        return "str", array.astype(object)
    if kind == "O":
        values = array.tolist()
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
            if all(INT64_MIN <= int(v) <= INT64_MAX for v in values):
                return "int", np.array([int(v) for v in values], dtype=np.int64).reshape(len(values))
        converted = [_str_or_none(v) for v in values]
        bad = next((j for j, v in enumerate(converted) if v is None), None)
        if bad is None:
            out = np.empty(len(converted), dtype=object)
            out[:] = converted
            return "str", out
        raise ValidationError(
            f"`{name}` must hold integer or string ids; position {bad} holds {_show(values[bad])} "
            f"({type(values[bad]).__name__}); convert ids to int or str first (never through float)"
        )
    raise ValidationError(
        f"`{name}` must hold integer or string ids; got dtype {array.dtype}. "
        "Convert ids to int or str first (never through float: large ids would merge)"
    )


def _check_strings(ids: NDArray[Any], name: str, max_bytes: int | None) -> None:
    """Refuse ids that are empty, not valid Unicode (lone surrogates) or longer than
    ``max_bytes`` bytes of UTF-8, naming the first one's position."""
    if not ids.size:
        return
    try:
        lengths = pc.binary_length(pa.array(ids, type=pa.large_string())).to_numpy(zero_copy_only=False)
    except UnicodeEncodeError:
        position = next(j for j, v in enumerate(ids) if not encodes_utf8(v))
        raise ValidationError(
            f"`{name}` id at position {position} ({_show(ids[position])}) is not valid Unicode text "
            "(a lone surrogate); ids must encode as UTF-8"
        ) from None
    if lengths.min() == 0:
        raise ValidationError(f"`{name}` holds an empty id at position {int(lengths.argmin())}; ids must not be empty")
    if max_bytes is not None and lengths.max() > max_bytes:
        position = int(np.argmax(lengths > max_bytes))
        raise ValidationError(
            f"`{name}` id at position {position} is {int(lengths[position])} bytes long ({_show(ids[position])}); "
            f"ids are at most {max_bytes} bytes"
        )


def first_overlong(column: pa.Array, max_bytes: int) -> tuple[int, int] | None:
    """``(row, bytes)`` of the longest id of an Arrow string ``column`` if it is longer than
    ``max_bytes`` bytes of UTF-8 (the first such row), else None: the column form of the
    length rule, for readers that name the row in their own terms."""
    lengths = pc.binary_length(column)
    longest = pc.max(lengths).as_py()
    if longest is None or longest <= max_bytes:
        return None
    return int(pc.index(lengths, longest).as_py()), int(longest)


def check_id_text(text: str, *, name: str, max_bytes: int = MAX_ID_BYTES) -> str:
    """``text`` if it can be a string id: non-empty, valid UTF-8, at most ``max_bytes`` bytes.

    The one-id form of the rule :meth:`IdMap.from_ids` applies to whole columns, for
    ids that arrive one at a time (request fields, URL path segments, events).

    Raises
    ------
    ValidationError
        Naming ``name``, the length received in bytes and the limit in bytes.
    """
    if not text:
        raise ValidationError(f"{name} must not be empty")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError(f"{name} {_show(text)} is not valid Unicode text (a lone surrogate); "
                              "ids must encode as UTF-8") from None
    if size > max_bytes:
        raise ValidationError(f"{name} is {size} bytes long in UTF-8 ({len(text)} characters); "
                              f"ids are at most {max_bytes} bytes")
    return text


def encodes_utf8(text: str) -> bool:
    """Whether ``text`` is valid Unicode (no lone surrogates, as ``"\\ud800"`` in JSON gives)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class IdMap:
    """The only id encoding: external ids (exact int64, or str) <-> contiguous internal indices.

    Build one with :meth:`from_ids` (ids in index order), :meth:`encode` (raw values
    of a column: distinct sorted ids plus a code per value) or :meth:`from_arrays`
    (a saved map). Instances are immutable and may be shared between threads.

    Attributes
    ----------
    name : str
        ``"user_id"`` / ``"item_id"``, used in messages.
    kind : {"int", "str"}
        Exact int64 ids, or string ids.
    """

    __slots__ = ("_ids", "_order", "_sorted", "kind", "name")

    def __init__(self, ids: NDArray[Any], kind: str, name: str, *, is_sorted: bool = False) -> None:
        """Wrap already-normalised unique ids (use the class methods instead)."""
        self._ids = ids
        self.kind = kind
        self.name = name
        self._order: NDArray[np.intp] | None = None
        self._sorted = ids
        if not is_sorted and ids.size > 1 and not bool(np.all(ids[1:] > ids[:-1])):
            self._order = np.argsort(ids, kind="stable")
            self._sorted = ids[self._order]
        if self._sorted.size > 1:
            same = self._sorted[1:] == self._sorted[:-1]
            if same.any():
                duplicated = self._sorted[1:][same][:3].tolist()
                raise ValidationError(
                    f"`{name}s` must be unique; {', '.join(_show(v) for v in duplicated)} appear more than once"
                )

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_ids(cls, ids: Any, *, name: str, max_bytes: int | None = MAX_ID_BYTES) -> IdMap:
        """A map whose internal index ``j`` is ``ids[j]``.

        Parameters
        ----------
        ids : array-like of int or str, shape (n,)
            Unique external ids in index order. Integers that fit int64 stay integers;
            uint64 ids beyond int64 become their decimal strings. Floats are refused.
        name : str
            ``"user_id"`` or ``"item_id"``, used in messages.
        max_bytes : int or None, default MAX_ID_BYTES
            Longest string id accepted, in bytes of UTF-8 (None: no limit).

        Raises
        ------
        ValidationError
            Duplicate, empty, over-long or non-id values (the message names one).
        """
        kind, array = _normalise(ids, name)
        if kind == "str":
            _check_strings(array, name, max_bytes)
        return cls(array, kind, name)

    @classmethod
    def encode(cls, values: Any, *, name: str, max_bytes: int | None = MAX_ID_BYTES) -> tuple[IdMap, NDArray[np.int64]]:
        """Distinct ids of ``values`` in sorted order, and the int64 code of each value.

        ``values`` is an int64 array, a pyarrow string array, or anything
        :meth:`from_ids` takes; nulls are refused (drop missing ids first).
        """
        if isinstance(values, (pa.Array, pa.ChunkedArray)) and (
            pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
        ):
            return cls._encode_arrow_strings(values, name, max_bytes)
        kind, array = _normalise(values, name)
        if kind == "int":
            unique, codes = _encode_ints(array)
        else:
            _check_strings(array, name, max_bytes)
            unique, inverse = np.unique(array, return_inverse=True)
            codes = inverse.astype(np.int64).reshape(-1)
        return cls(unique, kind, name, is_sorted=True), codes

    @classmethod
    def _encode_arrow_strings(
        cls, values: pa.Array | pa.ChunkedArray, name: str, max_bytes: int | None
    ) -> tuple[IdMap, NDArray[np.int64]]:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if values.null_count:
            raise ValidationError(f"`{name}` holds {values.null_count} missing ids; drop them before encoding")
        encoded = pc.dictionary_encode(values)
        dictionary = encoded.dictionary
        order = pc.array_sort_indices(dictionary).to_numpy(zero_copy_only=False)  # UTF-8 byte order = code points
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]
        unique = dictionary.take(pa.array(order)).to_numpy(zero_copy_only=False)
        _check_strings(unique, name, max_bytes)
        return cls(unique, "str", name, is_sorted=True), codes

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, NDArray[Any]], prefix: str, *, name: str) -> IdMap:
        """The map saved by :meth:`to_arrays` (also reads fixed-width ``U`` id arrays of older files).

        Raises
        ------
        ArtifactError
            The arrays are missing, malformed, not UTF-8, or hold duplicate ids.
        """
        try:
            if f"{prefix}_ids" in arrays:
                ids = np.asarray(arrays[f"{prefix}_ids"])
                if ids.dtype.kind not in "iU" or ids.ndim != 1:
                    raise ValidationError(
                        f"{prefix}_ids has dtype {ids.dtype} and shape {ids.shape}; expected 1-d int64"
                    )
                return cls.from_ids(ids, name=name, max_bytes=None)
            offsets = np.asarray(arrays[f"{prefix}_offsets"])
            data = np.asarray(arrays[f"{prefix}_bytes"])
            if offsets.dtype != np.int64 or data.dtype != np.uint8 or offsets.ndim != 1 or data.ndim != 1:
                raise ValidationError(
                    f"{prefix}_offsets/{prefix}_bytes have dtypes {offsets.dtype}/{data.dtype}; expected int64/uint8"
                )
            if not offsets.size or offsets[0] != 0 or offsets[-1] != data.size or np.any(np.diff(offsets) < 0):
                raise ValidationError(f"{prefix}_offsets do not delimit the {data.size} bytes of {prefix}_bytes")
            strings = pa.LargeStringArray.from_buffers(
                offsets.size - 1, pa.py_buffer(np.ascontiguousarray(offsets)), pa.py_buffer(np.ascontiguousarray(data))
            )
            strings.validate(full=True)  # UTF-8 and bounds
            return cls.from_ids(strings.to_numpy(zero_copy_only=False).astype(object), name=name, max_bytes=None)
        except KeyError as exc:
            raise ArtifactError(f"the {name} map is missing array {exc}; retrain or restore the model") from None
        except (ValidationError, pa.ArrowInvalid) as exc:
            raise ArtifactError(f"the saved {name} map is invalid ({exc}); retrain or restore the model") from None

    # -- use ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def __repr__(self) -> str:
        return f"IdMap(name={self.name!r}, kind={self.kind!r}, n={len(self)})"

    @property
    def ids(self) -> NDArray[Any]:
        """External ids in index order: int64, or an object array of str."""
        return self._ids

    def select(self, mask: NDArray[np.bool_]) -> IdMap:
        """The map of the ids where ``mask`` is true, in their order (indices renumbered)."""
        return IdMap(self._ids[mask], self.kind, self.name, is_sorted=self._order is None)

    def lookup(self, values: Iterable[Any]) -> NDArray[np.int64]:
        """Internal index of each value, ``-1`` where unknown (exact match only, see the module)."""
        if not isinstance(values, (list, tuple, np.ndarray)):
            values = list(values)
        if isinstance(values, np.ndarray) and values.ndim != 1:
            values = values.reshape(-1)
        n = len(values)
        if not self._sorted.size or not n:
            return np.full(n, -1, dtype=np.int64)
        keys, ok = self._keys(values)
        # Methods and take(mode="clip") rather than np.searchsorted, np.minimum and
        # fancy indexing: the service looks up one id per request, where NumPy's
        # function dispatch costs more than the search.
        pos = self._sorted.searchsorted(keys)
        found = self._sorted.take(pos, mode="clip") == keys
        if ok is not None:
            found &= ok
        where = pos if self._order is None else self._order.take(pos, mode="clip")
        if not found.all():
            where[~found] = -1
        return where.astype(np.int64, copy=False)

    def _keys(
        self, values: list[Any] | tuple[Any, ...] | NDArray[Any]
    ) -> tuple[NDArray[Any], NDArray[np.bool_] | None]:
        """``values`` as keys of ``_sorted``'s dtype, and which of them can be ids (None: all)."""
        n = len(values)
        if self.kind == "int":
            if isinstance(values, np.ndarray) and values.dtype.kind == "i":
                return values.astype(np.int64, copy=False), None
            # The service's case: Python ints (ids parsed from a URL). One C-level
            # conversion instead of one call per id; an int beyond int64 overflows and
            # takes the general path, which maps it to -1.
            if not isinstance(values, np.ndarray) and all(type(v) is int for v in values):
                try:
                    return np.array(values, dtype=np.int64), None
                except OverflowError:
                    pass
            converted = [_int_or_none(v) for v in values]
            ok = np.fromiter((v is not None for v in converted), dtype=bool, count=n)
            return np.fromiter((0 if v is None else v for v in converted), dtype=np.int64, count=n), ok
        converted = [_str_or_none(v) for v in values]
        ok = np.fromiter((v is not None for v in converted), dtype=bool, count=n)
        keys = np.empty(n, dtype=object)
        keys[:] = ["" if v is None else v for v in converted]
        return keys, ok

    def index(self, value: Any) -> int:
        """Internal index of one id; :class:`UnknownIdError` if the map does not hold it."""
        found = int(self.lookup([value])[0])
        if found < 0:
            raise UnknownIdError(f"{self.name} {_show(value)} is not known ({len(self)} {self.name}s)")
        return found

    def external(self, indices: Any) -> Any:
        """External id(s) of internal index or indices: a Python int/str, or a list of them."""
        found = self._ids[indices]
        return found.tolist() if isinstance(found, (np.ndarray, np.generic)) else found

    def parse(self, text: str) -> int | str | None:
        """An id received as text (URL path segment, CLI argument) in this map's kind.

        None if it cannot be an id of this map: for int ids anything but the canonical
        decimal form of an int64 (``"4_2"``, ``" 42"``, ``"+42"``, ``"٤٢"``, ``"042"``);
        for string ids the empty string.
        """
        if self.kind == "int":
            return canonical_int(text)
        return text or None

    def to_arrays(self, prefix: str) -> dict[str, NDArray[Any]]:
        """npz-safe arrays (no object dtype, no pickle): ``{prefix}_ids`` (int64), or
        ``{prefix}_offsets`` (int64, n + 1) and ``{prefix}_bytes`` (uint8 UTF-8)."""
        if self.kind == "int":
            return {f"{prefix}_ids": self._ids}
        strings = pa.array(self._ids, type=pa.large_string())
        _, offsets, data = strings.buffers()
        offsets = np.frombuffer(offsets, dtype=np.int64, count=len(strings) + 1).copy()
        end = int(offsets[-1])
        data = np.frombuffer(data, dtype=np.uint8, count=end).copy() if data is not None else np.zeros(0, np.uint8)
        return {f"{prefix}_offsets": offsets, f"{prefix}_bytes": data}


def _encode_ints(values: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """int64 ids -> (sorted unique ids, rank of each value among them)."""
    if len(values) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = int(values.min()), int(values.max())
    span = hi - lo + 1  # a Python int: exact even across the whole int64 range
    if span <= max(2 * len(values), 1 << 20):
        shifted = values - lo
        present = np.zeros(span, dtype=bool)
        present[shifted] = True
        rank = np.cumsum(present, dtype=np.int32 if span < 2**31 else np.int64)
        return np.flatnonzero(present) + lo, (rank[shifted] - 1).astype(np.int64)
    unique, codes = np.unique(values, return_inverse=True)
    return unique, codes.astype(np.int64).reshape(-1)
