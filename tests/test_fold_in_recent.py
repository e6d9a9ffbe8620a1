"""Real-time personalisation: a known user's plays since training change their next answer."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from server_support import config

from timbral.recommender import Recommender
from timbral.registry import Registry
from timbral.server.app import create_app
from timbral.server.ingest import MAX_NOTIFY_BYTES, announcements
from timbral.server.recent import RecentEvents

TOKEN = "test-ingest-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_recommend_with_recent_folds_history_and_new_plays_together(model_dir):
    rec = Recommender.load(model_dir)
    row = rec.user_items[1]
    # History alone gives what training gave this user, up to the solver's tolerance.
    np.testing.assert_allclose(rec.model.fold_in(row.indices, row.data), rec.model.user_factors_[1],
                               atol=0.05)
    unseen = [int(i) for i in rec.item_ids if not rec.user_items[1, int(i) - 1000]][:5]
    before = rec.recommend("u1", 10)
    after = rec.recommend_with_recent("u1", {item: 20.0 for item in unseen}, 10)
    assert after.strategy == "fold_in" and after.user_id == "u1"
    assert [i for i, _ in after.items] != [i for i, _ in before.items]
    assert not set(unseen) & {i for i, _ in after.items}  # new plays count as seen
    history = set((rec.item_ids[row.indices]).tolist())
    assert not history & {i for i, _ in after.items}
    assert rec.recommend_with_recent("u1", {}, 10) == before
    assert rec.recommend_with_recent("new", [unseen[0]], 3).strategy == "fold_in"


def test_announcements_fit_one_notify_payload_each():
    users = [f"user-{i:06d}" for i in range(3000)]
    payloads = announcements(users)
    assert len(payloads) > 1 and all(len(p.encode()) <= MAX_NOTIFY_BYTES for p in payloads)
    assert [u for p in payloads for u in __import__("orjson").loads(p)] == users
    assert announcements([]) == []


def test_recent_events_are_bounded_and_digest_their_plays():
    recent = RecentEvents(max_users=2)
    recent.replace("a", {"1": 2.0})
    first = recent.get("a").digest
    recent.replace("a", {"1": 3.0})
    assert recent.get("a").digest != first
    recent.replace("b", {"1": 2.0})
    recent.replace("c", {"1": 2.0})
    assert recent.get("a") is None and len(recent) == 2
    assert recent.get("b").digest == first  # the same plays give the same key on every replica


@pytest.fixture
def production(database_url, model_dir):
    with Registry(database_url) as reg:
        reg.upgrade()
        reg.register(model_dir)
        reg.promote(1)
    return database_url


async def test_new_plays_change_that_users_answer_within_a_second_and_spare_the_others(
        aiohttp_client, production, model_dir, tmp_path):
    app = create_app(config(None, database_url=production, ingest_token=TOKEN,
                            model_cache_dir=tmp_path / "cache"))
    client = await aiohttp_client(app)

    async def answer(user: str) -> dict:
        response = await client.get(f"/api/v1/recommendations/{user}?k=10")
        assert response.status == 200
        return await response.json()

    for user in ("u1", "u2"):
        await answer(user)
        assert (await answer(user))["cached"] is True
    before_u1, before_u2 = await answer("u1"), await answer("u2")
    rec = Recommender.load(model_dir)
    unseen = [int(i) for i in rec.item_ids if not rec.user_items[1, int(i) - 1000]][:5]
    events = [{"event_id": f"p{n}", "user_id": "u1", "item_id": item, "value": 20}
              for n, item in enumerate(unseen)]
    response = await client.post("/api/v1/interactions", json={"events": events}, headers=AUTH)
    assert response.status == 200
    acknowledged = time.monotonic()
    while (after := await answer("u1"))["strategy"] != "fold_in":
        assert time.monotonic() - acknowledged < 1.0, "the new plays were not folded in within 1 s"
        await asyncio.sleep(0.02)
    assert after["cached"] is False and after["model_version"] == before_u1["model_version"]
    assert after["recommendations"] != before_u1["recommendations"]
    assert not set(unseen) & {r["item_id"] for r in after["recommendations"]}
    assert (await answer("u1"))["cached"] is True  # the new answer is cached under the new key
    other = await answer("u2")
    assert other["cached"] is True and other["recommendations"] == before_u2["recommendations"]
