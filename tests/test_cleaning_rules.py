"""The per-row rules have one owner (timbral.cleaning): the loader drops and counts the
rows that ingestion refuses, for the same reasons."""

from __future__ import annotations

import time

import numpy as np
import pytest

from timbral import load_interactions
from timbral.cleaning import epoch_scale, rating_faults, timestamp_faults
from timbral.exceptions import DataError
from timbral.server.ingest import RejectedEvents, parse_events

# value -> the report field that drops it (None: kept)
VALUES = [(2, None), (0, "dropped_zero_rating"), (-3, "dropped_negative_rating"),
          (1e300, "dropped_nonfinite_rating"), (4e38, "dropped_nonfinite_rating"), (3e38, None), (0.5, None)]
NOW = time.time()
# epoch number -> kept? (each read in its own unit, as one column of that unit is)
TIMES = [(1_714_564_800, True), (1_714_564_800_000, True), (1_714_564_800_000_000_000, True),
         (-5, False), (NOW + 3 * 86400, False), (NOW + 3600, True)]


def test_rating_faults_in_rule_order():
    values = np.array([1.0, np.nan, np.inf, 4e38, -1.0, 0.0, 2.0])
    ok = np.array([True, True, True, True, True, True, False])
    implicit = dict(rating_faults(values, ok, "implicit"))
    assert list(implicit) == ["dropped_invalid_rating", "dropped_nonfinite_rating", "dropped_negative_rating",
                              "dropped_zero_rating"]
    assert implicit["dropped_invalid_rating"].tolist() == [False] * 6 + [True]
    assert implicit["dropped_nonfinite_rating"].tolist() == [False, True, True, True, False, False, False]
    assert implicit["dropped_zero_rating"].tolist() == [False] * 5 + [True, False]
    assert "dropped_zero_rating" not in dict(rating_faults(values, ok, "explicit"))  # a zero star rating is data


def test_epoch_units_and_the_time_window():
    assert [epoch_scale(x) for x in (1.7e9, 1.7e12, 1.7e15, 1.7e18)] == [1.0, 1e-3, 1e-6, 1e-9]
    seconds = np.array([0.0, -1.0, NOW + 86399, NOW + 86401, np.nan])
    invalid, out_of_range = timestamp_faults(seconds, np.ones(5, bool), NOW)
    assert invalid[1].tolist() == [False, False, False, False, True]
    assert out_of_range[1].tolist() == [False, True, False, True, False]


def _events(**fields_by_row: list) -> dict:
    n = len(next(iter(fields_by_row.values())))
    return {"events": [{"event_id": f"e{j}", "user_id": f"u{j}", "item_id": j,
                        **{name: values[j] for name, values in fields_by_row.items()}} for j in range(n)]}


def _refused_rows(body: dict) -> list[int]:
    try:
        parse_events(body, max_events=100, max_id_length=256)
    except RejectedEvents as exc:
        return [row["index"] for row in exc.rejected]
    return []


def test_the_loader_drops_the_values_ingestion_refuses(tmp_path):
    path = tmp_path / "plays.csv"
    path.write_text("user,item,plays\n" + "".join(f"u{j},{j},{v!r}\n" for j, (v, _) in enumerate(VALUES)))
    report = load_interactions(path, min_user_interactions=1, max_value=None).report
    expected = {name: sum(1 for _, rule in VALUES if rule == name) for _, name in VALUES if name}
    assert {name: getattr(report, name) for name in expected} == expected
    assert report.nnz == sum(1 for _, rule in VALUES if rule is None)
    assert _refused_rows(_events(value=[v for v, _ in VALUES])) == [j for j, (_, rule) in enumerate(VALUES) if rule]


@pytest.mark.parametrize(("stamp", "kept"), TIMES)
def test_the_loader_drops_the_times_ingestion_refuses(tmp_path, stamp, kept):
    path = tmp_path / "plays.csv"
    path.write_text(f"user,item,plays,timestamp\nu0,1,1,{stamp}\nu0,2,1,{stamp}\n")
    if kept:
        assert load_interactions(path, min_user_interactions=1).report.dropped_out_of_range_timestamp == 0
    else:
        with pytest.raises(DataError, match="out_of_range_timestamp: 2"):
            load_interactions(path, min_user_interactions=1)
    assert _refused_rows(_events(timestamp=[stamp])) == ([] if kept else [0])


def test_hostile_times_and_values_are_refused_not_crashed_on():
    body = _events(value=[1, 1, 1, 1, -0.0, 3.4028236e38],
                   timestamp=[1e300, -1e300, "0001-01-01T00:00:00Z", "9999-12-31T23:59:59+14:00", 1, 1])
    with pytest.raises(RejectedEvents) as caught:
        parse_events(body, max_events=10, max_id_length=256)
    assert [row["reason"].split(",")[0] for row in caught.value.rejected] == [
        "timestamp 1e+300 is more than a day in the future", "timestamp -1e+300 is before 1970",
        "timestamp '0001-01-01T00:00:00Z' is before 1970", "timestamp '9999-12-31T23:59:59+14:00' is more than a "
        "day in the future", "value must be > 0 (a play count)", "value 3.4028236e+38 is not finite or does not fit "
        "a 32-bit float"]


def test_ingestion_says_which_rule_a_row_breaks():
    body = _events(value=[0, 1e300, 1, 1], timestamp=[1, 1, -5, NOW + 3 * 86400])
    with pytest.raises(RejectedEvents) as caught:
        parse_events(body, max_events=10, max_id_length=256)
    assert [row["reason"] for row in caught.value.rejected] == [
        "value must be > 0 (a play count), got 0",
        "value 1e+300 is not finite or does not fit a 32-bit float",
        "timestamp -5 is before 1970",
        f"timestamp {NOW + 3 * 86400!r} is more than a day in the future",
    ]
