"""Recommender: external ids in and out, fallbacks, fold-in, explanations, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_array_equal

from timbral.exceptions import ArtifactError, UnknownIdError, ValidationError
from timbral.generate import generate_interactions
from timbral.model import Explanation, NMFModel
from timbral.recommender import Recommendations, Recommender

USERS = [f"user-{j}" for j in range(120)]
ITEMS = (np.arange(60) * 7 + 1000).tolist()  # int ids that are not indices


@pytest.fixture(scope="module")
def model():
    table = generate_interactions(120, 60, 2400, seed=1)
    users = table["user_id"].to_numpy() - 1
    items = table["item_id"].to_numpy() - 1
    plays = table["plays"].to_numpy().astype(np.float32)
    user_items = sp.csr_matrix((plays, (users, items)), shape=(120, 60))
    return NMFModel(n_components=6, max_iter=8, random_state=0, n_threads=1).fit(user_items)


@pytest.fixture(scope="module")
def rec(model):
    return Recommender(model, USERS, ITEMS)


def test_known_user_matches_model_in_external_ids(rec, model):
    out = rec.recommend("user-3", k=5)
    ids, scores = model.recommend(3, 5)
    assert out.strategy == "nmf" and out.user_id == "user-3"
    assert [i for i, _ in out.items] == [ITEMS[j] for j in ids]
    assert [s for _, s in out.items] == pytest.approx(scores.tolist())
    seen = {ITEMS[j] for j in model.user_items_[3].indices}
    assert not seen & {i for i, _ in out.items}
    assert all(type(i) is int and type(s) is float for i, s in out.items)  # JSON-ready


def test_int_user_ids_accept_strings(model):
    rec = Recommender(model, np.arange(500, 620), [f"t{j}" for j in range(60)])
    assert rec.known_user(501) and rec.known_user("501") and not rec.known_user("x")
    assert rec.recommend("501", k=3) == rec.recommend(501, k=3)
    assert rec.recommend("501", k=3).user_id == 501
    assert rec.known_item("t5") and not rec.known_item(5)


def test_deny_and_allow_lists(rec):
    full = [i for i, _ in rec.recommend("user-3", k=10).items]
    denied = [i for i, _ in rec.recommend("user-3", k=10, exclude_items=full[:3] + ["nope"]).items]
    assert not set(full[:3]) & set(denied)
    allowed = rec.recommend("user-3", k=10, items=full[5:8], exclude_seen=False).items
    assert sorted(i for i, _ in allowed) == sorted(full[5:8])


def test_unknown_user_gets_popular_items(rec, model):
    counts = np.bincount(model.user_items_.indices, minlength=60)
    out = rec.recommend("stranger", k=4)
    assert out.strategy == "popularity" and out.user_id == "stranger"
    top = np.argsort(-counts, kind="stable")[:4]
    assert out.items == [(ITEMS[j], float(counts[j])) for j in top]
    assert rec.popular(4) == out.items
    skipped = rec.recommend("stranger", k=4, exclude_items=[ITEMS[top[0]]]).items
    assert ITEMS[top[0]] not in [i for i, _ in skipped]
    only = rec.recommend("stranger", k=4, items=[ITEMS[top[3]], ITEMS[top[1]]]).items
    assert [i for i, _ in only] == [ITEMS[top[1]], ITEMS[top[3]]]


def test_fold_in_for_unseen_user_with_recent_items(rec, model):
    recent = [ITEMS[j] for j in model.user_items_[5].indices]
    out = rec.recommend("new-listener", k=5, recent_items=recent + ["unknown-track"])
    assert out.strategy == "fold_in"
    assert not set(recent) & {i for i, _ in out.items}
    factors = model.fold_in(model.user_items_[5].indices)
    ids, _ = model.recommend_from_factors(factors, 5, exclude=model.user_items_[5].indices)
    assert [i for i, _ in out.items] == [ITEMS[j] for j in ids]
    weighted = rec.recommend("new-listener", k=5, recent_items={recent[0]: 40, recent[1]: 1})
    assert weighted.strategy == "fold_in"
    only_unknown = rec.recommend("new-listener", k=5, recent_items=["unknown-track"])
    assert only_unknown.strategy == "popularity"


def test_batch_equals_single(rec):
    users = ["user-1", "ghost", "user-7", "user-1"]
    batch = rec.recommend_batch(users, k=6)
    assert [r.user_id for r in batch] == users
    for r, user in zip(batch, users, strict=True):
        single = rec.recommend(user, k=6)
        assert r.strategy == single.strategy
        assert [i for i, _ in r.items] == [i for i, _ in single.items]
        assert [s for _, s in r.items] == pytest.approx([s for _, s in single.items], rel=1e-5)


@pytest.mark.parametrize("users", [["user-4", "user-9", "user-4"], ["ghost", "user-9", "spook"], ["ghost"], []],
                         ids=["known", "mixed", "unknown", "empty"])
@pytest.mark.parametrize("k", [5, 55], ids=["full rows", "padded rows"])
def test_rank_batch_equals_recommend_for_known_unknown_and_mixed_batches(rec, users, k):
    # k=55 of 60 items leaves fewer eligible items than k for users with > 5 seen items:
    # rows of different lengths, the path with a padded copy.
    batch = rec.rank_batch(users, k)
    assert batch.offsets[0] == 0 and batch.offsets.dtype == np.int64 and batch.scores.dtype == np.float64
    assert len(batch.item_ids) == batch.offsets[-1] == len(batch.scores)
    for row, user in zip(batch.rows(), users, strict=True):
        alone = rec.recommend(user, k=k)
        assert (row.user_id, row.strategy) == (alone.user_id, alone.strategy)
        assert [i for i, _ in row.items] == [i for i, _ in alone.items]
        assert [s for _, s in row.items] == pytest.approx([s for _, s in alone.items], rel=1e-5)
    if k == 55 and users and users[0] == "user-4":
        assert np.diff(batch.offsets).min() < k  # the path with -1 padding was taken


def test_similar_and_explain(rec, model):
    similar = rec.similar(ITEMS[4], k=5)
    ids, scores = model.similar_items(4, 5)
    assert similar == [(ITEMS[j], pytest.approx(float(s))) for j, s in zip(ids, scores, strict=True)]
    assert ITEMS[4] not in [i for i, _ in similar]
    explanation = rec.explain("user-3", str(ITEMS[2]))
    assert isinstance(explanation, Explanation)  # the one result type, as NMFModel.explain
    assert (explanation.user, explanation.item) == ("user-3", ITEMS[2])
    internal = model.explain(3, 2)
    assert [c for _, c in explanation.items] == [c for _, c in internal.items]
    assert [i for i, _ in explanation.items] == [ITEMS[j] for j, _ in internal.items]
    why = explanation.to_dict()
    assert why["user_id"] == "user-3" and why["item_id"] == ITEMS[2]
    assert why["score"] == pytest.approx(float(model.predict([3], [2])[0]), rel=1e-5)
    history = {ITEMS[j] for j in model.user_items_[3].indices}
    assert why["items"] and all(entry["item_id"] in history for entry in why["items"])
    assert set(why["factors"][0]) == {"factor", "contribution"}
    json.dumps(why)  # plain JSON types only


def test_unknown_ids_raise(rec):
    with pytest.raises(UnknownIdError, match=r"item_id 'nope' is not known \(60 item_ids\)"):
        rec.similar("nope")
    with pytest.raises(UnknownIdError, match="item_id 1 is not known"):
        rec.explain("user-3", 1)
    with pytest.raises(UnknownIdError, match="user_id 'ghost' is not known"):
        rec.explain("ghost", ITEMS[0])


def test_bad_arguments(rec, model):
    with pytest.raises(ValidationError, match="`k` must be a positive integer; got 0"):
        rec.recommend("user-1", k=0)
    with pytest.raises(ValidationError, match="`recent_items` weights must be finite and ≥ 0"):
        rec.recommend("x", recent_items={ITEMS[0]: -1})
    with pytest.raises(ValidationError, match="`user_ids` must be unique"):
        Recommender(model, ["a"] * 120, ITEMS)
    with pytest.raises(ValidationError, match=r"must match the model's 120 users and 60 items"):
        Recommender(model, USERS[:-1], ITEMS)


def test_to_dict():
    r = Recommendations("u", "popularity", [(3, 2.0)])
    assert r.to_dict() == {"user_id": "u", "strategy": "popularity", "recommendations": [{"item_id": 3, "score": 2.0}]}


def test_save_load_round_trip(tmp_path, rec):
    rec.metadata["metrics"] = {"ndcg@10": 0.3}
    rec.save(tmp_path / "model")
    back = Recommender.load(tmp_path / "model")
    assert back.model_version == rec.model_version
    assert back.metadata["metrics"] == {"ndcg@10": 0.3}
    assert_array_equal(back.model.user_factors_, rec.model.user_factors_)
    assert_array_equal(back.model.item_factors_, rec.model.item_factors_)
    assert_array_equal(back.user_ids, rec.user_ids)
    assert_array_equal(back.item_ids, rec.item_ids)
    assert (back.user_items != rec.user_items).nnz == 0
    assert back.model.get_params() == rec.model.get_params()
    for user in ["user-0", "user-50", "stranger"]:
        assert back.recommend(user, k=5) == rec.recommend(user, k=5)
    assert back.similar(ITEMS[1], 3) == rec.similar(ITEMS[1], 3)
    assert back.recommend("new", recent_items=ITEMS[:4]) == rec.recommend("new", recent_items=ITEMS[:4])


def test_load_refuses_damage(tmp_path, rec):
    rec.save(tmp_path / "model")
    (tmp_path / "model" / "arrays.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ArtifactError, match="does not match its sha256 checksum"):
        Recommender.load(tmp_path / "model")


# ------------------------------------------------ exact ids (issue 10 points 6, 10, 11)

HOSTILE_INT_USERS = [2**63 - 1, -(2**63), 1234567890123456789, 2**53, 2**53 + 1, 0, 7]
HOSTILE_STR_USERS = ["007", "7", "18446744073709551615", "Sigur Rós", "🎵 mix", "a,b", "x" * 256]


@pytest.mark.parametrize("users", [HOSTILE_INT_USERS, HOSTILE_STR_USERS], ids=["int", "str"])
def test_ids_round_trip_exactly_through_load_fit_save_load(tmp_path, users):
    from timbral import load_interactions

    items = ["007", "7", "1e3", "٤٢", "song,with,commas", "q\"uote"]
    rows = [{"user": u, "item": items[(j + n) % len(items)], "plays": 1 + j}
            for n, u in enumerate(users) for j in range(4)]
    path = tmp_path / "plays.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    data = load_interactions(path, min_user_interactions=1)
    assert data.users.kind == ("int" if isinstance(users[0], int) else "str") and data.items.kind == "str"
    assert sorted(data.user_ids.tolist()) == sorted(users) and sorted(data.item_ids.tolist()) == sorted(items)
    model = NMFModel(n_components=2, max_iter=3, random_state=0, n_threads=1).fit(data.user_items)
    Recommender(model, data.users, data.items, data.user_items).save(tmp_path / "model")
    back = Recommender.load(tmp_path / "model")
    assert back.user_ids.tolist() == data.user_ids.tolist() and back.item_ids.tolist() == data.item_ids.tolist()
    for user in users:
        row = back.user_map.index(user)
        assert back.user_ids[row] == user and type(back.user_map.external(row)) is type(user)
        out = back.recommend(user, k=3, exclude_seen=False)
        assert out.strategy == "nmf" and out.user_id == user
        assert {i for i, _ in out.items} <= set(items)
    for item in items:
        assert back.item_map.external(back.item_map.index(item)) == item
    assert back.item_map.lookup(["42", 7, "7.0"]).tolist() == [-1, data.item_index("7"), -1]


def test_int_user_ids_match_only_canonical_text(model):
    rec = Recommender(model, np.arange(500, 620), [f"t{j}" for j in range(60)])
    assert rec.known_user(501) and rec.known_user("501") and rec.known_user(np.int32(501))
    for text in ["+501", " 501", "501 ", "5_01", "0501", "٥٠١", "501.0"]:  # int() accepts the first six
        assert not rec.known_user(text), text
        out = rec.recommend(text, k=2)
        assert out.strategy == "popularity" and out.user_id == text
    assert not rec.known_user(501.0) and not rec.known_item(5)
    assert rec.user_map.parse("501") == 501 and rec.user_map.parse("+501") is None


def test_format_1_directories_with_fixed_width_ids_still_load(tmp_path, rec):
    import hashlib

    from timbral.artifact import _canonical

    directory = rec.save(tmp_path / "model")
    with np.load(directory / "arrays.npz", allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    assert "user_offsets" in arrays and "user_ids" not in arrays
    arrays["user_ids"] = np.array(USERS)  # what format 1 wrote: fixed-width <U8
    del arrays["user_offsets"], arrays["user_bytes"]
    del arrays["seen_indptr"], arrays["seen_indices"], arrays["seen_data"]  # format 1 had none
    np.savez(directory / "arrays.npz", **arrays)
    meta = json.loads((directory / "metadata.json").read_text())
    meta["format_version"] = 1
    meta["checksums"]["arrays.npz"] = hashlib.sha256((directory / "arrays.npz").read_bytes()).hexdigest()
    meta["checksums"]["metadata.json"] = hashlib.sha256(_canonical(meta)).hexdigest()
    (directory / "metadata.json").write_text(json.dumps(meta))
    old = Recommender.load(directory)
    assert old.user_ids.tolist() == USERS and old.recommend("user-3", k=4) == rec.recommend("user-3", k=4)
