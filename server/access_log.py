"""The access log: one line per request, in the formats of :mod:`timbral.logs`
(JSON lines for log collectors, short text lines for a person at a terminal).

Going through ``logging`` (a LogRecord, a lock, a formatter, a flushed write per
line) costs about 19 µs per request, as much as answering ``/ping`` itself. A request
only records its fields (a tuple); lines are formatted and written in batches instead,
every ``FLUSH_SECONDS``, at ``MAX_PENDING`` lines, and at shutdown.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import IO

import orjson
from aiohttp import web

from timbral.logs import SERVICE

FLUSH_SECONDS = 0.25
MAX_PENDING = 2048

_Fields = tuple[float, str, str, str, str, int, float]


class AccessLog:
    def __init__(self, stream: IO[bytes] | None = None, *, log_format: str = "json") -> None:
        self._stream = stream if stream is not None else sys.stderr.buffer
        self._pending: list[_Fields] = []
        self._line = _json_line if log_format == "json" else _text_line

    def write(self, request_id: str, method: str, path: str, route: str, status: int,
              seconds: float) -> None:
        """Record one answered request (formatted later, off the request's path)."""
        self._pending.append((time.time(), request_id, method, path, route, status, seconds))
        if len(self._pending) >= MAX_PENDING:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        lines = bytearray()
        for fields in pending:
            lines += self._line(*fields)
        self._stream.write(lines)
        self._stream.flush()

    async def flushing(self, app: web.Application) -> AsyncIterator[None]:
        """Cleanup context: flush every FLUSH_SECONDS while serving, and once at the end."""
        async def loop() -> None:
            while True:
                await asyncio.sleep(FLUSH_SECONDS)
                self.flush()

        task = asyncio.get_running_loop().create_task(loop())
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        self.flush()


def _json_line(stamp: float, request_id: str, method: str, path: str, route: str, status: int,
               seconds: float) -> bytes:
    return orjson.dumps({
        # orjson writes RFC 3339 with "Z"
        "timestamp": datetime.fromtimestamp(stamp, UTC),
        "level": "INFO", "service": SERVICE, "logger": "timbral.server.access",
        "message": "request", "request_id": request_id, "method": method, "path": path,
        "route": route, "status": status, "duration_ms": round(seconds * 1000, 3),
    }, option=orjson.OPT_UTC_Z) + b"\n"


def _text_line(stamp: float, request_id: str, method: str, path: str, route: str, status: int,
               seconds: float) -> bytes:
    clock = datetime.fromtimestamp(stamp).strftime("%H:%M:%S")
    return (f"{clock} INFO  {method} {path} {status} {seconds * 1000:.1f}ms "
            f"request_id={request_id}\n").encode(errors="backslashreplace")
