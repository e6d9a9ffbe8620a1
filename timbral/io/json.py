"""JSON lines and JSON arrays of flat objects, streamed.

JSON lines go through pyarrow's multi-threaded reader when it can type the id
columns exactly (int64 or string); otherwise (a garbage line, a type changing
mid-file, an integer beyond int64 that pyarrow would read as a float) the file is
parsed object by object with :mod:`json`, which keeps every integer exact. A JSON
array is always parsed that way, one element at a time from a buffered stream, so
values containing ``},{`` or newlines are read as they are. Elements that are not
objects are counted as malformed rows.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.json as pjson

from timbral.exceptions import DataError
from timbral.ids import INT64_MAX, INT64_MIN, encodes_utf8
from timbral.io.coerce import RawColumns, is_text
from timbral.io.columns import resolve_columns

__all__ = ["read_json"]

BATCH_ROWS = 1 << 16
_READ_BYTES = 1 << 20
_MALFORMED = object()  # a line that is not JSON


def read_json(
    path: str,
    fmt: str,
    compression: str | None,
    names: tuple[str | None, ...],
    tick: Callable[[int], None],
    max_id_bytes: int,
) -> tuple[RawColumns, dict[str, str | None], int]:
    """Stream JSON lines or a JSON array into :class:`RawColumns`; return them, the columns and the malformed count."""
    with pa.input_stream(path, compression=compression) as stream:
        is_array = fmt == "json" and _first_char(stream) == "["
    if not is_array:
        fast = _read_lines_with_arrow(path, compression, names, tick, max_id_bytes)
        if fast is not None:
            return fast
    with pa.input_stream(path, compression=compression) as stream:
        objects = _array_elements(stream, path) if is_array else _lines(stream)
        return _read_objects(objects, path, names, tick, max_id_bytes)


def _first_char(stream: Any) -> str:
    head = stream.read(4096).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    return head[:1]


def _read_lines_with_arrow(
    path: str, compression: str | None, names: tuple[str | None, ...], tick: Callable[[int], None], max_id_bytes: int
) -> tuple[RawColumns, dict[str, str | None], int] | None:
    """pyarrow's reader when its types are exact for the ids, else None."""
    try:
        with pa.input_stream(path, compression=compression) as stream:
            table = pjson.read_json(stream, read_options=pjson.ReadOptions(use_threads=True))
    except pa.ArrowInvalid:
        return None
    if table.num_rows == 0 or not table.column_names:
        raise DataError(f"{path!r} holds no JSON objects; expected one object per line or a JSON array of objects")
    columns = resolve_columns(table.column_names, *names, repr(path))
    for role in ("user", "item"):
        typ = table.schema.field(columns[role]).type
        if not (pa.types.is_integer(typ) or is_text(typ) or pa.types.is_null(typ)):
            return None
    raw = RawColumns(columns, max_id_bytes=max_id_bytes)
    for batch in table.select([c for c in columns.values() if c is not None]).to_batches(1 << 20):
        raw.add(batch)
        tick(batch.num_rows)
    return raw, columns, 0


def _lines(stream: Any) -> Iterator[Any]:
    """Each non-blank line parsed as JSON (``_MALFORMED`` when it is not)."""
    tail = b""
    while True:
        block = stream.read(_READ_BYTES)
        lines = (tail + block).split(b"\n")
        tail = lines.pop() if block else b""
        for line in lines:
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    yield _MALFORMED
        if not block:
            return


def _array_elements(stream: Any, path: str) -> Iterator[Any]:
    """The elements of a top-level JSON array, decoded one at a time from the stream."""
    decoder = json.JSONDecoder()
    text = codecs.getincrementaldecoder("utf-8")("replace")
    buffer, pos, eof = "", 0, False

    def more() -> bool:
        nonlocal buffer, pos, eof
        if eof:
            return False
        block = stream.read(_READ_BYTES)
        eof = not block
        buffer = buffer[pos:] + text.decode(block, final=eof)
        pos = 0
        return True

    def skip_space() -> str:
        nonlocal pos
        while True:
            while pos < len(buffer) and buffer[pos] in " \t\r\n\ufeff":
                pos += 1
            if pos < len(buffer) or not more():
                return buffer[pos : pos + 1]

    def fail(what: str) -> DataError:
        return DataError(f"{path!r} is not a valid JSON array: {what}; is the file truncated or damaged?")

    if skip_space() != "[":
        raise fail("it does not start with '['")
    pos += 1
    if skip_space() == "]":
        return
    while True:
        skip_space()
        while True:
            try:
                value, end = decoder.raw_decode(buffer, pos)
            except json.JSONDecodeError as exc:
                if more():
                    continue
                raise fail(f"{exc.msg} near character {exc.pos}") from None
            if end == len(buffer) and more():  # a number may continue in the next block
                continue
            break
        pos = end
        yield value
        sep = skip_space()
        pos += 1
        if sep == "]":
            return
        if sep != ",":
            raise fail(f"expected ',' or ']' after an element, found {sep or 'the end of the file'!r}")


def _read_objects(
    objects: Iterator[Any], path: str, names: tuple[str | None, ...], tick: Callable[[int], None], max_id_bytes: int
) -> tuple[RawColumns, dict[str, str | None], int]:
    raw: RawColumns | None = None
    columns: dict[str, str | None] = {}
    malformed = 0
    batch: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal raw, columns
        if raw is None:
            keys = list(dict.fromkeys(key for obj in batch for key in obj))
            columns = resolve_columns(keys, *names, repr(path))
            raw = RawColumns(columns, max_id_bytes=max_id_bytes)
        wanted = [c for c in columns.values() if c is not None]
        raw.add(pa.record_batch([_to_arrow([obj.get(c) for obj in batch]) for c in wanted], names=wanted))
        tick(len(batch))
        batch.clear()

    for obj in objects:
        if not isinstance(obj, dict):
            malformed += 1
            continue
        batch.append(obj)
        if len(batch) >= BATCH_ROWS:
            flush()
    if batch:
        flush()
    if raw is None:
        raise DataError(f"{path!r} holds no JSON objects; expected one object per line or a JSON array of objects")
    return raw, columns, malformed


def _to_arrow(values: list[Any]) -> pa.Array:
    """A column of parsed JSON values: int64 when every value is an int64, float64 for
    numbers, else text (integers as their exact decimal form; other types and strings
    that are not valid Unicode as missing)."""
    present = [v for v in values if v is not None]
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in present)
    if ints and all(INT64_MIN <= v <= INT64_MAX for v in present):
        return pa.array(values, pa.int64())
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)
    if numbers and not ints and all(isinstance(v, float) or abs(v) <= 2**53 for v in present):
        return pa.array(values, pa.float64())
    text = [v if isinstance(v, str) else str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
            for v in values]
    try:
        return pa.array(text, pa.large_string())
    except UnicodeEncodeError:  # "\ud800" escapes decode to lone surrogates: not text, so missing
        return pa.array([v if v is None or encodes_utf8(v) else None for v in text], pa.large_string())
