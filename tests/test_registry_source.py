"""Training data from PostgreSQL: binary COPY into Parquet in batches, then the file loader."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pyarrow.parquet as pq
import pytest

from timbral import load_interactions
from timbral.cli import main
from timbral.exceptions import RegistryError
from timbral.registry import Registry
from timbral.registry.source import export_interactions

T0 = datetime(2024, 5, 1, tzinfo=UTC)


@pytest.fixture
def plays(database_url, tmp_path):
    """The same 600 plays in timbral_interactions and in a CSV file, and in legacy_plays
    (integer user ids, two bad rows)."""
    rng = np.random.default_rng(3)
    rows = [(f"e{i}", f"u{rng.integers(40)}", f"a{rng.integers(25)}", float(rng.integers(1, 9)),
             T0 + timedelta(hours=i)) for i in range(600)]
    with Registry(database_url) as reg:
        reg.upgrade()
    with psycopg.connect(database_url) as conn:
        with conn.cursor().copy("COPY timbral_interactions (event_id, user_id, item_id, value, occurred_at) "
                                "FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute("CREATE TABLE legacy_plays (user_id bigint, item_id text, value real, "
                     "occurred_at timestamptz)")
        conn.execute("INSERT INTO legacy_plays SELECT substr(user_id, 2)::bigint, item_id, value, "
                     "occurred_at FROM timbral_interactions")
        conn.execute("INSERT INTO legacy_plays VALUES (NULL, '3', 1, now()), (1, '2', NULL, now())")
    csv = tmp_path / "plays.csv"
    csv.write_text("user_id,item_id,rating,timestamp\n" + "".join(
        f"{u},{i},{v},{t.isoformat()}\n" for _, u, i, v, t in rows))
    return database_url, csv


def comparable(report) -> dict:
    return {k: v for k, v in report.to_dict().items() if k not in ("source", "format", "seconds", "columns")}


def test_the_database_goes_through_the_same_cleaning_as_a_file(plays, tmp_path):
    url, csv = plays
    path = tmp_path / "export.parquet"
    assert export_interactions(url, path, batch_rows=64) == 600
    assert pq.ParquetFile(path).metadata.num_row_groups == 10  # streamed 64 rows at a time
    from_db, from_file = load_interactions(path), load_interactions(csv)
    assert comparable(from_db.report) == comparable(from_file.report)
    assert (from_db.user_items != from_file.user_items).nnz == 0
    np.testing.assert_array_equal(from_db.user_ids, from_file.user_ids)


def test_time_window_table_and_query(plays, tmp_path):
    url, _ = plays
    n = export_interactions(url, tmp_path / "a.parquet", since=T0 + timedelta(hours=100),
                            until=T0 + timedelta(hours=150))
    assert n == 50
    assert export_interactions(url, tmp_path / "b.parquet", table="legacy_plays") == 602
    legacy = load_interactions(tmp_path / "b.parquet")
    assert legacy.user_ids.dtype.kind == "i"  # an integer column keeps integer ids
    assert legacy.report.dropped_missing_id == 1 and legacy.report.dropped_invalid_rating == 1
    n = export_interactions(url, tmp_path / "c.parquet",
                            query="SELECT user_id, item_id, value, occurred_at FROM legacy_plays "
                                  "WHERE value > 4")
    assert 0 < n < 600


BAD_SOURCES = [
    ({"table": "plays; DROP TABLE x"}, "is not an identifier"),
    ({"table": "t", "query": "SELECT 1"}, "a table or a query, not both"),
    ({"query": "SELECT 1; DROP TABLE timbral_interactions"}, "must be one SELECT statement"),
    ({"query": "SELECT 1 AS user_id"}, "must provide the columns user_id, item_id, value and occurred_at"),
    ({"table": "missing_table"}, "must provide the columns"),
    ({"since": T0, "until": T0}, "the time window is empty"),
    ({"batch_rows": 0}, "batch_rows must be a positive integer"),
]


def test_bad_sources_are_refused(plays, tmp_path):
    url, _ = plays
    for kwargs, message in BAD_SOURCES:
        with pytest.raises(RegistryError, match=message):
            export_interactions(url, tmp_path / "x.parquet", **kwargs)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM timbral_interactions").fetchone() == (600,)


def test_train_from_the_database_and_register_with_lineage(plays, capsys, monkeypatch):
    url, _ = plays
    monkeypatch.setenv("DATABASE_URL", url)
    argv = ["train", "--source", url, "--since", "2024-05-01T00:00:00Z", "--register", "--json",
            "--components", "4", "--iterations", "3", "--threads", "1", "--no-eval",
            "--min-user-interactions", "1"]
    assert main(argv) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["registry_version"] == 1 and summary["nnz"] > 0
    with Registry(url) as reg:
        lineage = reg.get(1).lineage
    assert lineage["table"] == "timbral_interactions" and lineage["time_range"][0].startswith("2024-05-01")
    for bad, message in ([["train", "x.csv", "--source", url, "-o", "m"], "exactly one of them"],
                         [["train", "x.csv", "--table", "t", "-o", "m"], "only apply with --source"],
                         [["train", "--source", url, "--since", "May", "-o", "m"], "expected an ISO 8601 time"]):
        assert main(bad) == 2
        assert message in capsys.readouterr().err
