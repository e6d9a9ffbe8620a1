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
    assert data.report.columns == dict(zip(("user", "item", "rating", "timestamp"), expected + (None,), strict=True))
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


def test_one_impossible_date_drops_only_its_row(tmp_path):
    """Arrow refuses a whole cast for one bad value; the zoned and fractional timestamps
    beside it keep their exact reading (they were all dropped as invalid)."""
    path = tmp_path / "d.csv"
    good = ["2020-01-01T00:00:00Z", "2020-01-01T02:00:10+02:00", "2020-01-01 00:00:20.75Z", "2020-01-01 00:00:30"]
    lines = [f"{u},{i},{ts}" for u in range(1, 301) for i, ts in enumerate(good, start=1)]
    lines.insert(500, "7,9,2020-13-01T00:00:00Z")  # a 13th month, among 1,200 good rows
    path.write_text("user,item,ts\n" + "\n".join(lines) + "\n")
    data = load_interactions(path, **LOOSE)
    assert data.report.dropped_invalid_timestamp == 1
    assert data.timestamps.nnz == 1200
    seconds = data.timestamps.toarray()[data.user_index(7)]
    np.testing.assert_array_equal(seconds[[data.item_index(i) for i in (1, 2, 3, 4)]],
                                  [1577836800, 1577836810, 1577836820.75, 1577836830])


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
    expected = r"no user column .*columns found: 'person', 'artist', 'plays'.*user_col= \(CLI: --user-col\)"
    with pytest.raises(DataError, match=expected):
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
    r = fixed.report
    assert (r.min_count_passes, r.sparse_users_removed, r.sparse_items_removed) == (3, 2, 2)
    np.testing.assert_array_equal(fixed.user_ids, [1, 2])
    assert np.diff(fixed.user_items.indptr).min() >= 2 and np.diff(fixed.user_items.tocsc().indptr).min() >= 2


def test_everything_removed_names_the_rule():
    expected = r"min_user_interactions=5 .*most active remaining user had 2 items.*lower min_user_interactions"
    with pytest.raises(DataError, match=expected):
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


# ------------------------------------------- issue 10 (points 10-12): exact ids, file shapes


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("ext", ["csv", "jsonl", "json"])
def test_ids_beyond_int64_are_exact_strings_not_floats(tmp_path, ext):
    # Regression: one id >= 2**63 made pyarrow read the column as float64, merging ids above 2**53.
    users = [2**63, 2**63 + 1, 2**64 - 1, 5]
    df = pd.DataFrame({"user": [str(u) for u in users], "item": [1, 1, 1, 1]})
    if ext == "csv":
        path = write_text(tmp_path / "d.csv", "user,item\n" + "".join(f"{u},1\n" for u in users))
    else:
        rows = [f'{{"user": {u}, "item": 1}}' for u in users]
        body = "\n".join(rows) if ext == "jsonl" else "[" + ",".join(rows) + "]"
        path = write_text(tmp_path / f"d.{ext}", body)
    data = load_interactions(path, **LOOSE)
    assert data.users.kind == "str" and data.n_users == 4
    assert sorted(data.user_ids.tolist()) == sorted(df["user"].tolist())
    assert data.user_index(2**64 - 1) == data.user_index("18446744073709551615")


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_19_digit_and_above_2_53_ids_stay_exact_ints(tmp_path, ext):
    # Regression: the text re-read path dropped valid 19-digit ids as missing.
    users = [2**63 - 1, 2**63 - 2, -(2**63), 1234567890123456789, 2**53, 2**53 + 1]
    df = pd.DataFrame({"user": np.array(users, dtype=np.int64), "item": 1})
    path = write(df, tmp_path / f"d.{ext}", ext)
    if ext == "csv":  # a late non-numeric rating forces the text re-read path
        with path.open("a") as fh:
            fh.write("7,1,\n")
    data = load_interactions(path, **LOOSE)
    assert data.users.kind == "int" and data.user_ids.dtype == np.int64
    assert data.user_ids.tolist() == sorted(users)


