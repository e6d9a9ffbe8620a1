"""What kind of file a path is, and whether it can be read at all."""

from __future__ import annotations

import os
from collections.abc import Callable

import pyarrow as pa

from timbral.exceptions import DataError, ValidationError

__all__ = ["FORMATS", "Progress", "check_file", "detect_format", "head_bytes"]

FORMATS = ("csv", "parquet", "jsonl", "json")
_EXTENSIONS = {
    ".csv": "csv", ".tsv": "csv", ".dat": "csv", ".txt": "csv",
    ".parquet": "parquet", ".pq": "parquet",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
}
_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}
_FORMAT_ALIASES = {"tsv": "csv", "dat": "csv", "txt": "csv", "ndjson": "jsonl", "pq": "parquet"}


def detect_format(path: str, format: str | None) -> tuple[str, str | None]:
    """``(format, compression)`` from ``format=`` or the extension (``.csv.gz`` -> csv, gzip)."""
    lower = path.lower()
    compression = None
    for ext, codec in _COMPRESSIONS.items():
        if lower.endswith(ext):
            compression = codec
            lower = lower[: -len(ext)]
    if format is not None:
        fmt = _FORMAT_ALIASES.get(format.lower(), format.lower())
        if fmt not in FORMATS:
            raise ValidationError(f"format must be one of {FORMATS}, got {format!r}")
        return fmt, compression
    ext = os.path.splitext(lower)[1]
    if ext not in _EXTENSIONS:
        raise DataError(
            f"cannot tell the format of {path!r} from its extension {ext or '(none)'!r}; "
            f"pass format= one of {FORMATS} (CLI: --format), or use one of {sorted(_EXTENSIONS)}"
        )
    return _EXTENSIONS[ext], compression


def check_file(path: str, fmt: str, compression: str | None) -> None:
    """Refuse a missing, empty, binary or mislabelled file with a message that says why."""
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
    head = head_bytes(path, compression)
    if not head.strip():
        raise DataError(f"{path!r} is empty (only whitespace); it needs a header line and at least one row")
    if b"\x00" in head or not _decodes(head):
        hint = " it looks like Parquet: pass format='parquet' or rename it .parquet;" if magic == b"PAR1" else ""
        raise DataError(
            f"{path!r} is a binary file, not {fmt.upper()} text;{hint} expected UTF-8 text "
            "with a header line"
        )


def head_bytes(path: str, compression: str | None, n: int = 1 << 16) -> bytes:
    """The first ``n`` bytes of the decompressed file."""
    try:
        with pa.input_stream(path, compression=compression) as stream:
            return stream.read(n)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {path!r} as {compression or 'uncompressed'} data: {exc}") from exc


def _decodes(head: bytes) -> bool:
    # A multi-byte character may be cut at the end of the sample: drop the last line.
    cut = head.rfind(b"\n")
    try:
        (head[:cut] if cut > 0 else head[:-4] if len(head) > 4 else head).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class Progress:
    """Context manager yielding ``tick(n_rows)``; a tqdm bar on stderr when enabled."""

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
