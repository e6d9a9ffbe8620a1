"""Parquet files, streamed row group by row group with pyarrow."""

from __future__ import annotations

from collections.abc import Callable

import pyarrow.parquet as pq

from timbral.io.coerce import RawColumns
from timbral.io.columns import resolve_columns

__all__ = ["read_parquet"]

BATCH_ROWS = 1 << 20


def read_parquet(
    path: str, names: tuple[str | None, ...], tick: Callable[[int], None], max_id_bytes: int
) -> tuple[RawColumns, dict[str, str | None]]:
    """Stream a Parquet file into :class:`RawColumns`; typed id columns keep their type
    (uint64 ids beyond int64 become exact strings)."""
    handle = pq.ParquetFile(path)
    columns = resolve_columns(handle.schema_arrow.names, *names, repr(path))
    raw = RawColumns(columns, max_id_bytes=max_id_bytes)
    for batch in handle.iter_batches(batch_size=BATCH_ROWS, columns=[c for c in columns.values() if c is not None]):
        raw.add(batch)
        tick(batch.num_rows)
    return raw, columns
