"""The access log: one line per request, in the formats of :mod:`timbral.logs`
(JSON lines for log collectors, short text lines for a person at a terminal).

Going through ``logging`` (a LogRecord, a lock, a formatter, a flushed write per
line) costs about 19 µs per request, as much as answering ``/ping`` itself. A request
only records its fields (a tuple); lines are formatted and written in batches instead,
every ``FLUSH_SECONDS``, at ``MAX_PENDING`` lines, and at shutdown. A JSON batch is
formatted column by column: the timestamps by one NumPy call, each text column by one
orjson call, and the lines interleaved from the columns and the template's constant
pieces by one ``bytes.join``: only the duration's ``round`` runs per line in Python
(~1.6 µs a line against ~1.9 µs through a bytes template per line, 3.2 µs through a
dict and ``datetime``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from itertools import chain, repeat
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


# A line's constant pieces; the fields go between them, in this order: timestamp,
# request_id, method, path, route (JSON strings without their quotes), status, duration_ms.
_JSON_PIECES = (
    b'{"timestamp":"',
    b'","level":"INFO","service":"' + SERVICE.encode() + b'","logger":"timbral.server.access",'
    b'"message":"request","request_id":"',
    b'","method":"',
    b'","path":"',
    b'","route":"',
    b'","status":',
    b',"duration_ms":',
    b"}\n",
)


def _json_lines(pending: list[_Fields]) -> bytes:
    """JSON lines in the shape of :mod:`timbral.logs` (RFC 3339 UTC timestamps to the µs).

    Every text a client chose (request id, method, path) goes through orjson, so quotes
    and control characters are escaped.
    """
    stamps, request_ids, methods, paths, routes, statuses, seconds = zip(*pending, strict=True)
    micros = np.rint(np.array(stamps) * 1e6).astype(np.int64)
    columns = [
        _strings(np.datetime_as_string(micros.view("datetime64[us]"), unit="us", timezone="UTC").tolist()),
        _strings(request_ids), _strings(methods), _strings(paths), _strings(routes),
        orjson.dumps(statuses)[1:-1].split(b","),
        orjson.dumps([round(value * 1000, 3) for value in seconds])[1:-1].split(b","),
    ]
    first, *between = _JSON_PIECES
    return b"".join(chain.from_iterable(zip(
        repeat(first), *chain.from_iterable(zip(columns, map(repeat, between), strict=True)))))


def _strings(texts: tuple[str, ...] | list[str]) -> list[bytes]:
    """Each text as a JSON string without its quotes: one orjson call for the column.

    Splitting the array at ``","`` is exact: inside an encoded string every ``"`` is
    escaped as ``\\"``, so quote, comma, quote only ever separates two elements.
    """
    return orjson.dumps(texts)[2:-2].split(b'","')


def _text_lines(pending: list[_Fields]) -> bytes:
    return b"".join([_text_line(*fields) for fields in pending])


def _text_line(stamp: float, request_id: str, method: str, path: str, route: str, status: int,
               seconds: float) -> bytes:
    clock = datetime.fromtimestamp(stamp).strftime("%H:%M:%S")
    return (f"{clock} INFO  {method} {path} {status} {seconds * 1000:.1f}ms "
            f"request_id={request_id}\n").encode(errors="backslashreplace")
