"""Synthetic music-like data: shape, uniqueness, heavy tails, clusters, streaming."""

from __future__ import annotations

import numpy as np
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from timbral.exceptions import ValidationError
from timbral.generate import generate_interactions, iter_interactions, write_interactions


@pytest.fixture(scope="module")
def table():
    return generate_interactions(2000, 1000, 60_000, seed=7)


def test_shape_ids_and_uniqueness(table):
    assert table.column_names == ["user_id", "item_id", "plays", "timestamp"]
    assert table.num_rows == 60_000
    users = table["user_id"].to_numpy()
    items = table["item_id"].to_numpy()
    assert users.min() >= 1 and users.max() <= 2000
    assert items.min() >= 1 and items.max() <= 1000
    keys = users * 1001 + items
    assert np.unique(keys).size == keys.size
    assert np.all(np.diff(users) >= 0)  # sorted by user
    assert table["plays"].to_numpy().min() >= 1
    # every user reaches the loaders' default minimum of 5 interactions
    assert np.bincount(users)[1:].min() >= 5


def test_heavy_tails(table):
    activity = np.bincount(table["user_id"].to_numpy())[1:]
    popularity = np.sort(np.bincount(table["item_id"].to_numpy(), minlength=1001)[1:])[::-1]
    plays = table["plays"].to_numpy()
    assert activity.max() > 5 * np.median(activity)
    # the top 10 % of items take three times their share of listeners
    assert popularity[:100].sum() > 0.3 * popularity.sum()
    assert plays.max() > 20 * np.median(plays)


def test_taste_clusters_make_users_share_items(table):
    """Users concentrate on genres, so co-listening is far above independent picks."""
    users = table["user_id"].to_numpy() - 1
    items = table["item_id"].to_numpy() - 1
    m = np.zeros((2000, 1000), dtype=np.float32)
    m[users, items] = 1
    shuffled = np.zeros_like(m)
    rng = np.random.default_rng(0)
    shuffled[users, rng.permutation(items)] = 1  # same popularity, no taste
    def mean_overlap(x):
        co = x[:300] @ x[:300].T
        return (co.sum() - np.trace(co)) / (300 * 299)
    assert mean_overlap(m) > 1.3 * mean_overlap(shuffled)


def test_seeded_and_chunked():
    a = generate_interactions(300, 200, 5_000, seed=3, chunk_rows=700)
    b = generate_interactions(300, 200, 5_000, seed=3, chunk_rows=700)
    c = generate_interactions(300, 200, 5_000, seed=4, chunk_rows=700)
    assert a.equals(b)
    assert not a.equals(c)
    chunks = list(iter_interactions(300, 200, 5_000, seed=3, chunk_rows=700))
    assert len(chunks) > 5
    assert max(t.num_rows for t in chunks) <= 700 or len(chunks) == 1


def test_dense_request_is_exact():
    """A user who needs nearly the whole catalogue is still served without repeats."""
    table = generate_interactions(6, 30, 170, seed=1)
    keys = table["user_id"].to_numpy() * 100 + table["item_id"].to_numpy()
    assert table.num_rows == 170 and np.unique(keys).size == 170


@pytest.mark.parametrize("name", ["plays.parquet", "plays.csv", "plays.tsv"])
def test_write_by_extension(tmp_path, name):
    path = tmp_path / name
    summary = write_interactions(path, 100, 50, 2_000, seed=1, chunk_rows=500)
    assert summary.n_rows == 2_000 and path.exists()
    if name.endswith(".parquet"):
        back = pq.read_table(path)
    else:
        delimiter = "\t" if name.endswith(".tsv") else ","
        back = pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(delimiter=delimiter))
    assert back.equals(generate_interactions(100, 50, 2_000, seed=1, chunk_rows=500))
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_bad_arguments(tmp_path):
    with pytest.raises(ValidationError, match="n_interactions=101 exceeds n_users"):
        generate_interactions(10, 10, 101)
    with pytest.raises(ValidationError, match="n_users must be a positive integer, got 0"):
        generate_interactions(0, 10, 10)
    with pytest.raises(ValidationError, match=r"use a \.parquet, \.csv or \.tsv extension"):
        write_interactions(tmp_path / "plays.xlsx", 10, 10, 50)
    with pytest.raises(ValidationError, match="does not exist; create it first"):
        write_interactions(tmp_path / "missing" / "plays.csv", 10, 10, 50)
