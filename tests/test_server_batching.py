"""Micro-batching: concurrent requests scored together answer exactly as alone."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import orjson
import pytest
from server_support import N_USERS, config

from timbral.server import handlers
from timbral.server.app import create_app
from timbral.server.batching import RecommendBatcher
from timbral.server.metrics import Metrics
from timbral.server.state import load_model


@pytest.fixture
async def client(aiohttp_client, model_dir):
    return await aiohttp_client(create_app(config(model_dir, executor_threads=1)))


async def test_concurrent_requests_share_a_batch_and_match_single_scoring(client, model_dir):
    recommender = load_model(model_dir, Metrics()).recommender
    users = [f"u{i}" for i in range(0, N_USERS, 3)]
    ks = [1 + (i % 7) for i in range(len(users))]
    responses = await asyncio.gather(
        *(client.get(f"/api/v1/recommendations/{u}", params={"k": k}) for u, k in zip(users, ks, strict=True))
    )
    for user, k, response in zip(users, ks, responses, strict=True):
        assert response.status == 200
        body = await response.json()
        expected = recommender.recommend(user, k)
        assert [r["item_id"] for r in body["recommendations"]] == [item for item, _ in expected.items]
        assert [r["score"] for r in body["recommendations"]] == pytest.approx([s for _, s in expected.items], rel=1e-5)
        assert body["strategy"] == "nmf"
    metrics = (await (await client.get("/metrics")).text()).splitlines()
    batches = next(line for line in metrics if line.startswith("timbral_scoring_batch_size_count"))
    scored = next(line for line in metrics if line.startswith("timbral_scoring_batch_size_sum"))
    assert float(scored.split()[-1]) == len(users)
    assert float(batches.split()[-1]) < len(users), "no two requests were scored together"


async def test_unknown_users_in_a_batch_get_popular_items(client):
    responses = await asyncio.gather(
        client.get("/api/v1/recommendations/u1?k=3"), client.get("/api/v1/recommendations/nobody?k=3")
    )
    known, unknown = [await r.json() for r in responses]
    assert known["strategy"] == "nmf" and unknown["strategy"] == "popularity"
    assert len(unknown["recommendations"]) == 3


class _BrokenRecommender:
    """A recommender whose batch scoring fails, to inject the fault."""

    def rank_batch(self, user_ids, k, exclude_seen=True):
        raise MemoryError("scratch allocation failed")


async def test_a_failing_batch_fails_its_requests_and_the_batcher_recovers(model_dir):
    good = load_model(model_dir, Metrics())
    broken = SimpleNamespace(recommender=_BrokenRecommender())
    batcher = RecommendBatcher(1)
    try:
        results = await asyncio.gather(
            batcher.recommend(broken, "u1", 5, True),
            batcher.recommend(broken, "u2", 5, True),
            batcher.recommend(good, "u3", 5, True),
            return_exceptions=True,
        )
        assert isinstance(results[0], MemoryError) and isinstance(results[1], MemoryError)
        assert len(json.loads(results[2].body)["recommendations"]) == 5  # another model's batch was unaffected
        again = await batcher.recommend(good, "u1", 4, True)
    finally:
        await batcher.close()
    expected = good.recommender.recommend("u1", 4)
    assert [r["item_id"] for r in json.loads(again.body)["recommendations"]] == [item for item, _ in expected.items]



async def test_a_large_batch_answer_sent_in_slices_equals_the_whole_answer(client, monkeypatch):
    body = {"user_ids": [f"u{i}" for i in range(40)] + ["nobody"], "k": 50}
    whole = await client.post("/api/v1/recommendations", json=body)
    whole_bytes = await whole.read()
    assert len(whole_bytes) > 1000
    monkeypatch.setattr(handlers, "SEND_SLICE_BYTES", 1000)  # every batch answer is now sliced
    sliced = await client.post("/api/v1/recommendations", json=body, headers={"X-Request-ID": "slices-1"})
    assert sliced.status == 200 and sliced.headers["Content-Type"].startswith("application/json")
    assert sliced.headers["X-Request-ID"] == "slices-1"
    assert await sliced.read() == whole_bytes
    parsed = orjson.loads(whole_bytes)
    assert [r["strategy"] for r in parsed["results"]] == ["nmf"] * 40 + ["popularity"]
    metrics = await (await client.get("/metrics")).text()
    assert 'timbral_requests_total{method="POST",route="/api/v1/recommendations",status="200"} 2.0' in metrics
