"""Read training interactions out of PostgreSQL (``timbral train --source postgresql://...``).

Rows stream out of the database with a binary ``COPY ... TO STDOUT``, are gathered
into Arrow record batches of at most ``batch_rows`` rows and appended to a Parquet
file, so this stage holds one batch at a time whatever the table's size. The file
then goes through :func:`timbral.load_interactions` like any other input: the same
validation, cleaning and report as files. (A loader entry point that takes record
batches directly would save the Parquet round trip.)

The rows come from a table (default ``timbral_interactions``, the ingestion table)
or from a query; either must provide the columns ``user_id``, ``item_id``, ``value``
and ``occurred_at``. ``since``/``until`` select a half-open time window on
``occurred_at``.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from psycopg import sql

from timbral.exceptions import RegistryError
from timbral.registry.registry import connect, redact

__all__ = ["export_interactions"]

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_INTEGER_OIDS = {20, 21, 23}  # int8, int2, int4: integer ids stay integers, as in a typed file


def _source(table: str | None, query: str | None) -> sql.Composable:
    if table is not None and query is not None:
        raise RegistryError("pass a table or a query, not both (--table or --query)")
    if query is not None:
        if not query.strip() or ";" in query.strip().rstrip(";"):
            raise RegistryError(f"--query must be one SELECT statement, got {query[:60]!r}")
        source: sql.Composable = sql.SQL("({}) AS source").format(sql.SQL(query.strip().rstrip(";")))
    else:
        name = table or "timbral_interactions"
        if not _TABLE.match(name):
            raise RegistryError(f"table name {name!r} is not an identifier; expected table or schema.table")
        source = sql.Identifier(*name.split("."))
    return source


def _select(conn: psycopg.Connection, source: sql.Composable, since: datetime | None,
            until: datetime | None) -> tuple[sql.Composable, list[Any], pa.Schema, list[str]]:
    """The SELECT to COPY, its parameters, and the Arrow schema and COPY types of its rows."""
    described = conn.execute(sql.SQL("SELECT user_id, item_id FROM {} LIMIT 0").format(source)).description
    id_types = ["int8" if column.type_code in _INTEGER_OIDS else "text" for column in described]
    where, params = [], []
    if since is not None:
        where.append(sql.SQL("occurred_at >= %s"))
        params.append(since)
    if until is not None:
        where.append(sql.SQL("occurred_at < %s"))
        params.append(until)
    statement = sql.SQL("SELECT user_id::{}, item_id::{}, value::float8, occurred_at::timestamptz "
                        "FROM {}").format(sql.SQL(id_types[0]), sql.SQL(id_types[1]), source)
    if where:
        statement = sql.SQL("{} WHERE {}").format(statement, sql.SQL(" AND ").join(where))
    arrow = {"int8": pa.int64(), "text": pa.string()}
    schema = pa.schema([("user_id", arrow[id_types[0]]), ("item_id", arrow[id_types[1]]),
                        ("rating", pa.float64()), ("timestamp", pa.timestamp("us", tz="UTC"))])
    return statement, params, schema, [*id_types, "float8", "timestamptz"]


def export_interactions(url: str, path: str | Path, *, table: str | None = None, query: str | None = None,
                        since: datetime | None = None, until: datetime | None = None,
                        batch_rows: int = 100_000) -> int:
    """Stream the selected interactions into the Parquet file ``path``; returns the row count.

    Raises
    ------
    RegistryError
        Bad table/query/window, an unreachable database, or a source without the
        expected columns (the message names them).
    """
    if since is not None and until is not None and since >= until:
        raise RegistryError(f"the time window is empty: since {since.isoformat()} is not before "
                            f"until {until.isoformat()}")
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise RegistryError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    source = _source(table, query)
    rows = 0
    with connect(url) as conn:
        try:
            statement, params, schema, types = _select(conn, source, since, until)
            with pq.ParquetWriter(str(path), schema) as writer, conn.cursor() as cursor:
                copy_sql = sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(statement)
                with cursor.copy(copy_sql, params) as copy:
                    copy.set_types(types)
                    columns: list[list[Any]] = [[], [], [], []]
                    for row in copy.rows():
                        for column, value in zip(columns, row, strict=True):
                            column.append(value)
                        if len(columns[0]) >= batch_rows:
                            rows += _flush(writer, columns)
                    rows += _flush(writer, columns)
        except psycopg.Error as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RegistryError(
                f"cannot read interactions from {redact(url)} ({text}); the source must provide the "
                "columns user_id, item_id, value and occurred_at") from None
    return rows


def _flush(writer: pq.ParquetWriter, columns: list[list[Any]]) -> int:
    n = len(columns[0])
    if n:
        schema = writer.schema
        writer.write_batch(pa.record_batch([pa.array(c, type=f.type) for c, f in zip(columns, schema, strict=True)],
                                           schema=schema))
        for column in columns:
            column.clear()
    return n
