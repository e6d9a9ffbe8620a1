"""Delimited text (CSV, TSV, ``::``-separated MovieLens files), streamed with pyarrow.

The first line is the header; its names are stripped (``user, item, rating`` works),
and the separator is sniffed from the first lines when not given: the candidate
whose count on the header line most data lines share, so a few ragged rows do not
hide it. Rows with the wrong number of fields are skipped and counted as malformed.

``::``-separated files (MovieLens 1M and 10M) are read too. Their ``ratings.dat``
has no header: a first line of numbers there is taken as data, with the columns
``user_id, item_id, rating[, timestamp]``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv

from timbral.exceptions import DataError, ValidationError
from timbral.io.coerce import RawColumns
from timbral.io.columns import resolve_columns
from timbral.io.files import head_bytes

__all__ = ["read_csv", "sniff_separator"]

SEPARATORS = (",", "\t", ";", "|", " ")
BLOCK_BYTES = 8 << 20
_DOUBLE_COLON = "::"
_UNIT_SEPARATOR = b"\x1f"  # what "::" becomes for the single-character CSV parser
_MOVIELENS_COLUMNS = {3: ["user_id", "item_id", "rating"], 4: ["user_id", "item_id", "rating", "timestamp"]}


def _sample_lines(head: bytes) -> list[str]:
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    lines = [ln for ln in text.splitlines()[:41] if ln.strip()]
    if len(lines) > 1 and len(head) >= (1 << 16):
        lines = lines[:-1]  # the last line may be cut
    return [re.sub(r'"[^"]*"', "x", ln) for ln in lines]


def sniff_separator(path: str, head: bytes) -> str:
    """The separator of a text file from its first lines (``"::"`` included).

    For each candidate counted on the header line, the share of data lines with the
    same count decides; ties go to the earlier candidate of ``, \\t ; | space``.
    """
    lines = _sample_lines(head)
    if not lines:
        raise DataError(f"{path!r} has no text lines; it needs a header line and at least one row")
    header, rows = lines[0], lines[1:] or lines[:1]
    if header.count(_DOUBLE_COLON) and _share(rows, _DOUBLE_COLON, header.count(_DOUBLE_COLON)) >= 0.5:
        return _DOUBLE_COLON
    best, best_share = None, 0.5
    for cand in SEPARATORS:
        count = header.count(cand)
        share = _share(rows, cand, count) if count else 0.0
        if share > best_share:
            best, best_share = cand, share
    if best is None:
        raise DataError(
            f"cannot detect the field separator of {path!r} from its first lines "
            f"(tried {', '.join(repr(s) for s in (*SEPARATORS, _DOUBLE_COLON))}); pass sep= (CLI: --sep)"
        )
    return best


def _share(rows: list[str], sep: str, count: int) -> float:
    return sum(row.count(sep) == count for row in rows) / len(rows)


class _DoubleColonStream(io.RawIOBase):
    """A byte stream with every ``::`` replaced by one unit-separator byte."""

    def __init__(self, source: Any) -> None:
        self._source = source
        self._pending = b""
        self._out = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while len(self._out) < len(buffer):
            block = self._source.read(1 << 20)
            if not block:
                self._out += self._pending.replace(b"::", _UNIT_SEPARATOR)
                self._pending = b""
                break
            data = self._pending + block
            keep = len(data) - len(data.rstrip(b":"))  # a "::" may straddle two blocks
            self._pending = data[len(data) - keep:]
            self._out += data[: len(data) - keep].replace(b"::", _UNIT_SEPARATOR)
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._source.close()
        super().close()


def read_csv(
    path: str,
    compression: str | None,
    sep: str | None,
    names: tuple[str | None, ...],
    tick: Callable[[int], None],
    max_id_bytes: int,
) -> tuple[RawColumns, dict[str, str | None], int]:
    """Stream a delimited text file into :class:`RawColumns`; return them, the columns and the malformed row count."""
    head = head_bytes(path, compression)
    if sep is None:
        sep = sniff_separator(path, head)
    elif len(sep) != 1 and sep != _DOUBLE_COLON:
        raise ValidationError(f"sep must be a single character or '::', got {sep!r}")
    first = head.decode("utf-8", errors="replace").lstrip("\ufeff").splitlines()[0]
    double_colon = sep == _DOUBLE_COLON
    fields = first.split(sep) if double_colon else next(csv.reader([first], delimiter=sep), [])
    header = [name.strip() for name in fields]
    skip = 1
    if double_colon and len(header) in _MOVIELENS_COLUMNS and all(re.fullmatch(r"-?\d+(\.\d+)?", h) for h in header):
        header, skip = _MOVIELENS_COLUMNS[len(header)], 0
    if len(set(header)) != len(header) or not all(header):
        raise DataError(
            f"the header line of {path!r} has empty or repeated column names ({', '.join(map(repr, header))}); "
            "give every column a distinct name"
        )
    columns = resolve_columns(header, *names, repr(path))
    include = [c for c in columns.values() if c is not None]
    ids = {columns["user"]: pa.large_string(), columns["item"]: pa.large_string()}  # exact text, typed later
    malformed = [0]

    def skip_row(row: Any) -> str:
        malformed[0] += 1
        return "skip"

    def open_reader(column_types: dict[str, pa.DataType]) -> pcsv.CSVStreamingReader:
        malformed[0] = 0
        stream = pa.input_stream(path, compression=compression)
        source = io.BufferedReader(_DoubleColonStream(stream), 1 << 20) if double_colon else stream
        return pcsv.open_csv(
            source,
            read_options=pcsv.ReadOptions(use_threads=True, block_size=BLOCK_BYTES, column_names=header,
                                          skip_rows=skip),
            parse_options=pcsv.ParseOptions(delimiter="\x1f" if double_colon else sep, invalid_row_handler=skip_row,
                                            quote_char=False if double_colon else '"'),
            convert_options=pcsv.ConvertOptions(include_columns=include, column_types=column_types,
                                                strings_can_be_null=True),
        )

    def read(column_types: dict[str, pa.DataType]) -> RawColumns:
        raw = RawColumns(columns, infer_ids=True, trim=True, max_id_bytes=max_id_bytes)
        for batch in open_reader(column_types):
            raw.add(batch)
            tick(batch.num_rows)
        return raw

    try:
        raw = read(ids)
    except pa.ArrowInvalid:
        # A rating or timestamp later in the file does not fit the type inferred from
        # the first block: read every column as text and coerce it, dropping what fails.
        raw = read({name: pa.large_string() for name in include})
    return raw, columns, malformed[0]