@pytest.mark.parametrize("ext", ["csv", "parquet", "jsonl"])
def test_leading_zeros_never_merge(tmp_path, ext):
    df = pd.DataFrame({"user": ["007", "7", "0", "00"], "item": ["1", "1", "1", "1"]})
    path = write(df, tmp_path / f"d.{ext}", ext)
    data = load_interactions(path, **LOOSE)
    assert data.users.kind == "str" and sorted(data.user_ids.tolist()) == ["0", "00", "007", "7"]
    assert data.user_index("007") != data.user_index("7") == data.user_index(7)


def test_uint64_parquet_ids(tmp_path):
    # Regression: 18446744073709551615 wrapped to -1, then a raw OverflowError.
    table = pa.table({"user": pa.array([2**64 - 1, 2**63, 3], pa.uint64()),
                      "item": pa.array([1, 2, 3], pa.uint64())})
    pq.write_table(table, tmp_path / "d.parquet")
    data = load_interactions(tmp_path / "d.parquet", **LOOSE)
    assert data.users.kind == "str"
    assert sorted(data.user_ids.tolist()) == ["18446744073709551615", "3", "9223372036854775808"]
    assert data.items.kind == "int" and data.item_ids.tolist() == [1, 2, 3]


@pytest.mark.parametrize("ext", ["csv", "parquet", "jsonl"])
def test_a_20000_character_id_is_an_error_naming_the_row(tmp_path, ext):
    # Regression: one such id made a fixed-width U20000 id map of 1.5 GiB for 20k users.
    df = pd.DataFrame({"user": ["a", "b", "x" * 20_000, "c"], "item": ["1", "2", "3", "4"]})
    with pytest.raises(DataError, match=r"the user id in data row 3 is 20,000 bytes long; ids are at most 256 bytes"):
        load_interactions(write(df, tmp_path / f"d.{ext}", ext), **LOOSE)
    data = load_interactions(write(df, tmp_path / f"ok.{ext}", ext), max_id_bytes=20_000, **LOOSE)
    assert data.user_ids.dtype == object and data.n_users == 4


def test_string_ids_take_memory_proportional_to_their_length():
    df = pd.DataFrame({"user": [f"u{j}" for j in range(2000)] + ["x" * 200], "item": "a"})
    data = Interactions.from_frame(df, **LOOSE)
    assert data.user_ids.dtype == object  # not U200: 2001 × 800 bytes
    assert data.users.lookup(["x" * 200, "u5"]).tolist() == [data.n_users - 1, data.user_index("u5")]


def test_header_with_spaces_after_commas(tmp_path):
    # Regression: pyarrow.ArrowKeyError and a 30-line traceback.
    path = write_text(tmp_path / "d.csv", "user, item, rating\n1, a, 3\n1, b, 4\n2, a, 1.5\n")
    data = load_interactions(path, **LOOSE)
    assert data.report.columns == {"user": "user", "item": "item", "rating": "rating", "timestamp": None}
    assert data.user_ids.tolist() == [1, 2] and data.item_ids.tolist() == ["a", "b"]
    np.testing.assert_array_equal(data.user_items.toarray(), [[3, 4], [1.5, 0]])


@pytest.mark.parametrize("header", ["user-id,game-title,value", "User ID,Game Title,Hours",
                                    "USER_ID,MOVIE-ID,RATING", "listener,artist,plays"])
def test_headers_match_aliases_ignoring_case_spaces_dashes_and_underscores(tmp_path, header):
    path = write_text(tmp_path / "d.csv", header + "\n1,Dota 2,3\n2,Half-Life,1\n")
    data = load_interactions(path, **LOOSE)
    assert data.report.columns["user"] == header.split(",")[0]
    assert data.item_ids.tolist() == ["Dota 2", "Half-Life"] and data.user_items.sum() == 4
    assert load_interactions(path, user_col="userid" if "-" in header else None, **LOOSE).nnz == 2


def test_ragged_rows_do_not_hide_the_separator(tmp_path):
    # Regression: one row with an extra field made sniffing give up.
    lines = ["user;item;plays"] + [f"{u};{i};2" for u in range(1, 6) for i in range(1, 4)]
    lines[4] += ";extra"
    lines[7] = "3;1"
    data = load_interactions(write_text(tmp_path / "d.txt", "\n".join(lines) + "\n"), **LOOSE)
    assert data.report.rows_malformed == 2 and data.nnz == 13


