"""``python -m server`` as operators run it: SIGTERM lets in-flight requests finish."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]


async def wait_until_up(port: int, process: subprocess.Popen, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/ping") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the server did not start"
            await asyncio.sleep(0.05)


async def test_sigterm_lets_in_flight_requests_complete(model_dir):
    port = free_port()
    env = {**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(port),
           "TIMBRAL_MODEL_DIR": str(model_dir), "LOG_LEVEL": "WARNING",
           "TIMBRAL_SHUTDOWN_TIMEOUT_SECONDS": "10"}
    env.pop("REDIS_URL", None)
    # Run from the checkout when testing sources; the installed package otherwise.
    cwd = None if os.environ.get("TIMBRAL_TEST_INSTALLED") else ROOT
    process = subprocess.Popen([sys.executable, "-m", "server"], env=env, cwd=cwd,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_until_up(port, process)
        # An in-flight request: headers sent, the body still on its way when SIGTERM lands.
        body = b'{"user_id": "u1", "k": 3}'
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /api/v1/recommendations HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:5])
        await writer.drain()
        await asyncio.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        writer.write(body[5:])
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        rest = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 200"), status_line + rest
        assert b'"strategy":"nmf"' in rest
        assert process.wait(15) == 0
        # It stopped accepting new connections.
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            pass
        else:
            raise AssertionError("the port still accepts connections after shutdown")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
        process.stderr.close()
