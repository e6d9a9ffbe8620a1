"""Redis down or hanging: no request fails, none waits long, health says why, and the
service recovers by itself when Redis is back."""

from __future__ import annotations

import asyncio
import time

from server_support import ADMIN, config

from timbral.server.app import create_app
from timbral.server.keys import METRICS

TIMEOUT = 0.05  # the configured Redis deadline
# A request may wait for one Redis deadline on get and one on set, plus scoring and
# scheduling on 2 shared cores; without the deadline a hung Redis blocks forever.
MAX_WAIT = 1.0


def faulty_config(model_dir, redis_url):
    return config(model_dir, redis_url=redis_url, tier1_max_bytes=0,
                  redis_timeout_seconds=TIMEOUT, redis_connect_timeout_seconds=TIMEOUT,
                  breaker_failures=3, breaker_cooldown_seconds=0.2)


async def stream(client, seconds: float, users: int = 40) -> list[tuple[int, float]]:
    """Requests for ``seconds`` from 8 concurrent workers: [(status, latency)]."""
    results: list[tuple[int, float]] = []
    deadline = time.monotonic() + seconds

    async def worker(offset: int) -> None:
        n = offset
        while time.monotonic() < deadline:
            start = time.monotonic()
            response = await client.get(f"/api/v1/recommendations/u{n % users}?k=5")
            await response.read()
            results.append((response.status, time.monotonic() - start))
            n += 8

    await asyncio.gather(*(worker(i) for i in range(8)))
    return results


async def wait_for_health(client, status: str, within: float = 5.0) -> dict:
    deadline = time.monotonic() + within
    while True:
        body = await (await client.get("/api/v1/health", headers=ADMIN)).json()
        if body["status"] == status or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.05)


def redis_hits(app) -> float:
    return app[METRICS].cache_hits("2")


async def test_redis_killed_mid_stream_then_restarted(aiohttp_client, model_dir, redis_process):
    app = create_app(faulty_config(model_dir, redis_process.url))
    client = await aiohttp_client(app)
    deadline = time.monotonic() + 10
    while redis_hits(app) == 0:  # fill Redis until answers come back from it (a loaded
        assert time.monotonic() < deadline, "no answer came from Redis"  # CI needs a while)
        await stream(client, 0.2, users=8)

    async def kill_soon() -> None:
        await asyncio.sleep(0.15)
        redis_process.kill()

    results, _ = await asyncio.gather(stream(client, 0.6), kill_soon())
    assert {status for status, _ in results} == {200}
    assert max(latency for _, latency in results) < MAX_WAIT
    health = await wait_for_health(client, "degraded")
    assert health["status"] == "degraded"
    assert health["components"]["redis"]["status"] == "degraded"
    assert health["components"]["redis"]["reason"]
    assert app[METRICS].redis_errors.labels("get")._value.get() > 0

    redis_process.start()
    health = await wait_for_health(client, "ok")
    assert health["status"] == "ok", health
    before = redis_hits(app)
    await client.get("/api/v1/recommendations/u1?k=7")
    body = await (await client.get("/api/v1/recommendations/u1?k=7")).json()
    assert body["cached"] is True
    assert redis_hits(app) == before + 1


async def test_a_redis_that_accepts_but_never_answers(aiohttp_client, model_dir):
    connections: list[asyncio.StreamWriter] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # read nothing, answer nothing

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        app = create_app(faulty_config(model_dir, f"redis://127.0.0.1:{port}/0"))
        client = await aiohttp_client(app)
        results = await stream(client, 0.5)
        assert results and {status for status, _ in results} == {200}
        assert max(latency for _, latency in results) < MAX_WAIT
        health = await wait_for_health(client, "degraded")
        assert health["status"] == "degraded"
        assert "Timeout" in health["components"]["redis"]["reason"]
        # The breaker spares most requests the deadline: far fewer Redis calls than requests.
        assert app[METRICS].redis_errors.labels("get")._value.get() < len(results) / 2
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_redis_down_at_start_is_not_fatal(aiohttp_client, model_dir):
    from redis_server import free_port

    app = create_app(faulty_config(model_dir, f"redis://127.0.0.1:{free_port()}/0"))
    client = await aiohttp_client(app)
    response = await client.get("/api/v1/recommendations/u1")
    assert response.status == 200
    body = await (await client.get("/api/v1/health", headers=ADMIN)).json()
    assert body["status"] == "degraded"
    assert "ConnectionError" in body["components"]["redis"]["reason"] or \
        "Redis skipped" in body["components"]["redis"]["reason"]
