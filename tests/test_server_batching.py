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
    """Every miss queued (no inline scoring), so that concurrent requests can share a batch."""
    return await aiohttp_client(create_app(config(model_dir, executor_threads=1, inline_scoring_max_cost=0)))


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
    broken = SimpleNamespace(recommender=_BrokenRecommender(), scoring_cost=good.scoring_cost)
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
        self.scoring_cost = model.scoring_cost
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
    client = await aiohttp_client(create_app(config(model_dir, executor_threads=1, scorer_max_batch=1,
                                                    inline_scoring_max_cost=0)))
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
    ("TIMBRAL_INLINE_SCORING_MAX_COST", "-1", r"=-1: expected an integer >= 0: the largest n_items × n_components"
                                              r" scored on the event loop \(0 = never\)"),
    ("TIMBRAL_INLINE_SCORING_MAX_COST", "1e6", r"='1e6': expected an integer"),
    ("TIMBRAL_INLINE_SCORING_MAX_COST", "640000; rm -rf /", r"='640000; rm -rf /': expected an integer"),
])
def test_scorer_settings_are_validated_at_start_naming_the_variable_and_the_range(variable, raw, expected):
    with pytest.raises(ConfigError, match=variable + expected):
        Config.from_env({variable: raw})


def test_scorer_settings_are_read_from_the_environment():
    defaults = Config.from_env({})
    assert (defaults.scorer_max_batch, defaults.gil_switch_interval_seconds, defaults.inline_scoring_max_cost) == (
        64, 0.001, 1_000_000)
    chosen = Config.from_env({"TIMBRAL_SCORER_MAX_BATCH": "16", "TIMBRAL_GIL_SWITCH_INTERVAL_SECONDS": "0.002",
                              "TIMBRAL_INLINE_SCORING_MAX_COST": " 0 "})
    assert (chosen.scorer_max_batch, chosen.gil_switch_interval_seconds, chosen.inline_scoring_max_cost) == (
        16, 0.002, 0)