@pytest.mark.parametrize("header", ["", "UserID::MovieID::Rating::Timestamp\n"])
def test_double_colon_movielens_files(tmp_path, header):
    # MovieLens 1M/10M ratings.dat: '::'-separated, no header line.
    body = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978300000\n2::3408::4::978300001\n"
    data = load_interactions(write_text(tmp_path / "ratings.dat", header + body), feedback="explicit", **LOOSE)
    assert data.user_ids.tolist() == [1, 2] and data.item_ids.tolist() == [661, 1193, 3408]
    np.testing.assert_array_equal(data.user_items.toarray(), [[3, 5, 0], [0, 4, 4]])
    assert data.timestamps[0, 1] == 978300760
    assert data.report.columns["timestamp"] == ("Timestamp" if header else "timestamp")


def test_double_colon_across_read_blocks(tmp_path):
    body = "".join(f"{u}::{i}::{u % 5 + 1}\n" for u in range(1, 3000) for i in (1, 2))
    path = write_text(tmp_path / "big.dat", "user::item::rating\n" + body)
    data = load_interactions(path, **LOOSE)
    assert (data.n_users, data.nnz, data.report.rows_malformed) == (2999, 5998, 0)


def test_json_array_is_parsed_not_split(tmp_path, monkeypatch):
    # Regression: a value holding '},{' was cut by a regex, dropping rows.
    import timbral.io.json

    monkeypatch.setattr(timbral.io.json, "_READ_BYTES", 7)  # elements straddle every read
    objects = [{"user": 1, "item": "a},{\"b", "plays": 2}, {"user": 1, "item": "x\n}, {y", "plays": 3},
               {"user": 2, "item": "é", "plays": 1.5}, [1, 2], {"user": 3, "item": "a},{\"b", "plays": 4}]
    path = write_text(tmp_path / "d.json", json.dumps(objects, ensure_ascii=False, indent=1))
    data = load_interactions(path, **LOOSE)
    assert data.item_ids.tolist() == sorted(["a},{\"b", "x\n}, {y", "é"])
    assert (data.nnz, data.report.rows_malformed, data.user_items.sum()) == (4, 1, 10.5)


@pytest.mark.parametrize("ext", ["json", "jsonl"])
def test_json_ids_that_are_not_unicode_are_missing(tmp_path, ext):
    rows = ['{"user": "\\ud800x", "item": 1}', '{"user": "b", "item": 1}', '{"user": "c", "item": "\\udfff"}']
    body = "[" + ",".join(rows) + "]" if ext == "json" else "\n".join(rows)
    data = load_interactions(write_text(tmp_path / f"d.{ext}", body), **LOOSE)
    assert data.user_ids.tolist() == ["b"] and data.report.dropped_missing_id == 2


@pytest.mark.parametrize("body, match", [
    ('[{"user": 1, "item": 2}, {"user": 2, ', "not a valid JSON array"),
    ('[{"user": 1, "item": 2} {"user": 2, "item": 3}]', "expected ',' or ']'"),
    ("[]", "holds no JSON objects"),
])
def test_broken_json_arrays(tmp_path, body, match):
    with pytest.raises(DataError, match=match):
        load_interactions(write_text(tmp_path / "d.json", body), **LOOSE)


def test_truncated_gzip_names_the_path(tmp_path):
    # Regression: a bare OSError without the path.
    data = gzip.compress(("user,item\n" + "".join(f"{u},{u % 7}\n" for u in range(50_000))).encode())
    path = tmp_path / "cut.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read '.*cut.csv.gz' as csv \(gzip\).*truncated or damaged"):
        load_interactions(path, **LOOSE)


@pytest.mark.parametrize("content, message", [
    ("person,artist\n1,2\n", "no user column"),
    ("user,item\n" + "x" * 20_000 + ",1\n", "data row 1 is 20,000 bytes long"),
    ("user,user,item\n1,2,3\n", "repeated column names"),
])
def test_cli_reports_a_bad_file_in_one_line_with_status_2(tmp_path, capsys, content, message):
    from timbral.cli import main

    path = write_text(tmp_path / "bad.csv", content)
    assert main(["train", str(path), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
