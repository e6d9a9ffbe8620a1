"""The access log's batched JSON lines: one valid line per request, whatever the client sent."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
from aiohttp import web
from server_support import config

from timbral.server import access_log
from timbral.server.access_log import AccessLog
from timbral.server.app import add_routes, create_app

HOSTILE = ['a"b', "back\\slash", "tab\there", "new\nline", "\x00\x1f", "é☃𝄞", "}\n{\"level\":\"ERROR\"}"]


def test_json_lines_escape_whatever_the_client_sent(monkeypatch):
    stream = io.BytesIO()
    log = AccessLog(stream)
    stamp = 1_764_597_600.123456  # 2025-12-01T14:00:00.123456Z
    for i, text in enumerate(HOSTILE):
        monkeypatch.setattr(access_log.time, "time", lambda i=i: stamp + i)  # a known clock
        log.write(f"id-{text}", text, f"/api/v1/recommendations/{text}", "/api/v1/recommendations/{user_id}",
                  404, 0.0012345)
    monkeypatch.undo()
    log.flush()
    lines = stream.getvalue().decode().splitlines()
    assert len(lines) == len(HOSTILE)  # no text a client chose splits a line
    for i, (line, text) in enumerate(zip(lines, HOSTILE, strict=True)):
        entry = json.loads(line)
        assert entry["request_id"] == f"id-{text}" and entry["method"] == text
        assert entry["path"] == f"/api/v1/recommendations/{text}"
        assert entry["status"] == 404 and entry["duration_ms"] == 1.234 and entry["level"] == "INFO"
        written = datetime.strptime(entry["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert written.timestamp() == pytest.approx(stamp + i, abs=2e-6)


def test_nothing_pending_writes_nothing():
    stream = io.BytesIO()
    AccessLog(stream).flush()
    assert stream.getvalue() == b""


def _reference_lines(pending) -> bytes:
    """The lines as one orjson call per field writes them (the format's definition)."""
    lines = []
    for stamp, request_id, method, path, route, status, seconds in pending:
        when = datetime.fromtimestamp(round(stamp * 1e6) / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lines.append(
            b'{"timestamp":"' + when.encode() + b'","level":"INFO","service":"timbral-ml",'
            b'"logger":"timbral.server.access","message":"request","request_id":' + orjson.dumps(request_id)
            + b',"method":' + orjson.dumps(method) + b',"path":' + orjson.dumps(path) + b',"route":'
            + orjson.dumps(route) + b',"status":' + str(status).encode() + b',"duration_ms":'
            + orjson.dumps(round(seconds * 1000, 3)) + b"}\n")
    return b"".join(lines)


# texts that could fool a split of the encoded column: the separator itself, escaped
# quotes beside commas, a trailing backslash, empty texts
SPLIT_HOSTILE = ['","', '\\",\\"', "end\\", "", '"', ",", '"",""', "\\", '\\"', "a\",\"b"]


def test_batched_json_lines_are_byte_identical_to_one_line_at_a_time():
    stamp = 1_764_597_600.0
    texts = HOSTILE + SPLIT_HOSTILE
    pending = [(stamp + i * 0.000_001_3, f"id-{text}", text or "GET", f"/x/{text}", text, 200 + i % 400,
                i * 0.000_123_456_7) for i, text in enumerate(texts)]
    pending.append((stamp, "", "", "", "", 599, 12.3456789))
    assert access_log._json_lines(pending) == _reference_lines(pending)
    assert access_log._json_lines(pending[:1]) == _reference_lines(pending[:1])  # a batch of one


def test_a_batch_across_seconds_and_days_with_any_duration_matches_the_reference():
    """Timestamps are put together from the batch's distinct whole seconds, durations
    rounded by NumPy: the bytes are still those of one line at a time, across a second,
    a day and a year boundary, for stamps in any order (the clock may step back), and
    for durations from nanoseconds to minutes."""
    rng = np.random.default_rng(14)
    midnight = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    stamps = np.concatenate([midnight + rng.uniform(-2.5, 2.5, 300), [midnight, midnight - 1e-6, 0.0, 1e-6]])
    durations = rng.random(stamps.size) * 10.0 ** rng.uniform(-9, 2.5, stamps.size)
    pending = [(float(stamp), f"id-{i}", "GET", "/ping", "/ping", 200, float(seconds))
               for i, (stamp, seconds) in enumerate(zip(stamps, durations, strict=True))]
    assert access_log._json_lines(pending) == _reference_lines(pending)


def test_a_full_buffer_is_written_at_once(monkeypatch):
    monkeypatch.setattr(access_log, "MAX_PENDING", 3)
    stream = io.BytesIO()
    log = AccessLog(stream)
    for i in range(7):
        log.write(f"r{i}", "GET", "/ping", "/ping", 200, 0.001)
    assert [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()] == [
        f"r{i}" for i in range(6)]  # two full buffers; the seventh line waits for the next flush


async def test_every_line_is_written_in_order_at_shutdown_failed_requests_too(aiohttp_client, model_dir, capfd,
                                                                            monkeypatch):
    """Nothing is lost when the service stops between two periodic flushes, nor for a
    request whose handler crashed."""
    monkeypatch.setattr(access_log, "FLUSH_SECONDS", 3600.0)  # only the shutdown flush writes

    async def crash(request):
        raise RuntimeError("the handler failed")

    app = create_app(config(model_dir, log_level="INFO"))
    add_routes(app, [web.get("/crash", crash)])
    client = await aiohttp_client(app)
    asked = []
    for i in range(40):
        path = ("/ping", "/crash", "/api/v1/recommendations/u3", "/nowhere")[i % 4]
        response = await client.get(path, headers={"X-Request-ID": f"order-{i}"})
        asked.append((f"order-{i}", path, {"/ping": 200, "/crash": 500, "/nowhere": 404}.get(path, 200)))
        assert response.status == asked[-1][2]
    await asyncio.sleep(0.05)
    assert not _access_lines(capfd.readouterr().err)  # still buffered
    await client.close()  # shutdown: the cleanup context flushes
    lines = [json.loads(line) for line in _access_lines(capfd.readouterr().err)]
    assert [(line["request_id"], line["path"], line["status"]) for line in lines] == asked


def _access_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if '"order-' in line and '"timbral.server.access"' in line]
