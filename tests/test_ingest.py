"""POST /api/v1/interactions on a real PostgreSQL: durable acks, idempotency, backpressure,
validation, and the SIGTERM flush."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import numpy as np
import psycopg
import pytest
from redis_server import free_port
from server_support import ServerProcess, config

from timbral import load_interactions
from timbral.registry import Registry
from timbral.server.app import create_app
from timbral.server.config import Config, ConfigError
from timbral.server.ingest import RejectedEvents, parse_events

TOKEN = "test-ingest-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "/api/v1/interactions"


@pytest.fixture
def db(database_url):
    with Registry(database_url) as reg:
        reg.upgrade()
    return database_url


def events(n: int, prefix: str = "e", **fields: object) -> list[dict[str, object]]:
    return [{"event_id": f"{prefix}{i}", "user_id": f"u{i % 3}", "item_id": 1000 + i, "value": 2,
             "timestamp": "2024-05-01T12:00:00Z", **fields} for i in range(n)]


def stored(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT event_id, user_id, item_id, value, extract(epoch FROM occurred_at) "
                            "FROM timbral_interactions ORDER BY event_id").fetchall()


def ingest_config(url, model_dir, **overrides):
    return config(model_dir, database_url=url, ingest_token=TOKEN, **overrides)


async def test_a_batch_is_committed_before_the_answer(aiohttp_client, db, model_dir):
    client = await aiohttp_client(create_app(ingest_config(db, model_dir)))
    response = await client.post(URL, json={"events": events(3)}, headers=AUTH)
    assert response.status == 200
    assert await response.json() == {"received": 3, "accepted": 3, "duplicates": 0}
    assert stored(db) == [("e0", "u0", "1000", 2.0, 1714564800), ("e1", "u1", "1001", 2.0, 1714564800),
                          ("e2", "u2", "1002", 2.0, 1714564800)]


async def test_retries_are_idempotent_by_event_id(aiohttp_client, db, model_dir):
    client = await aiohttp_client(create_app(ingest_config(db, model_dir)))
    batch = {"events": events(50)}
    first = await asyncio.gather(*(client.post(URL, json=batch, headers=AUTH) for _ in range(5)))
    assert [r.status for r in first] == [200] * 5
    again = await (await client.post(URL, json=batch, headers=AUTH)).json()
    assert again == {"received": 50, "accepted": 0, "duplicates": 50}
    assert len(stored(db)) == 50
    metrics = await (await client.get("/metrics")).text()
    assert 'timbral_ingest_events_total{outcome="duplicate"} 50.0' in metrics
    assert "timbral_ingest_copy_seconds_count" in metrics


async def test_a_full_queue_answers_429_with_retry_after(aiohttp_client, db, model_dir):
    app = create_app(ingest_config(db, model_dir, ingest_max_events=10, ingest_queue_events=10,
                                   ingest_flush_seconds=1.0))
    client = await aiohttp_client(app)
    waiting = asyncio.ensure_future(client.post(URL, json={"events": events(8, "a")}, headers=AUTH))
    await asyncio.sleep(0.2)  # the first batch lingers in the queue
    throttled = await client.post(URL, json={"events": events(8, "b")}, headers=AUTH)
    assert throttled.status == 429 and throttled.headers["Retry-After"] == "1"
    assert (await throttled.json())["error"]["code"] == "ingest_queue_full"
    assert (await waiting).status == 200
    assert [row[0] for row in stored(db)] == [f"a{i}" for i in range(8)]
    retried = await client.post(URL, json={"events": events(8, "b")}, headers=AUTH)
    assert retried.status == 200


BAD_EVENTS = [
    ({"user_id": "u", "item_id": 1}, "event_id is missing"),
    ({"event_id": "x", "item_id": 1}, "user_id is missing"),
    ({"event_id": "x", "user_id": "u", "item_id": ""}, "item_id must not be empty"),
    ({"event_id": "x", "user_id": "u" * 300, "item_id": 1}, "user_id is 300 bytes long in UTF-8 (300 characters); "
                                                            "ids are at most 256 bytes"),
    ({"event_id": "x", "user_id": ["u"], "item_id": 1}, "user_id must be a string or an integer"),
    ({"event_id": "x", "user_id": True, "item_id": 1}, "user_id must be a string or an integer"),
    ({"event_id": "x", "user_id": "a\x00b", "item_id": 1}, "must not contain NUL"),
    ({"event_id": "x", "user_id": "u", "item_id": 1, "value": 0}, "value must be > 0"),
    ({"event_id": "x", "user_id": "u", "item_id": 1, "value": -3}, "value must be > 0"),
    ({"event_id": "x", "user_id": "u", "item_id": 1, "value": "5"}, "value must be a number"),
    ({"event_id": "x", "user_id": "u", "item_id": 1, "value": 1e300}, "does not fit a 32-bit float"),
    ({"event_id": "x", "user_id": "u", "item_id": 1, "timestamp": "yesterday"}, "is neither ISO 8601"),
    ({"event_id": "x", "user_id": "u", "item_id": 1, "timestamp": "20240501T120000"}, "is neither ISO 8601"),
    ({"event_id": "x", "user_id": "u", "item_id": 1, "timestamp": "2999-01-01T00:00:00Z"},
     "more than a day in the future"),
    ({"event_id": "x", "user_id": "u", "item_id": 1, "timestamp": -5}, "before 1970"),
    ({"event_id": "x", "user_id": "u", "item_id": 1, "plays": 3}, "unknown fields ['plays']"),
    ("not an object", "an event must be an object"),
]


async def test_bad_events_reject_the_batch_naming_each_row_and_reason(aiohttp_client, db, model_dir):
    client = await aiohttp_client(create_app(ingest_config(db, model_dir, ingest_max_events=100)))
    for event, reason in BAD_EVENTS:  # one at a time: a single bad row rejects a good batch
        response = await client.post(URL, json={"events": [*events(2), event]}, headers=AUTH)
        assert response.status == 422
        error = (await response.json())["error"]
        assert error["code"] == "invalid_events" and "nothing of this batch was written" in error["message"]
        assert len(error["rejected"]) == 1 and error["rejected"][0]["index"] == 2
        assert reason in error["rejected"][0]["reason"]
    response = await client.post(URL, json={"events": [event for event, _ in BAD_EVENTS]}, headers=AUTH)
    rejected = (await response.json())["error"]["rejected"]  # all together: every row is listed
    assert [(r["index"], reason in r["reason"]) for r, (_, reason) in zip(rejected, BAD_EVENTS, strict=True)] == [
        (index, True) for index in range(len(BAD_EVENTS))]
    assert rejected[0]["event_id"] is None and rejected[1]["event_id"] == "x"
    assert stored(db) == []


# ISO forms the loader reads (a zone with or without its colon, fractions, a bare date),
# epoch numbers as text (every CSV value is text), and one it refuses: the basic format
# Python's datetime.fromisoformat also reads, which ingestion accepted while files dropped it.
TIMESTAMP_TEXTS = ["2024-05-01T12:00:00Z", "2024-05-01 12:00:00", "2024-05-01T12:00:00.25+05:30",
                   "2024-05-01T12:00:00+0530", "2024-05-01", "1714564800", "20240501T120000"]


def test_an_event_and_a_file_line_with_the_same_timestamp_text_get_the_same_time(tmp_path):
    path = tmp_path / "plays.csv"
    path.write_text("user,item,plays,timestamp\n" + "".join(
        f"u,i{n},1,{text}\n" for n, text in enumerate(TIMESTAMP_TEXTS)))
    loaded = load_interactions(path)
    from_file = dict(zip(loaded.items.ids.tolist(), loaded.timestamps.toarray()[0].tolist(), strict=True))
    from_events = {}
    for n, text in enumerate(TIMESTAMP_TEXTS):
        event = {"event_id": "e", "user_id": "u", "item_id": f"i{n}", "timestamp": text}
        try:
            [parsed] = parse_events({"events": [event]}, max_events=1, max_id_length=256)
        except RejectedEvents as exc:
            assert "is neither ISO 8601" in exc.rejected[0]["reason"]
            continue
        from_events[parsed.item_id] = parsed.occurred_at.timestamp()
    assert sorted(from_events) == sorted(from_file) == [f"i{n}" for n in range(6)]
    for item, seconds in from_events.items():  # the loader keeps float32 times
        assert np.float32(seconds) == np.float32(from_file[item]), item
    assert from_events["i2"] == 1714545000.25


async def test_nonfinite_values_and_malformed_bodies(aiohttp_client, db, model_dir):
    client = await aiohttp_client(create_app(ingest_config(db, model_dir, ingest_max_events=5)))
    post = lambda data: client.post(URL, data=data, headers={**AUTH, "Content-Type": "application/json"})  # noqa: E731
    nan = await post(b'{"events": [{"event_id": "x", "user_id": "u", "item_id": 1, "value": NaN}]}')
    assert nan.status == 400  # not JSON (orjson refuses NaN)
    for body, status, message in [
        (b"{", 400, "not valid JSON"),
        (b"[]", 422, 'the body must be {"events": [...]}'),
        (b'{"events": []}', 422, "events must hold 1..5 events, got 0"),
        (b'{"events": [' + b",".join([b"{}"] * 6) + b"]}", 422, "events must hold 1..5 events, got 6"),
        (b'{"events": [{}], "extra": 1}', 422, "unknown fields ['extra']"),
    ]:
        response = await post(body)
        assert response.status == status, body
        assert message in (await response.json())["error"]["message"]
    assert stored(db) == []


async def test_the_ingest_token_guards_the_endpoint(aiohttp_client, db, model_dir):
    client = await aiohttp_client(create_app(ingest_config(db, model_dir)))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {config(None).admin_token}"}):
        response = await client.post(URL, json={"events": events(1)}, headers=headers)
        assert response.status == 401
    for spelling in (f"bearer {TOKEN}", f"Bearer  {TOKEN}"):  # read as the admin token is: scheme case, spaces
        response = await client.post(URL, json={"events": events(1, prefix=spelling[:7])},
                                     headers={"Authorization": spelling})
        assert response.status == 200, spelling
    assert len(stored(db)) == 2
    closed = await aiohttp_client(create_app(config(model_dir)))
    response = await closed.post(URL, json={"events": events(1)}, headers=AUTH)
    assert response.status == 403 and "set TIMBRAL_INGEST_TOKEN" in (await response.json())["error"]["message"]
    anonymous = await closed.post(URL, json={"events": events(1)})  # no credentials: 401 first, as HTTP asks
    assert anonymous.status == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert len(stored(db)) == 2


def test_ingestion_needs_a_database_and_a_long_token():
    with pytest.raises(ConfigError, match="TIMBRAL_INGEST_TOKEN is set but DATABASE_URL is not"):
        Config.from_env({"TIMBRAL_INGEST_TOKEN": TOKEN})
    message = r"TIMBRAL_INGEST_TOKEN='<redacted> \(12 characters\)': expected at least 16"
    with pytest.raises(ConfigError, match=message) as caught:
        Config.from_env({"TIMBRAL_INGEST_TOKEN": "short-secret", "DATABASE_URL": "postgresql://h/db"})
    assert "short-secret" not in str(caught.value)


async def test_database_down_answers_503_and_acknowledges_nothing(aiohttp_client, model_dir):
    url = f"postgresql://timbral@127.0.0.1:{free_port()}/nowhere"
    client = await aiohttp_client(create_app(ingest_config(url, model_dir)))
    response = await client.post(URL, json={"events": events(2)}, headers=AUTH)
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert (await response.json())["error"]["code"] == "database_unavailable"
    assert (await client.get("/api/v1/recommendations/u1")).status == 200


async def queued_events(session: aiohttp.ClientSession, url: str, n: int, *, within: float) -> None:
    """Wait until the service's ingest queue holds ``n`` events (its ``/metrics`` gauge): on a
    busy machine a fixed sleep may end before the last request has reached the server."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with session.get(f"{url}/metrics") as response:
            if f"timbral_ingest_queue_events {float(n)}" in await response.text():
                return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the ingest queue did not reach {n} events within {within} s")
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_sigterm_flushes_the_queue_and_loses_no_acknowledged_event(db, model_dir, tmp_path):
    """Requests queued when SIGTERM lands are written and answered before the process exits."""
    env = {"DATABASE_URL": db, "TIMBRAL_INGEST_TOKEN": TOKEN, "TIMBRAL_MODEL_DIR": str(model_dir),
           "TIMBRAL_INGEST_FLUSH_SECONDS": "4.0", "TIMBRAL_SHUTDOWN_TIMEOUT_SECONDS": "10"}
    server = ServerProcess(tmp_path, env)
    try:
        await asyncio.to_thread(server.start)
        async with aiohttp.ClientSession() as session:
            async def send(n: int) -> tuple[int, list[str]]:
                batch = events(20, prefix=f"b{n}-")
                try:
                    async with session.post(f"{server.url}{URL}", json={"events": batch},
                                            headers=AUTH) as response:
                        return response.status, [e["event_id"] for e in batch]
                except aiohttp.ClientError:
                    return 0, []

            sending = [asyncio.ensure_future(send(n)) for n in range(10)]
            await queued_events(session, server.url, 200, within=3.0)  # all ten wait (4 s linger)
            server.process.send_signal(signal.SIGTERM)
            results = await asyncio.gather(*sending)
        assert server.process.wait(30) == 0
    finally:
        server.stop()
    acknowledged = {event for status, ids in results if status == 200 for event in ids}
    assert [status for status, _ in results] == [200] * 10
    assert acknowledged <= {row[0] for row in stored(db)}
    assert len(stored(db)) == 200