class _Threads:
    """An ``observe`` callback that records which thread scored each call, and its size."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def __call__(self, size: int, seconds: float) -> None:
        self.calls.append((threading.current_thread().name, size))


def _fields(answer) -> tuple:
    return answer.user_id, answer.strategy, answer.body, answer.cached_body


# known users, unknown ones, ids of the other kind, each k and exclude_seen both ways
ASKS = [(user, k, seen) for user in ("u0", "u7", "nobody", "u119", 42, "u3") for k in (1, 5, 60)
        for seen in (True, False)]


async def test_inline_answers_are_byte_identical_to_queued_ones(model_dir):
    """On the loop and on a scorer thread the same code answers: the same bytes, for known
    and unknown users, every k, ``exclude_seen`` both ways."""
    model = load_model(model_dir, Metrics())
    inline_threads, queued_threads = _Threads(), _Threads()
    inline = RecommendBatcher(1, inline_max_cost=model.scoring_cost, observe=inline_threads)
    queued = RecommendBatcher(1, inline_max_cost=model.scoring_cost - 1, observe=queued_threads)
    try:
        for user, k, seen in ASKS:
            assert _fields(await inline.recommend(model, user, k, seen)) == _fields(
                await queued.recommend(model, user, k, seen))
    finally:
        await inline.close()
        await queued.close()
    assert inline_threads.calls == [(threading.current_thread().name, 1)] * len(ASKS)
    assert {name for name, _ in queued_threads.calls} == {"timbral-batch-0"}
    assert inline.pending == 0 == queued.pending


@pytest.mark.parametrize("seen", [True, False])
async def test_inline_answers_equal_a_mixed_queued_batchs(model_dir, seen):
    """Known and unknown users scored in one queued batch answer as each alone on the loop
    (the same items and strategies; scores to float32 rounding, as any batch's)."""
    model = load_model(model_dir, Metrics())
    users = ["u1", "nobody", "u2", 7, "u1", "u118"]
    sizes: list[int] = []
    queued = RecommendBatcher(1, observe=lambda size, seconds: sizes.append(size))
    gate = _Gate(model)
    try:
        held = await _held(queued, gate)
        pending = [asyncio.ensure_future(queued.recommend(model, user, 3 + i, seen)) for i, user in enumerate(users)]
        await asyncio.sleep(0.01)
        gate.opened.set()
        batch = await asyncio.gather(*pending)
        await held
    finally:
        gate.opened.set()
        await queued.close()
    assert sizes == [1, len(users)]  # the gate's, then all of them in one scoring call
    inline = RecommendBatcher(1, inline_max_cost=10**12)
    try:
        alone = [await inline.recommend(model, user, 3 + i, seen) for i, user in enumerate(users)]
    finally:
        await inline.close()
    assert [(a.user_id, a.strategy) for a in alone] == [(b.user_id, b.strategy) for b in batch]
    assert [a.strategy for a in alone] == ["nmf", "popularity", "nmf", "popularity", "nmf", "nmf"]
    for one, many in zip(alone, batch, strict=True):  # a batch's sgemm rounds as float32 does
        if one.body is None:
            assert many.body is None is many.cached_body is one.cached_body
            continue
        one_body, many_body = orjson.loads(one.body), orjson.loads(many.body)
        assert [r["item_id"] for r in one_body["recommendations"]] == [
            r["item_id"] for r in many_body["recommendations"]]
        assert [r["score"] for r in one_body["recommendations"]] == pytest.approx(
            [r["score"] for r in many_body["recommendations"]], rel=1e-5)
        assert {**one_body, "recommendations": None} == {**many_body, "recommendations": None}


async def test_a_busy_scorer_or_a_large_model_sends_requests_to_the_queue(model_dir):
    """Inline only while nothing is queued or being scored (answers keep their order behind
    a busy scorer) and only for a model at most ``inline_max_cost``."""
    model = load_model(model_dir, Metrics())
    threads = _Threads()
    batcher = RecommendBatcher(1, inline_max_cost=model.scoring_cost, observe=threads)
    gate = _Gate(model)
    try:
        gate.scoring_cost = model.scoring_cost + 1  # one multiply-add over the bound: queued
        held = await _held(batcher, gate)
        behind = asyncio.ensure_future(batcher.recommend(model, "u5", 2, True))
        await asyncio.sleep(0.01)
        assert batcher.pending == 2 and not behind.done()
        gate.opened.set()
        await asyncio.gather(held, behind)
        assert (await batcher.recommend(model, "u5", 2, True)).strategy == "nmf"  # idle again: inline
    finally:
        gate.opened.set()
        await batcher.close()
    assert threads.calls == [("timbral-batch-0", 1), ("timbral-batch-0", 1), (threading.current_thread().name, 1)]


async def test_a_failing_inline_scoring_fails_its_request_only(model_dir):
    good = load_model(model_dir, Metrics())
    broken = SimpleNamespace(recommender=_BrokenRecommender(), scoring_cost=good.scoring_cost)
    batcher = RecommendBatcher(1, inline_max_cost=good.scoring_cost)
    try:
        with pytest.raises(MemoryError, match="scratch allocation failed"):
            await batcher.recommend(broken, "u1", 5, True)
        assert batcher.pending == 0
        assert (await batcher.recommend(good, "u1", 5, True)).strategy == "nmf"
    finally:
        await batcher.close()


async def test_inline_scoring_through_the_service_answers_as_queued_scoring(aiohttp_client, model_dir):
    inline = await aiohttp_client(create_app(config(model_dir)))  # the default bound: this model is inline
    queued = await aiohttp_client(create_app(config(model_dir, inline_scoring_max_cost=0)))
    for path in ("/api/v1/recommendations/u4?k=7", "/api/v1/recommendations/u4?k=7&exclude_seen=false",
                 "/api/v1/recommendations/nobody?k=3", "/api/v1/recommendations/u9"):
        answers = [await client.get(path) for client in (inline, queued)]
        assert [r.status for r in answers] == [200, 200]
        assert await answers[0].read() == await answers[1].read()
    metrics = (await (await inline.get("/metrics")).text()).splitlines()
    scored = next(line for line in metrics if line.startswith("timbral_scoring_batch_size_count"))
    assert float(scored.split()[-1]) == 4  # observed on the loop as on a scorer
