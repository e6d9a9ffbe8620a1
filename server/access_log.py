"""The access log: one line per request, in the formats of :mod:`timbral.logs`
(JSON lines for log collectors, short text lines for a person at a terminal).

Going through ``logging`` (a LogRecord, a lock, a formatter, a flushed write per
line) costs about 19 µs per request, as much as answering ``/ping`` itself. A request
only records its fields (a tuple); lines are formatted and written in batches instead,
every ``FLUSH_SECONDS``, at ``MAX_PENDING`` lines, and at shutdown. A JSON batch gets
its timestamps from one NumPy call and each line from a bytes template (2.1 µs a line
against 3.2 µs through a dict and ``datetime`` per line).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import IO

import numpy as np
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
        self._lines = _json_lines if log_format == "json" else _text_lines

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
        self._stream.write(self._lines(pending))
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


_JSON_LINE = (
    b'{"timestamp":"%b","level":"INFO","service":"' + SERVICE.encode() + b'",'
    b'"logger":"timbral.server.access","message":"request","request_id":%b,"method":%b,'
    b'"path":%b,"route":%b,"status":%d,"duration_ms":%b}\n'
)


def _json_lines(pending: list[_Fields]) -> bytes:
    """JSON lines in the shape of :mod:`timbral.logs` (RFC 3339 UTC timestamps to the µs).

    Every text a client chose (request id, method, path) goes through orjson, so quotes
    and control characters are escaped.
    """
    micros = np.rint(np.array([fields[0] for fields in pending]) * 1e6).astype(np.int64)
    stamps = np.datetime_as_string(micros.view("datetime64[us]"), unit="us", timezone="UTC").tolist()
    dumps = orjson.dumps
    return b"".join([
        _JSON_LINE % (stamp.encode(), dumps(request_id), dumps(method), dumps(path), dumps(route), status,
                      dumps(round(seconds * 1000, 3)))
        for stamp, (_, request_id, method, path, route, status, seconds) in zip(stamps, pending, strict=True)
    ])


def _text_lines(pending: list[_Fields]) -> bytes:
    return b"".join([_text_line(*fields) for fields in pending])


def _text_line(stamp: float, request_id: str, method: str, path: str, route: str, status: int,
               seconds: float) -> bytes:
    clock = datetime.fromtimestamp(stamp).strftime("%H:%M:%S")
    return (f"{clock} INFO  {method} {path} {status} {seconds * 1000:.1f}ms "
            f"request_id={request_id}\n").encode(errors="backslashreplace")
