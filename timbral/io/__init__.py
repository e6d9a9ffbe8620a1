"""Readers of interaction files: CSV/TSV/``::`` text, Parquet, JSON lines and JSON arrays.

Each reader streams its file in record batches into :class:`~timbral.io.coerce.RawColumns`
(ids exact, ratings as float64, timestamps as epoch seconds, each with a mask of what
parsed); nothing is dropped here. :func:`read_columns` picks the reader and turns every
failure of the file itself (truncated ``.gz``, damaged Parquet) into a
:class:`~timbral.exceptions.DataError` that names the path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa

from timbral.exceptions import DataError
from timbral.ids import MAX_ID_BYTES
from timbral.io.coerce import RawColumns
from timbral.io.columns import resolve_columns
from timbral.io.csv import read_csv
from timbral.io.files import FORMATS, Progress, check_file, detect_format
from timbral.io.json import read_json
from timbral.io.parquet import read_parquet

__all__ = ["FORMATS", "RawColumns", "ReadResult", "read_columns", "resolve_columns"]


@dataclass
class ReadResult:
    """What a reader produced: the columns, which file column plays each role, the
    file's format and how many rows could not be parsed at all."""

    raw: RawColumns
    columns: dict[str, str | None]
    format: str
    rows_malformed: int


def read_columns(
    path: str | os.PathLike[str],
    format: str | None = None,
    names: tuple[str | None, str | None, str | None, str | None] = (None, None, None, None),
    sep: str | None = None,
    *,
    progress: bool = False,
    max_id_bytes: int = MAX_ID_BYTES,
) -> ReadResult:
    """Read the role columns of an interaction file.

    Parameters
    ----------
    path : str or PathLike
    format : {"csv", "parquet", "jsonl", "json"}, optional
        Overrides the format implied by the extension.
    names : tuple of 4 optional str
        Names of the user, item, rating and timestamp columns (None: matched by alias).
    sep : str, optional
        Separator of a text file (one character, or ``"::"``); sniffed by default.
    progress : bool
        Show a progress bar of rows read.
    max_id_bytes : int
        Longest id accepted, in bytes of UTF-8.

    Raises
    ------
    DataError
        The file is missing, empty, binary, damaged or truncated, or a column is missing.
    """
    path = os.fspath(path)
    fmt, compression = detect_format(path, format)
    check_file(path, fmt, compression)
    malformed = 0
    try:
        with Progress(progress) as tick:
            if fmt == "csv":
                raw, columns, malformed = read_csv(path, compression, sep, names, tick, max_id_bytes)
            elif fmt == "parquet":
                raw, columns = read_parquet(path, names, tick, max_id_bytes)
            else:
                raw, columns, malformed = read_json(path, fmt, compression, names, tick, max_id_bytes)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(
            f"cannot read {path!r} as {fmt}{f' ({compression})' if compression else ''}: {exc}; "
            "the file may be truncated or damaged"
        ) from None
    pa.default_memory_pool().release_unused()  # the parsers' buffers: give them back before cleaning
    return ReadResult(raw, columns, fmt, malformed)
