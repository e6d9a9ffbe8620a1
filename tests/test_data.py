"""Loading, validation and cleaning of interaction logs (timbral.data)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from timbral.cleaning import MAX_USER_ITEMS
from timbral.data import Interactions, ValidationReport, load_interactions
from timbral.exceptions import DataError, UnknownIdError, ValidationError

# Lenient defaults so small hand-made files keep every user.
LOOSE = dict(min_user_interactions=1, max_user_interactions=None, max_value=None)

ROWS = [  # user, item, plays, timestamp
    ("u1", "a", 3, 1_600_000_000),
    ("u1", "b", 1, 1_600_000_100),
    ("u2", "a", 5, 1_600_000_200),
    ("u2", "c", 2, 1_600_000_300),
    ("u3", "b", 7, 1_600_000_400),
]


def frame(int_ids: bool = False) -> pd.DataFrame:
    df = pd.DataFrame(ROWS, columns=["user_id", "item_id", "plays", "timestamp"])
    if int_ids:
        df["user_id"] = df["user_id"].str[1:].astype(int) * 10
        df["item_id"] = df["item_id"].map({"a": 300, "b": 100, "c": 200})
    return df


def write(df: pd.DataFrame, path: Path, fmt: str) -> Path:
    if fmt in ("csv", "tsv", "dat", "txt"):
        df.to_csv(path, index=False, sep="\t" if fmt in ("tsv", "dat") else ",")
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    elif fmt == "json":
        df.to_json(path, orient="records")
    return path


def same(a: Interactions, b: Interactions) -> None:
    assert (a.user_items != b.user_items).nnz == 0
    assert a.user_items.dtype == np.float32 and a.user_items.has_sorted_indices
    np.testing.assert_array_equal(a.user_ids, b.user_ids)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    if a.timestamps is None:
        assert b.timestamps is None
    else:
        np.testing.assert_allclose(a.timestamps.toarray(), b.timestamps.toarray())


# ------------------------------------------------------------------------ formats


@pytest.mark.parametrize("int_ids", [False, True])
@pytest.mark.parametrize("ext", ["tsv", "dat", "txt", "parquet", "jsonl", "json"])
def test_every_format_reads_the_same_interactions(tmp_path, ext, int_ids):
    df = frame(int_ids)
    reference = load_interactions(write(df, tmp_path / "ref.csv", "csv"), **LOOSE)
    got = load_interactions(write(df, tmp_path / f"data.{ext}", ext), **LOOSE)
    same(reference, got)
    assert got.users.kind == ("int" if int_ids else "str")
    assert got.report.columns == {"user": "user_id", "item": "item_id", "rating": "plays", "timestamp": "timestamp"}


def test_from_frame_matches_file_for_pandas_and_arrow(tmp_path):
    df = frame()
    reference = load_interactions(write(df, tmp_path / "ref.csv", "csv"), **LOOSE)
    same(reference, Interactions.from_frame(df, **LOOSE))
    same(reference, Interactions.from_frame(pa.Table.from_pandas(df), **LOOSE))


def test_ids_map_to_sorted_contiguous_indices_and_back(tmp_path):
    data = load_interactions(write(frame(int_ids=True), tmp_path / "d.csv", "csv"), **LOOSE)
    np.testing.assert_array_equal(data.user_ids, [10, 20, 30])
    np.testing.assert_array_equal(data.item_ids, [100, 200, 300])
    assert (data.n_users, data.n_items, data.nnz) == (3, 3, 5)
    assert data.user_index(20) == 1 and data.user_index("20") == 1
    assert data.item_index(300) == 2
    assert data.user_items[data.user_index(20), data.item_index(300)] == 5
    assert data.timestamps[0, data.item_index(300)] == 1_600_000_000
    with pytest.raises(UnknownIdError, match=r"user_id 99 is not known \(3 user_ids\)"):
        data.user_index(99)
    with pytest.raises(UnknownIdError, match="item_id 'x' is not known"):
        data.item_index("x")


def test_string_ids(tmp_path):
    data = load_interactions(write(frame(), tmp_path / "d.csv", "csv"), **LOOSE)
    np.testing.assert_array_equal(data.user_ids, ["u1", "u2", "u3"])
    assert data.item_index("c") == 2
    np.testing.assert_array_equal(data.user_items.toarray(), [[3, 1, 0], [5, 0, 2], [0, 7, 0]])


@pytest.mark.parametrize(
    "header, expected",
    [
        ("userID\tartistID\tweight", ("userID", "artistID", "weight")),
        ("UserId;MovieId;Rating", ("UserId", "MovieId", "Rating")),
        ("uid|track_id|play_count", ("uid", "track_id", "play_count")),
        ("listener_id,song_id,playcount", ("listener_id", "song_id", "playcount")),
        ("user,item,score", ("user", "item", "score")),
    ],
)
def test_aliases_and_sniffed_separator(tmp_path, header, expected):
    sep = next(s for s in "\t;|," if s in header)
    path = tmp_path / "d.txt"
    path.write_text(header + "\n" + "\n".join(sep.join(map(str, r)) for r in [(1, 2, 3), (1, 3, 4), (2, 2, 1)]) + "\n")
    data = load_interactions(path, **LOOSE)
    assert data.report.columns == dict(zip(("user", "item", "rating", "timestamp"), expected + (None,)))
    assert data.nnz == 3 and data.user_items.sum() == 8


def test_explicit_columns_and_separator(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("who;what;stars\n1;2;4\n1;3;5\n")
    data = load_interactions(path, user_col="WHO", item_col="what", rating_col="stars", sep=";", **LOOSE)
    assert data.user_items.sum() == 9


def test_missing_rating_column_counts_one(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("user_id,item_id\n1,2\n1,3\n1,2\n")
    data = load_interactions(path, **LOOSE)
    np.testing.assert_array_equal(data.user_items.toarray(), [[2, 1]])
    assert data.report.columns["rating"] is None and data.timestamps is None


def test_iso_timestamps_and_milliseconds(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("user,item,ts\n1,1,2020-01-01T00:00:00Z\n1,2,2020-01-01 00:00:10\n1,3,2020-01-02\n")
    data = load_interactions(path, **LOOSE)
    np.testing.assert_array_equal(data.timestamps.data, [1577836800, 1577836810, 1577923200])
    path.write_text("user,item,ts\n1,1,1577836800000\n1,2,1577836810000\n")
    np.testing.assert_array_equal(load_interactions(path, **LOOSE).timestamps.data, [1577836800, 1577836810])


def test_gzip_csv(tmp_path):
    path = tmp_path / "d.csv.gz"
    with gzip.open(path, "wt") as fh:
        frame().to_csv(fh, index=False)
    same(load_interactions(write(frame(), tmp_path / "d.csv", "csv"), **LOOSE), load_interactions(path, **LOOSE))


def test_format_argument_overrides_extension(tmp_path):
    path = write(frame(), tmp_path / "d.log", "jsonl")
    with pytest.raises(DataError, match=r"cannot tell the format .* pass format="):
        load_interactions(path, **LOOSE)
    assert load_interactions(path, format="jsonl", **LOOSE).nnz == 5


# ------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found: .*nope.csv"):
        load_interactions(tmp_path / "nope.csv")


def test_directory(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match="is a directory, not a data file"):
        load_interactions(tmp_path / "dir.csv")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match="is empty"):
        load_interactions(path)


def test_header_only(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("user,item,plays\n")
    with pytest.raises(DataError, match="has a header but no data rows"):
        load_interactions(path)


def test_binary_file(tmp_path):
    path = tmp_path / "blob.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="is a binary file, not CSV text"):
        load_interactions(path)
    parquet = write(frame(), tmp_path / "real.parquet", "parquet")
    disguised = tmp_path / "disguised.csv"
    disguised.write_bytes(parquet.read_bytes())
    with pytest.raises(DataError, match="it looks like Parquet: pass format='parquet'"):
        load_interactions(disguised)
    text = tmp_path / "text.parquet"
    text.write_text("user,item\n1,2\n")
    with pytest.raises(DataError, match="is not a Parquet file"):
        load_interactions(text)


def test_missing_column_lists_columns_and_option(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("person,artist,plays\n1,2,3\n")
    with pytest.raises(DataError, match=r"no user column .*columns found: 'person', 'artist', 'plays'.*user_col= \(CLI: --user-col\)"):
        load_interactions(path)
    with pytest.raises(DataError, match=r"item_col='song' is not a column"):
        load_interactions(path, user_col="person", item_col="song")
    headerless = tmp_path / "h.csv"
    headerless.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="may lack a header line"):
        load_interactions(headerless)


def test_unknown_separator(tmp_path):
    path = tmp_path / "d.dat"
    path.write_text("useritem\n12\n")
    with pytest.raises(DataError, match=r"cannot detect the field separator.*pass sep="):
        load_interactions(path)


def test_bad_options():
    with pytest.raises(ValidationError, match="feedback must be one of"):
        Interactions.from_frame(frame(), feedback="stars")
    with pytest.raises(ValidationError, match="min_user_interactions must be a non-negative integer, got -1"):
        Interactions.from_frame(frame(), min_user_interactions=-1)
    with pytest.raises(ValidationError, match="max_value must be 'auto', None or a positive number"):
        Interactions.from_frame(frame(), max_value="big")
    with pytest.raises(ValidationError, match="wrap a single id in a list"):
        Interactions.from_frame(frame(), exclude_users="u1")
    with pytest.raises(DataError, match="feedback='explicit' needs a rating column"):
        Interactions.from_frame(frame()[["user_id", "item_id"]], feedback="explicit")


# ----------------------------------------------------------------------- cleaning


def test_every_row_rule_counted_exactly(tmp_path):
    path = tmp_path / "dirty.csv"
    path.write_text(
        "user,item,rating,ts\n"
        "1,1,1,100\n"        # ok
        ",2,1,100\n"         # missing user
        "1,,1,100\n"         # missing item
        "1,3,abc,100\n"      # non-numeric rating
        "1,4,,100\n"         # missing rating
        "1,5,nan,100\n"      # NaN: a missing-value marker, so invalid
        "1,6,inf,100\n"      # infinite
        "1,7,-2,100\n"       # negative
        "1,8,0,100\n"        # zero (implicit)
        "1,9,1,yesterday\n"  # unparseable timestamp
        "1,10,1,-5\n"        # before 1970
        "1,11,1,99999999999\n"  # year 5138
        "1,12,2,200\n"       # ok
        "1,12,3,150\n"       # duplicate: merged
    )
    data = load_interactions(path, **LOOSE)
    r = data.report
    assert (r.rows_read, r.dropped_missing_id, r.dropped_invalid_rating, r.dropped_nonfinite_rating) == (14, 2, 3, 1)
    assert (r.dropped_negative_rating, r.dropped_zero_rating) == (1, 1)
    assert (r.dropped_invalid_timestamp, r.dropped_out_of_range_timestamp) == (1, 2)
    assert (r.duplicates_merged, r.nnz, r.n_users, r.n_items) == (1, 2, 1, 2)
    np.testing.assert_array_equal(data.user_items.data, [1, 5])
    np.testing.assert_array_equal(data.timestamps.data, [100, 200])  # merged pair keeps the latest


def test_garbage_rows_mid_file_keep_the_good_rows(tmp_path):
    clean = ["user,item,plays"] + [f"{u},{i},{u + i}" for u in range(1, 41) for i in range(1, 6)]
    dirty = clean[:101] + ["this line is garbage", "x,y,z", "1,2", ",,,,", "7,,"] + clean[101:]
    (tmp_path / "clean.csv").write_text("\n".join(clean) + "\n")
    (tmp_path / "dirty.csv").write_text("\n".join(dirty) + "\n")
    good = load_interactions(tmp_path / "clean.csv", **LOOSE)
    got = load_interactions(tmp_path / "dirty.csv", **LOOSE)
    same(good, got)
    r = got.report
    assert (r.rows_malformed, r.dropped_missing_id, r.nnz) == (3, 2, 200)
    assert got.users.kind == "int"  # one garbage id in the first block does not make ids text


def test_garbage_after_the_first_block_falls_back_to_text(tmp_path, monkeypatch):
    import timbral.io.csv

    monkeypatch.setattr(timbral.io.csv, "BLOCK_BYTES", 64)  # force several blocks
    # 300 rows: the two garbage ids stay under the 1 % that keeps an id column integer.
    lines = ["user,item,plays"] + [f"{u},{i},{i}" for u in range(1, 101) for i in range(1, 4)]
    (tmp_path / "clean.csv").write_text("\n".join(lines) + "\n")
    lines.insert(50, "7,3.5,oops")
    lines.insert(55, "eight,1,2.5e0")
    (tmp_path / "dirty.csv").write_text("\n".join(lines) + "\n")
    good = load_interactions(tmp_path / "clean.csv", **LOOSE)
    got = load_interactions(tmp_path / "dirty.csv", **LOOSE)
    assert got.report.dropped_missing_id == 2
    same(good, got)


def test_garbage_json_lines_keep_the_good_rows(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"user": 1, "item": 1, "plays": 2}\nnot json\n[1, 2]\n{"user": 1, "item": 2, "plays": "x"}\n'
                    '{"user": 2, "item": 1, "plays": 4}\n')
    data = load_interactions(path, **LOOSE)
    r = data.report
    assert (r.rows_malformed, r.dropped_invalid_rating, r.nnz) == (2, 1, 2)
    np.testing.assert_array_equal(data.user_items.toarray(), [[2], [4]])


def test_duplicates_implicit_sum_explicit_latest():
    df = pd.DataFrame({"user": [1, 1, 1, 2], "item": [1, 1, 1, 1], "rating": [4.0, 2.0, 5.0, 3.0],
                       "ts": [10, 30, 20, 10]})
    implicit = Interactions.from_frame(df, **LOOSE)
    assert implicit.report.duplicates_merged == 2
    np.testing.assert_array_equal(implicit.user_items.toarray().ravel(), [11, 3])
    np.testing.assert_array_equal(implicit.timestamps.toarray().ravel(), [30, 10])
    explicit = Interactions.from_frame(df, feedback="explicit", **LOOSE)
    np.testing.assert_array_equal(explicit.user_items.toarray().ravel(), [2, 3])  # latest by time
    no_time = Interactions.from_frame(df.drop(columns="ts"), feedback="explicit", **LOOSE)
    np.testing.assert_array_equal(no_time.user_items.toarray().ravel(), [5, 3])  # last seen
    zero = pd.DataFrame({"user": [1, 1], "item": [1, 2], "rating": [0.0, 1.0]})
    assert Interactions.from_frame(zero, feedback="explicit", **LOOSE).nnz == 2
    assert Interactions.from_frame(zero, **LOOSE).report.dropped_zero_rating == 1


def test_excluded_users():
    df = frame()
    data = Interactions.from_frame(df, exclude_users=["u2", "nobody"], **LOOSE)
    r = data.report
    assert (r.excluded_users, r.dropped_excluded_user_rows, data.n_users) == (1, 2, 2)
    ints = Interactions.from_frame(frame(int_ids=True), exclude_users=[10, "30"], **LOOSE)
    np.testing.assert_array_equal(ints.user_ids, [20])
    with pytest.raises(DataError, match="exclude_users removed every remaining user"):
        Interactions.from_frame(df, exclude_users=["u1", "u2", "u3"], **LOOSE)


def activity_frame() -> pd.DataFrame:
    # 30 users with 5-8 items each and plays 1..10, one bot with 400 items, one absurd play count.
    rng = np.random.default_rng(0)
    rows = [(u, i, int(rng.integers(1, 11))) for u in range(30) for i in range(5 + u % 4)]
    rows += [(999, i, int(rng.integers(1, 11))) for i in range(400)]
    rows += [(0, 50, 10**9)]
    return pd.DataFrame(rows, columns=["user", "item", "plays"])


def test_default_rules_keep_heavy_users_and_drop_implausible_values():
    # Issue 9.7: a listener with 50x the median number of items is a person, not an outlier.
    df = activity_frame()
    data = Interactions.from_frame(df)
    r = data.report
    assert (r.dropped_implausible_value, r.outlier_users, r.outlier_user_interactions) == (1, 0, 0)
    assert 10 < r.max_value < 10**9 and r.max_user_interactions == MAX_USER_ITEMS == 100_000
    assert data.user_index(999) == 30 and data.n_users == 31
    assert data.user_items[data.user_index(999)].nnz == 400
    bots = Interactions.from_frame(df, max_user_interactions=300)
    assert (bots.report.outlier_users, bots.report.outlier_user_interactions) == (1, 400)
    assert 999 not in bots.user_ids and bots.n_users == 30
    kept = Interactions.from_frame(df, max_user_interactions=None, max_value=None)
    assert kept.n_users == 31 and kept.user_items.max() == 10**9
    capped = Interactions.from_frame(df, max_user_interactions=6, max_value=5)
    assert capped.report.max_user_interactions == 6 and capped.report.max_value == 5
    assert capped.user_items.max() <= 5 and np.diff(capped.user_items.indptr).max() <= 6


def test_min_counts_once_and_to_fixed_point():
    # user 3 has 1 item (removed at 2); then item 30 keeps only one user.
    df = pd.DataFrame({"user": [1, 1, 2, 2, 2, 3], "item": [10, 20, 10, 20, 30, 30]})
    once = Interactions.from_frame(df, min_user_interactions=2, min_item_interactions=2,
                                   max_user_interactions=None)
    r = once.report
    assert (r.sparse_users_removed, r.sparse_items_removed, r.sparse_interactions_removed) == (1, 1, 2)
    assert (once.n_users, once.n_items, r.min_count_passes) == (2, 2, 1)
    # Pass 1 removes user 4, then item 40, leaving user 3 with one item; pass 2 removes
    # user 3, then item 30; pass 3 changes nothing.
    chain = pd.DataFrame({"user": [1, 1, 1, 2, 2, 3, 3, 4], "item": [10, 20, 30, 10, 20, 30, 40, 40]})
    single = Interactions.from_frame(chain, min_user_interactions=2, min_item_interactions=2,
                                     max_user_interactions=None)
    assert single.n_users == 3 and np.diff(single.user_items.indptr).min() == 1
    fixed = Interactions.from_frame(chain, min_user_interactions=2, min_item_interactions=2,
                                    max_user_interactions=None, iterate_min_counts=True)
    assert (fixed.report.min_count_passes, fixed.report.sparse_users_removed, fixed.report.sparse_items_removed) == (3, 2, 2)
    np.testing.assert_array_equal(fixed.user_ids, [1, 2])
    assert np.diff(fixed.user_items.indptr).min() >= 2 and np.diff(fixed.user_items.tocsc().indptr).min() >= 2


def test_everything_removed_names_the_rule():
    with pytest.raises(DataError, match=r"min_user_interactions=5 .*most active remaining user had 2 items.*lower min_user_interactions"):
        Interactions.from_frame(frame())
    bad = pd.DataFrame({"user": [1, 2], "item": [1, 2], "rating": [-1.0, float("inf")]})
    with pytest.raises(DataError, match=r"every one of the 2 rows .*nonfinite_rating: 1, negative_rating: 1"):
        Interactions.from_frame(bad, **LOOSE)


def test_report_table_and_json():
    data = Interactions.from_frame(activity_frame())
    text = str(data.report)
    assert "rows read" in text and "outlier users" in text and f"{data.report.rows_read:,}" in text
    widths = {len(line) for line in text.splitlines()[4:]}
    assert len(widths) == 1  # numbers right-aligned in one column
    payload = json.loads(data.report.to_json())
    assert payload["nnz"] == data.nnz and payload["columns"]["user"] == "user"
    assert ValidationReport(**payload) == data.report
