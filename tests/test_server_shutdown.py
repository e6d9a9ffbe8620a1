"""``python -m timbral.server`` as operators run it: SIGTERM turns readiness off, then
lets in-flight requests finish."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import aiohttp
from server_support import ServerProcess


async def test_sigterm_lets_in_flight_requests_complete(model_dir, tmp_path):
    """Requests still being answered when SIGTERM lands get their answers.

    To hold requests in flight for a known time, the server's Redis is a socket that
    never answers: every cache lookup waits out the 1.5 s Redis deadline. (A request
    whose *body* is still arriving at SIGTERM is not covered: aiohttp stops reading
    from connections once shutdown starts.)
    """
    hanging: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hanging.append(writer)

    redis = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    env = {"TIMBRAL_MODEL_DIR": str(model_dir),
           "REDIS_URL": f"redis://127.0.0.1:{redis.sockets[0].getsockname()[1]}/0",
           "TIMBRAL_REDIS_TIMEOUT_SECONDS": "1.5", "TIMBRAL_REDIS_BREAKER_FAILURES": "100",
           "TIMBRAL_SHUTDOWN_TIMEOUT_SECONDS": "10"}
    server = ServerProcess(tmp_path, env)
    try:
        await asyncio.to_thread(server.start)
        async with aiohttp.ClientSession() as session:

            async def ask(user: str) -> tuple[int, dict]:
                url = f"{server.url}/api/v1/recommendations/{user}?k=3"
                async with session.get(url) as response:
                    return response.status, await response.json()

            in_flight = [asyncio.ensure_future(ask(f"u{i}")) for i in range(6)]
            await asyncio.sleep(0.5)
            assert not any(task.done() for task in in_flight)
            server.process.send_signal(signal.SIGTERM)
            answers = await asyncio.wait_for(asyncio.gather(*in_flight), 10)
        assert [status for status, _ in answers] == [200] * 6
        assert all(body["strategy"] == "nmf" for _, body in answers)
        assert server.process.wait(15) == 0
    finally:
        server.stop()
        for writer in hanging:
            writer.close()
        redis.close()
        await redis.wait_closed()


def test_sigterm_turns_readiness_to_503_before_the_listener_closes(model_dir, tmp_path):
    """Issue 10.7: during TIMBRAL_SHUTDOWN_DELAY_SECONDS load balancers see 503 on
    readiness while requests are still answered; then the process exits cleanly."""
    env = {"TIMBRAL_MODEL_DIR": str(model_dir), "TIMBRAL_SHUTDOWN_DELAY_SECONDS": "3"}
    with ServerProcess(tmp_path, env) as server:
        assert get(f"{server.url}/api/v1/health")[0] == 200
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 2
        while (answer := get(f"{server.url}/api/v1/health"))[0] != 503:
            assert time.monotonic() < deadline, "readiness did not turn 503 after SIGTERM"
            time.sleep(0.02)
        status, body = answer
        assert body["status"] == "unavailable" and body["reason"] == "shutting down"
        assert get(f"{server.url}/ping")[0] == 200
        status, body = get(f"{server.url}/api/v1/recommendations/u1?k=2")
        assert status == 200 and len(body["recommendations"]) == 2
        assert server.process.wait(20) == 0


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    return status, raw.decode() if raw == b"pong" else json.loads(raw)
