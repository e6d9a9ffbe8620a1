"""The access log's batched JSON lines: one valid line per request, whatever the client sent."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest

from timbral.server import access_log
from timbral.server.access_log import AccessLog

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
