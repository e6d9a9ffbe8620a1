"""The array encoder writes the very bytes orjson writes for ``Recommendations.to_dict``."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
import scipy.sparse as sp

from timbral import NMFModel
from timbral.recommender import RankedBatch, Recommender
from timbral.server import encoding
from timbral.server.encoding import encode_rows

HOSTILE_IDS = ['a"b', "c,d", '},{"item_id":1', "back\\slash", "new\nline", "é☃𝄞", "\x00nul", " ", "[]"]


def _recommender(item_ids: list | np.ndarray, n_users: int = 30, seed: int = 0) -> Recommender:
    rng = np.random.default_rng(seed)
    n_items = len(item_ids)
    user_items = sp.random(n_users, n_items, density=0.2, random_state=rng, format="csr", dtype=np.float32)
    user_items.data[:] = 1
    model = NMFModel(n_components=4, max_iter=3, tol=0, random_state=seed).fit(user_items)
    return Recommender(model, [f"u{i}" for i in range(n_users)], item_ids, user_items)


def _expected(recommender: Recommender, users: list, k: int) -> list[bytes]:
    return [orjson.dumps(recs.to_dict()["recommendations"]) for recs in recommender.recommend_batch(users, k)]


@pytest.mark.parametrize("item_ids", [np.arange(1000, 1040), [f"item-{i}" for i in range(31)] + HOSTILE_IDS],
                         ids=["int ids", "hostile str ids"])
def test_rows_are_byte_identical_to_orjson_of_the_dicts(item_ids):
    recommender = _recommender(item_ids)
    users = ["u3", "nobody", "u0", "u3", "u29"]  # an unknown user, a repeated one
    for k in (1, 7, len(item_ids)):
        rows = encode_rows(recommender.rank_batch(users, k))
        assert rows == _expected(recommender, users, k)
    # hostile ids survive a JSON round trip exactly
    decoded = [item["item_id"] for row in encode_rows(recommender.rank_batch(["u1"], 40)) for item in json.loads(row)]
    assert set(decoded) <= set(np.asarray(item_ids).tolist())


def test_limits_keep_a_prefix_of_each_row():
    recommender = _recommender(np.arange(50))
    batch = recommender.rank_batch(["u1", "u2", "u3"], 10)
    whole = [json.loads(row) for row in encode_rows(batch)]
    limited = [json.loads(row) for row in encode_rows(batch, [10, 3, 1])]
    assert limited == [whole[0], whole[1][:3], whole[2][:1]]
    assert [item["item_id"] for item in limited[1]] == [i for i, _ in recommender.recommend("u2", 3).items]


def test_empty_rows_and_answers_spanning_many_calls(monkeypatch):
    empty = RankedBatch(["x", "y"], ["nmf", "nmf"], np.zeros(0, np.int64), np.zeros(0), np.zeros(3, np.int64))
    assert encode_rows(empty) == [b"[]", b"[]"]
    recommender = _recommender(np.arange(200), n_users=10)
    assert encode_rows(recommender.rank_batch([], 5)) == []
    users = [f"u{i}" for i in range(10)]
    whole = encode_rows(recommender.rank_batch(users, 150))
    monkeypatch.setattr(encoding, "ITEMS_PER_CALL", 7)  # rows cut across C calls
    assert encode_rows(recommender.rank_batch(users, 150)) == whole == _expected(recommender, users, 150)


def test_rank_batch_rows_match_recommend():
    recommender = _recommender(np.arange(40))
    users = ["u5", "ghost", "u7"]
    batch = recommender.rank_batch(users, 6, exclude_items=[3, 4], items=list(range(30)))
    assert batch.strategies == ["nmf", "popularity", "nmf"]
    assert batch.offsets.tolist() == [0, 6, 12, 18]
    for user, recs in zip(users, batch.rows(), strict=True):
        alone = recommender.recommend(user, 6, exclude_items=[3, 4], items=list(range(30)))
        assert (recs.user_id, recs.strategy) == (alone.user_id, alone.strategy)
        assert [i for i, _ in recs.items] == [i for i, _ in alone.items]
        assert [s for _, s in recs.items] == pytest.approx([s for _, s in alone.items], rel=1e-5)
