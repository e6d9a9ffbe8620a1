"""The access log: one line per request, in the formats of :mod:`timbral.logs`
(JSON lines for log collectors, short text lines for a person at a terminal).

Going through ``logging`` (a LogRecord, a lock, a formatter, a flushed write per
line) costs about 19 µs per request, as much as answering ``/ping`` itself. A request
only records its fields (a tuple); lines are formatted and written in batches instead,
every ``FLUSH_SECONDS``, at ``MAX_PENDING`` lines, and at shutdown. A JSON batch is
formatted column by column: the timestamps and the durations by NumPy, each text
column by one orjson call, and the lines interleaved from the columns and the
template's constant pieces by one ``bytes.join``: no Python runs per line (~0.8 µs a
line against ~1.8 µs with ``datetime_as_string`` of every stamp and ``round`` of every
duration, 3.2 µs through a dict and ``datetime``).
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
from numpy.typing import NDArray

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
    columns = [
        _timestamps(np.rint(np.array(stamps) * 1e6).astype(np.int64)),
        _strings(request_ids), _strings(methods), _strings(paths), _strings(routes),
        orjson.dumps(statuses)[1:-1].split(b","),
        _milliseconds(seconds),
    ]
    first, *between = _JSON_PIECES
    return b"".join(chain.from_iterable(zip(
        repeat(first), *chain.from_iterable(zip(columns, map(repeat, between), strict=True)))))


_DIGIT_PLACES = 10 ** np.arange(5, -1, -1)  # the six digits of the microseconds


def _timestamps(micros: NDArray[np.int64]) -> list[bytes]:
    """``2025-12-01T14:00:00.123456Z`` for each count of µs since the epoch.

    A batch spans a fraction of a second, so only its few distinct whole seconds go
    through ``datetime_as_string``; each line's text is put together as bytes, in one
    array (0.1 µs a line against 0.5 for ``datetime_as_string`` of every line).
    """
    seconds, fraction = np.divmod(micros, 1_000_000)
    distinct, which = np.unique(seconds, return_inverse=True)
    dates = np.datetime_as_string(distinct.view("datetime64[s]"), unit="s", timezone="UTC")
    text = np.empty((micros.size, 27), np.uint8)  # 19 of date and time, ".", 6 digits, "Z"
    text[:, :19] = np.frombuffer("".join(dates.tolist()).encode(), np.uint8).reshape(-1, 20)[which.ravel(), :19]
    text[:, 19] = ord(".")
    text[:, 20:26] = fraction[:, None] // _DIGIT_PLACES % 10 + ord("0")
    text[:, 26] = ord("Z")
    return text.view("S27").ravel().tolist()


def _milliseconds(seconds: tuple[float, ...]) -> list[bytes]:
    """Each duration in ms to the µs, as ``round(seconds * 1000, 3)`` prints it.

    Rounded as µs by NumPy (half to even, as ``round``) and divided back: the double
    nearest ``n / 1000`` prints as that decimal, so only an exact tie, where the two
    products round apart, could differ (by 1 µs). 0.15 µs a line against 0.8 for
    ``round`` per line.
    """
    return orjson.dumps(np.rint(np.array(seconds) * 1e6) / 1000,
                        option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")


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
