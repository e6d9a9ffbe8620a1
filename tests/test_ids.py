"""IdMap: exact ids, bounded string ids, npz-safe storage (timbral.ids; issue 10 points 6, 10, 11)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from timbral.exceptions import ArtifactError, UnknownIdError, ValidationError
from timbral.ids import INT64_MAX, INT64_MIN, MAX_ID_BYTES, IdMap, canonical_int

HOSTILE_TEXT = ["4_2", " 42", "42 ", "+42", "٤٢", "042", "0x2a", "42.0", "4e1", "", "-0", "−42"]


@pytest.fixture
def ints() -> IdMap:
    return IdMap.from_ids([42, 7, INT64_MAX, INT64_MIN, 0, -3], name="user_id")


def test_int_ids_match_only_their_canonical_text(ints):
    assert ints.kind == "int"
    assert ints.lookup([42, "42", np.int64(42), np.uint8(42)]).tolist() == [0, 0, 0, 0]
    assert ints.lookup(HOSTILE_TEXT).tolist() == [-1] * len(HOSTILE_TEXT)
    assert ints.lookup([42.0, True, None, b"42", [42]]).tolist() == [-1] * 5  # never through float
    assert ints.lookup(["0", "-3", str(INT64_MAX), str(INT64_MIN)]).tolist() == [4, 5, 2, 3]
    assert ints.lookup([2**63, str(2**63), 2**64 - 1, np.uint64(2**64 - 1), -(2**63) - 1]).tolist() == [-1] * 5
    for text in HOSTILE_TEXT:
        assert ints.parse(text) is None, text
    assert ints.parse("42") == 42 and ints.parse(str(INT64_MIN)) == INT64_MIN and ints.parse(str(2**63)) is None
    assert canonical_int("9223372036854775807") == INT64_MAX and canonical_int("9223372036854775808") is None


def test_string_ids_are_exact_and_ints_match_their_decimal_form():
    ids = IdMap.from_ids(["007", "7", "Beyoncé", "a b"], name="item_id")
    assert ids.kind == "str" and ids.ids.dtype == object
    assert ids.lookup(["007", "7", 7, "Beyoncé", "a b", " 7", "7 ", "Beyonce\u0301", b"7"]).tolist() == [
        0, 1, 1, 2, 3, -1, -1, -1, -1]
    assert ids.parse("007") == "007" and ids.parse("") is None
    assert ids.external([1, 0]) == ["7", "007"] and ids.external(2) == "Beyoncé"


def test_ids_above_2_53_stay_distinct():
    big = [2**53, 2**53 + 1, INT64_MAX - 1, INT64_MAX]
    ids, codes = IdMap.encode(np.array(big[::-1] * 2, dtype=np.int64), name="user_id")
    assert ids.ids.tolist() == big and codes.tolist() == [3, 2, 1, 0] * 2
    assert ids.lookup([2**53 + 1, INT64_MAX]).tolist() == [1, 3]


def test_uint64_beyond_int64_becomes_exact_strings():
    ids = IdMap.from_ids(np.array([2**64 - 1, 2**63, 5], dtype=np.uint64), name="user_id")
    assert ids.kind == "str" and ids.ids.tolist() == ["18446744073709551615", "9223372036854775808", "5"]
    assert ids.lookup([2**64 - 1, "9223372036854775808", 5]).tolist() == [0, 1, 2]
    small = IdMap.from_ids(np.array([3, 1], dtype=np.uint64), name="user_id")
    assert small.kind == "int" and small.ids.dtype == np.int64
    python_ints = IdMap.from_ids([2**64 - 1, 1], name="user_id")  # an object array of Python ints
    assert python_ints.kind == "str" and python_ints.lookup([2**64 - 1]).tolist() == [0]


@pytest.mark.parametrize(
    "ids, match",
    [
        ([1.0, 2.0], r"`user_id` must hold integer or string ids; position 0 holds 1.0 \(float\).*never through float"),
        (np.array([1.0, 2.0]), r"got dtype float64.*never through float: large ids would merge"),
        ([1, 2, 1], r"`user_ids` must be unique; 1 appear"),
        (["a", "b", "a"], r"`user_ids` must be unique; 'a' appear"),
        (["a", ""], r"empty id at position 1"),
        (["a", "\ud800x"], r"position 1 .* is not valid Unicode text \(a lone surrogate\)"),
        ([1, None], r"position 1 holds None"),
        ([[1, 2]], r"one-dimensional"),
        ([True, False], r"position 0 holds True \(bool\)"),
        (np.array([True]), r"got dtype bool"),
    ],
)
def test_bad_ids_are_refused(ids, match):
    with pytest.raises(ValidationError, match=match):
        IdMap.from_ids(ids, name="user_id")


def test_a_20000_character_id_is_refused_naming_its_position():
    ids = [f"user-{j}" for j in range(5)] + ["x" * 20_000]
    with pytest.raises(ValidationError, match=rf"id at position 5 is 20000 bytes long .*at most {MAX_ID_BYTES} bytes"):
        IdMap.from_ids(ids, name="user_id")
    with pytest.raises(ValidationError, match="at most 256 bytes") as caught:
        IdMap.encode(pa.array(ids, pa.large_string()), name="user_id")
    assert len(str(caught.value)) < 300  # the id is quoted cut short, not echoed whole
    multibyte = ["é" * 129]  # 129 characters, 258 bytes of UTF-8
    with pytest.raises(ValidationError, match="258 bytes long"):
        IdMap.from_ids(multibyte, name="user_id")
    assert len(IdMap.from_ids(multibyte, name="user_id", max_bytes=None)) == 1


def test_string_ids_take_memory_proportional_to_their_length():
    ids = [f"u{j}" for j in range(1000)] + ["x" * 20_000]
    stored = IdMap.from_ids(ids, name="user_id", max_bytes=None).to_arrays("user")
    assert set(stored) == {"user_offsets", "user_bytes"}
    assert stored["user_bytes"].nbytes == sum(len(s) for s in ids)  # 1.5 GiB as fixed-width U<20000>
    assert stored["user_offsets"].dtype == np.int64 and stored["user_offsets"].shape == (1002,)


@pytest.mark.parametrize("ids", [
    [5, INT64_MAX, INT64_MIN, 2**53 + 1],
    ["007", "7", "Sigur Rós", "🎵", "a,b", 'q"uote', "x" * 300],
])
def test_arrays_round_trip_through_npz_without_pickle(tmp_path, ids):
    original = IdMap.from_ids(ids, name="item_id", max_bytes=None)
    arrays = original.to_arrays("item")
    assert all(a.dtype != object for a in arrays.values())
    np.savez(tmp_path / "ids.npz", **arrays)
    with np.load(tmp_path / "ids.npz", allow_pickle=False) as npz:
        loaded = IdMap.from_arrays(dict(npz), "item", name="item_id")
    assert loaded.kind == original.kind and loaded.external(list(range(len(ids)))) == ids
    assert loaded.lookup(ids).tolist() == list(range(len(ids)))


def test_legacy_fixed_width_arrays_still_load():
    loaded = IdMap.from_arrays({"user_ids": np.array(["u2", "u10", "007"])}, "user", name="user_id")
    assert loaded.kind == "str" and loaded.lookup(["u10", "007", "7"]).tolist() == [1, 2, -1]


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({}, r"missing array"),
        ({"user_offsets": np.array([0, 5]), "user_bytes": np.frombuffer(b"ab", np.uint8)}, "do not delimit"),
        ({"user_offsets": np.array([0, 1, 2]), "user_bytes": np.frombuffer(b"aa", np.uint8)}, "must be unique"),
        ({"user_offsets": np.array([0, 2]), "user_bytes": np.frombuffer(b"\xff\xfe", np.uint8)}, "UTF-8|utf8|Invalid"),
        ({"user_offsets": np.array([0, 2], np.int32), "user_bytes": np.frombuffer(b"ab", np.uint8)}, "int64/uint8"),
        ({"user_ids": np.array([1.5])}, "expected 1-d int64"),
    ],
)
def test_damaged_arrays_are_an_artifact_error(arrays, match):
    with pytest.raises(ArtifactError, match=match):
        IdMap.from_arrays(arrays, "user", name="user_id")


def test_unknown_id_error_names_the_map_and_cuts_long_ids(ints):
    with pytest.raises(UnknownIdError, match=r"user_id '042' is not known \(6 user_ids\)"):
        ints.index("042")
    with pytest.raises(UnknownIdError, match=r"\.\.\. \(20000 characters\)") as caught:
        ints.index("9" * 20_000)
    assert len(str(caught.value)) < 200


def test_encode_sorts_distinct_ids_and_codes_each_value():
    ids, codes = IdMap.encode(pa.array(["b", "007", "b", "7"], pa.large_string()), name="item_id")
    assert ids.ids.tolist() == ["007", "7", "b"] and codes.tolist() == [2, 0, 2, 1]
    ids, codes = IdMap.encode(np.array([30, -1, 30]), name="item_id")
    assert ids.ids.tolist() == [-1, 30] and codes.tolist() == [1, 0, 1]
    with pytest.raises(ValidationError, match="missing ids"):
        IdMap.encode(pa.array(["a", None], pa.large_string()), name="item_id")


def test_lists_of_python_ints_take_the_fast_path_with_the_same_answers(ints):
    # The service looks up lists of Python ints (parsed URL ids); a value beyond int64
    # overflows the one-call conversion and must still map to -1, not raise or wrap.
    assert ints.lookup([42, 0, -3, 5, INT64_MAX, INT64_MIN]).tolist() == [0, 4, 5, -1, 2, 3]
    assert ints.lookup([42, 2**63, -(2**63) - 1, 7]).tolist() == [0, -1, -1, 1]
    assert ints.lookup([True, 42]).tolist() == [-1, 0]  # a bool is not an id, even beside ints
    assert ints.lookup((7, 42)).tolist() == [1, 0] and ints.lookup(iter([7])).tolist() == [1]
    strings = IdMap.from_ids(["007", "7"], name="item_id")
    assert strings.lookup([7, 7]).tolist() == [1, 1]  # "007" is not 7
    assert IdMap.from_ids(np.arange(5), name="user_id").lookup([4, 5, -1, 0]).tolist() == [4, -1, -1, 0]
