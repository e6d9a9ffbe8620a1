"""Micro-batching: concurrent requests scored together answer exactly as alone."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import orjson
import pytest
from server_support import N_USERS, config

from timbral.server import handlers
from timbral.server.app import create_app
from timbral.server.batching import RecommendBatcher
from timbral.server.cache import recommendation_bodies
from timbral.server.config import Config, ConfigError
from timbral.server.errors import ApiError
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


class _Gate:
    """A model whose scoring waits until ``open`` is set: holds the one scorer thread busy
    while the test queues requests behind it."""

    def __init__(self, model) -> None:
        self.version = model.version
        self.opened = threading.Event()
        self.entered = threading.Event()
        self._recommender = model.recommender
        self.recommender = self

    def rank_batch(self, user_ids, k, exclude_seen=True):
        self.entered.set()
        assert self.opened.wait(10), "the test never opened the gate"
        return self._recommender.rank_batch(user_ids, k, exclude_seen=exclude_seen)


async def _held(batcher: RecommendBatcher, gate: _Gate) -> asyncio.Task:
    """Ask ``gate`` once and wait until the scorer thread is inside it."""
    task = asyncio.ensure_future(batcher.recommend(gate, "u0", 3, True))
    while not gate.entered.is_set():
        await asyncio.sleep(0.001)
    return task


async def _queued_behind(batcher: RecommendBatcher, gate: _Gate, asks: list) -> list:
    """The answers to ``asks`` (``(model, user)`` pairs, k = 4), all queued while the one
    scorer thread is held in ``gate``, so that it takes them together; closes ``batcher``."""
    try:
        held = await _held(batcher, gate)
        pending = [asyncio.ensure_future(batcher.recommend(model, user, 4, True)) for model, user in asks]
        await asyncio.sleep(0.01)
        gate.opened.set()
        answers = await asyncio.gather(*pending)
        await held
    finally:
        gate.opened.set()
        await batcher.close()
    return answers


def _expected_body(model, user: str, k: int, exclude_seen: bool = True) -> bytes:
    recs = model.recommender.recommend(user, k, exclude_seen=exclude_seen)
    items = orjson.dumps(recs.to_dict()["recommendations"], option=orjson.OPT_SERIALIZE_NUMPY)
    return recommendation_bodies(model.version, recs.user_id, recs.strategy, items)[0]


async def test_an_answer_is_byte_identical_to_the_recommenders_and_its_cached_form_differs_only_in_cached(
        model_dir):
    """One at a time (a batch of one is what ``Recommender.recommend`` scores); answers scored
    in larger batches agree to float32 rounding (the test above)."""
    model = load_model(model_dir, Metrics())
    batcher = RecommendBatcher(2)
    try:
        for user, k, seen in [(f"u{i}", 1 + i % 9, i % 4 != 0) for i in range(0, N_USERS, 7)]:
            answer = await batcher.recommend(model, user, k, seen)
            assert answer.body == _expected_body(model, user, k, seen)
            assert answer.cached_body == answer.body[: -len(b"false}")] + b"true}"
            assert answer.strategy == "nmf" and answer.user_id == user
    finally:
        await batcher.close()
    assert batcher.pending == 0


async def test_a_model_swapped_mid_batch_scores_each_request_with_its_own_model(model_dir, other_model_dir):
    old, new = load_model(model_dir, Metrics()), load_model(other_model_dir, Metrics())
    assert old.version != new.version
    sizes: list[int] = []
    batcher = RecommendBatcher(1, observe=lambda size, seconds: sizes.append(size))
    # a reload landed between the first two requests
    asks = [(old, "u1"), (new, "u1"), (old, "u2"), (new, "nobody"), (new, "u3")]
    answers = await _queued_behind(batcher, _Gate(old), asks)
    assert sizes == [1, 2, 3]  # the gate's batch, then one scoring call per model
    for (model, user), answer in zip(asks, answers, strict=True):
        if user == "nobody":
            assert answer.strategy == "popularity" and answer.body is None is answer.cached_body
            continue
        body = orjson.loads(answer.body)
        expected = model.recommender.recommend(user, 4)
        assert body["model_version"] == model.version
        assert [r["item_id"] for r in body["recommendations"]] == [item for item, _ in expected.items]
        assert [r["score"] for r in body["recommendations"]] == pytest.approx(
            [score for _, score in expected.items], rel=1e-5)


async def test_close_answers_what_is_queued_then_refuses_new_requests(model_dir):
    model = load_model(model_dir, Metrics())
    batcher = RecommendBatcher(1)
    gate = _Gate(model)
    held = await _held(batcher, gate)
    queued = [asyncio.ensure_future(batcher.recommend(model, f"u{i}", 2, True)) for i in range(5)]
    await asyncio.sleep(0.01)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.01)
    assert not closing.done()  # waits for the held batch and the queue behind it
    gate.opened.set()
    await asyncio.wait_for(closing, 10)
    assert all(task.done() for task in queued) and held.done()
    assert [orjson.loads(task.result().body)["user_id"] for task in queued] == [f"u{i}" for i in range(5)]
    with pytest.raises(ApiError, match="shutting down") as refused:
        await batcher.recommend(model, "u1", 2, True)
    assert refused.value.status == 503


async def test_a_full_queue_refuses_with_503_instead_of_growing(model_dir):
    model = load_model(model_dir, Metrics())
    batcher = RecommendBatcher(1, max_queued=3)
    gate = _Gate(model)
    try:
        held = await _held(batcher, gate)
        queued = [asyncio.ensure_future(batcher.recommend(model, f"u{i}", 2, True)) for i in range(2)]
        await asyncio.sleep(0.01)
        assert batcher.pending == 3
        with pytest.raises(ApiError, match="3 recommendations are already waiting") as refused:
            await batcher.recommend(model, "u9", 2, True)
        assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
        gate.opened.set()
        await asyncio.gather(held, *queued)
        assert batcher.pending == 0
        assert (await batcher.recommend(model, "u9", 2, True)).strategy == "nmf"  # room again
    finally:
        gate.opened.set()
        await batcher.close()


async def test_a_configured_scorer_batch_cap_is_honoured(aiohttp_client, model_dir):
    client = await aiohttp_client(create_app(config(model_dir, executor_threads=1, scorer_max_batch=1)))
    users = [f"u{i}" for i in range(12)]
    responses = await asyncio.gather(*(client.get(f"/api/v1/recommendations/{u}?k=3") for u in users))
    assert [r.status for r in responses] == [200] * len(users)
    metrics = (await (await client.get("/metrics")).text()).splitlines()
    batches = next(line for line in metrics if line.startswith("timbral_scoring_batch_size_count"))
    assert float(batches.split()[-1]) == len(users)  # never two requests in one scoring call


async def test_the_batcher_takes_at_most_max_batch_requests_at_once(model_dir):
    model = load_model(model_dir, Metrics())
    sizes: list[int] = []
    batcher = RecommendBatcher(1, max_batch=2, observe=lambda size, seconds: sizes.append(size))
    gate = _Gate(model)
    answers = await _queued_behind(batcher, gate, [(gate, f"u{i}") for i in range(5)])
    assert sizes == [1, 2, 2, 1]
    assert [orjson.loads(a.body)["user_id"] for a in answers] == [f"u{i}" for i in range(5)]


@pytest.mark.parametrize(("variable", "raw", "expected"), [
    ("TIMBRAL_SCORER_MAX_BATCH", "0", r"=0: expected an integer in 1\.\.4096"),
    ("TIMBRAL_SCORER_MAX_BATCH", "5000", r"=5000: expected an integer in 1\.\.4096"),
    ("TIMBRAL_SCORER_MAX_BATCH", "eight", r"='eight': expected an integer"),
    ("TIMBRAL_GIL_SWITCH_INTERVAL_SECONDS", "0", r"=0\.0: expected a number of seconds in 0\.000001\.\.0\.1"),
    ("TIMBRAL_GIL_SWITCH_INTERVAL_SECONDS", "5", r"=5\.0: expected a number of seconds in 0\.000001\.\.0\.1"),
    ("TIMBRAL_GIL_SWITCH_INTERVAL_SECONDS", "nan", r"=nan: expected a number of seconds in 0\.000001"),
])
def test_scorer_settings_are_validated_at_start_naming_the_variable_and_the_range(variable, raw, expected):
    with pytest.raises(ConfigError, match=variable + expected):
        Config.from_env({variable: raw})


def test_scorer_settings_are_read_from_the_environment():
    assert (Config.from_env({}).scorer_max_batch, Config.from_env({}).gil_switch_interval_seconds) == (64, 0.001)
    chosen = Config.from_env({"TIMBRAL_SCORER_MAX_BATCH": "16", "TIMBRAL_GIL_SWITCH_INTERVAL_SECONDS": "0.002"})
    assert (chosen.scorer_max_batch, chosen.gil_switch_interval_seconds) == (16, 0.002)
