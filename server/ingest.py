"""``POST /api/v1/interactions``: validate play events and write them to PostgreSQL.

Guarantee (exact): a ``200`` means every event of the batch is committed in
``timbral_interactions`` — the answer is sent only after the COPY's transaction
commits. A batch is all or nothing: one invalid event rejects the whole batch (``422``
listing each bad row and why) and nothing of it is written. Retrying is always safe:
``event_id`` is the primary key and rows are inserted with ``ON CONFLICT DO NOTHING``,
so a retried batch counts once (its events come back as ``duplicates``). ``429``
(queue full) and ``503`` (database unreachable) mean nothing was acknowledged: retry
after ``Retry-After`` seconds. On SIGTERM the service stops taking connections,
lets waiting requests finish while the writer keeps flushing, then flushes whatever
is still queued before it exits.

Batching: requests wait in a bounded in-memory queue (``TIMBRAL_INGEST_QUEUE_EVENTS``
events); one writer task takes up to ``TIMBRAL_INGEST_BATCH_EVENTS`` of them, after
lingering ``TIMBRAL_INGEST_FLUSH_SECONDS`` for company, COPYs them into a temporary
table and moves them into ``timbral_interactions`` in one transaction, which also
announces the users concerned (``NOTIFY timbral_interactions``) so that every replica
folds their new plays into their next answer.

Validation applies the rules of ``timbral.load_interactions``, from their owners: ids
present, strings or integers of at most ``TIMBRAL_MAX_ID_LENGTH`` bytes of UTF-8
(:func:`timbral.ids.check_id_text`), and no NUL (PostgreSQL text cannot hold one); a
play count (default 1) and a timestamp (ISO 8601 text or epoch seconds, with ms/µs/ns
recognised by each number's magnitude; text is read by the loader's own parser, so a
file line and an event with the same text get the same time; default now) that pass the loader's rating and
timestamp rules (:func:`timbral.cleaning.rating_faults`, ``timestamp_faults``): a
finite number > 0 that fits a 32-bit float, a time from 1970 to a day ahead of the clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
from prometheus_client import Counter, Gauge, Histogram

from timbral.cleaning import epoch_scale, rating_faults, timestamp_faults
from timbral.exceptions import ValidationError
from timbral.ids import check_id_text
from timbral.io.coerce import to_float, to_seconds

from .errors import ApiError
from .metrics import LATENCY_BUCKETS, Metrics
from .schemas import bearer_credentials, describe, token_matches

log = logging.getLogger("timbral.server.ingest")

INTERACTIONS_CHANNEL = "timbral_interactions"  # replicas refresh these users' recent plays
MAX_NOTIFY_BYTES = 7000  # PostgreSQL caps a NOTIFY payload just under 8000 bytes
EVENT_FIELDS = frozenset({"event_id", "user_id", "item_id", "value", "timestamp"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What ingestion says when a row breaks one of the loader's rules (timbral.cleaning).
_REASONS = {
    "dropped_nonfinite_rating": "value {value!r} is not finite or does not fit a 32-bit float",
    "dropped_negative_rating": "value must be > 0 (a play count), got {value!r}",
    "dropped_zero_rating": "value must be > 0 (a play count), got {value!r}",
    "dropped_invalid_timestamp": "timestamp must be finite, got {timestamp!r}",
    "dropped_out_of_range_timestamp": "timestamp {timestamp!r} is {when}",
}


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    value: float
    occurred_at: datetime


@dataclass(slots=True)
class _Pending:
    events: list[Event]
    done: asyncio.Future[set[str]]  # the event ids inserted by the flush that took it


def check_token(header: str, token: str | None) -> None:
    """Bearer ``TIMBRAL_INGEST_TOKEN``: 401 without bearer credentials (whether or not ingestion
    is on, as HTTP asks), 403 when ingestion is off, 401 when the token does not match."""
    given = bearer_credentials(header)
    unauthorized = ApiError(401, "unauthorized", "send Authorization: Bearer <TIMBRAL_INGEST_TOKEN>",
                            headers={"WWW-Authenticate": 'Bearer realm="timbral-ingest"'})
    if not given:
        raise unauthorized
    if token is None:
        raise ApiError(403, "ingest_disabled",
                       "interaction ingestion is disabled; set TIMBRAL_INGEST_TOKEN and DATABASE_URL")
    if not token_matches(given, token):
        raise unauthorized


def _id(event: dict[str, Any], name: str, max_length: int) -> str:
    value = event.get(name)
    if value is None:
        raise ValueError(f"{name} is missing")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"{name} must be a string or an integer, got {describe(value)}")
    try:
        text = check_id_text(str(value), name=name, max_bytes=max_length)
    except ValidationError as exc:
        raise ValueError(str(exc)) from None
    if "\x00" in text:
        raise ValueError(f"{name} must not contain NUL characters")
    return text


def _value(raw: Any) -> float:
    """The play count as a number (default 1, as a file without a rating column); the
    loader's rules on it are applied to the whole batch."""
    if raw is None:
        return 1.0
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"value must be a number, got {describe(raw)}")
    return float(raw)


def _seconds(raw: Any) -> float | str:
    """Epoch seconds of a numeric timestamp (scaled by its own magnitude); text is
    returned as is, to be read with its batch by :func:`_read_texts`."""
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"timestamp must be ISO 8601 text or epoch seconds, got {describe(raw)}")
    if isinstance(raw, str):
        return raw
    seconds = float(raw)
    return seconds * epoch_scale(seconds) if math.isfinite(seconds) else seconds


def _read_texts(texts: list[str]) -> list[float | None]:
    """Epoch seconds of timestamp texts by the loader's own parser
    (:func:`timbral.io.coerce.to_seconds`: ISO 8601, or epoch numbers as in a CSV file),
    so an event and a file line with the same text get the same time; None where
    the text is neither."""
    if not texts:
        return []
    column = pa.array(texts, pa.large_string())
    seconds, parsed, _ = to_seconds(column)
    numeric = to_float(column, "timestamp")[1]
    return [None if not ok else value * epoch_scale(value) if is_number and math.isfinite(value) else value
            for value, ok, is_number in zip(seconds.tolist(), parsed.tolist(), numeric.tolist(), strict=True)]


@dataclass(slots=True)
class _Row:
    """An event whose fields parsed, before the loader's rules are applied to its batch."""

    index: int
    raw: dict[str, Any]
    ids: tuple[str, str, str]
    value: float
    seconds: float | str  # text until its batch is read (_read_texts)


def _parse_row(index: int, raw: Any, now: datetime, max_id_length: int) -> _Row:
    """The fields of one event, typed; ValueError says what is wrong with it."""
    if not isinstance(raw, dict):
        raise ValueError(f"an event must be an object, got {describe(raw)}")
    extra = set(raw) - EVENT_FIELDS
    if extra:
        raise ValueError(f"unknown fields {sorted(extra)}; expected {sorted(EVENT_FIELDS)}")
    ids = (_id(raw, "event_id", max_id_length), _id(raw, "user_id", max_id_length),
           _id(raw, "item_id", max_id_length))
    value = _value(raw.get("value"))
    stamp = raw.get("timestamp")
    return _Row(index, raw, ids, value, (now - _EPOCH).total_seconds() if stamp is None else _seconds(stamp))


def _first_faults(rows: list[_Row], now: datetime) -> list[str | None]:
    """Per row, the report field of the first loader rule (rating, then timestamp) it breaks."""
    ok = np.ones(len(rows), bool)
    faults = [*rating_faults(np.array([row.value for row in rows]), ok, "implicit"),
              *timestamp_faults(np.array([row.seconds for row in rows]), ok, (now - _EPOCH).total_seconds())]
    first: list[str | None] = [None] * len(rows)
    for name, bad in reversed(faults):
        for position in np.flatnonzero(bad).tolist():
            first[position] = name
    return first


def parse_events(body: Any, *, max_events: int, max_id_length: int) -> list[Event]:
    """``{"events": [...]}`` → events, or 422 listing every bad row and its reason."""
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise ApiError(422, "invalid_request",
                       f'the body must be {{"events": [...]}}, got {describe(body)}')
    raw_events = body["events"]
    if not 1 <= len(raw_events) <= max_events:
        raise ApiError(422, "invalid_request",
                       f"events must hold 1..{max_events} events, got {len(raw_events)}; split the batch")
    unknown = set(body) - {"events"}
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown fields {sorted(unknown)}; send only \"events\"")
    now = datetime.now(UTC)
    rows: list[_Row] = []
    rejected: dict[int, dict[str, Any]] = {}

    def reject(index: int, raw: Any, reason: str) -> None:
        event_id = raw.get("event_id") if isinstance(raw, dict) else None
        rejected[index] = {"index": index, "event_id": event_id if isinstance(event_id, str | int) else None,
                           "reason": reason}

    for index, raw in enumerate(raw_events):
        try:
            rows.append(_parse_row(index, raw, now, max_id_length))
        except ValueError as exc:
            reject(index, raw, str(exc))
    texts = [row for row in rows if isinstance(row.seconds, str)]
    for row, seconds in zip(texts, _read_texts([row.seconds for row in texts]), strict=True):
        if seconds is None:
            reject(row.index, row.raw, f"timestamp {describe(row.seconds)} is neither ISO 8601 (2024-05-01T12:00:00Z) "
                                         "nor epoch seconds")
        row.seconds = seconds
    rows = [row for row in rows if row.index not in rejected]
    events = []
    for row, fault in zip(rows, _first_faults(rows, now), strict=True):
        if fault is not None:
            when = "before 1970" if row.seconds < 0 else "more than a day in the future"
            reject(row.index, row.raw, _REASONS[fault].format(
                value=row.raw.get("value"), timestamp=row.raw.get("timestamp"), when=when))
        else:
            events.append(Event(*row.ids, row.value, _EPOCH + timedelta(seconds=row.seconds)))
    if rejected:
        raise RejectedEvents([rejected[index] for index in sorted(rejected)], len(raw_events))
    return events


class RejectedEvents(ApiError):
    """422 for a batch with invalid events; ``rejected`` lists ``{index, event_id, reason}``.

    The handler adds ``rejected`` beside ``code`` and ``message`` in the error object.
    """

    def __init__(self, rejected: list[dict[str, Any]], total: int) -> None:
        super().__init__(422, "invalid_events",
                         f"{len(rejected)} of {total} events are invalid; nothing of this batch was "
                         "written; fix the rows listed in \"rejected\" and send the batch again")
        self.rejected = rejected


def announcements(users: list[str]) -> list[str]:
    """JSON arrays of ``users``, each small enough for one NOTIFY payload."""
    payloads, chunk, size = [], [], 2
    for user in users:
        cost = len(orjson.dumps(user)) + 1
        if chunk and size + cost > MAX_NOTIFY_BYTES:
            payloads.append(orjson.dumps(chunk).decode())
            chunk, size = [], 2
        chunk.append(user)
        size += cost
    if chunk:
        payloads.append(orjson.dumps(chunk).decode())
    return payloads


class IngestQueue:
    """The bounded queue of acknowledged-on-commit batches and the task that writes them."""

    def __init__(self, url: str, metrics: Metrics, *, capacity: int, batch_events: int,
                 flush_seconds: float, timeout_seconds: float) -> None:
        self.url = url
        self.capacity = capacity
        self.batch_events = batch_events
        self.flush_seconds = flush_seconds
        self.timeout_seconds = timeout_seconds
        self._pending: deque[_Pending] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        r = metrics.registry
        self._events = Counter("timbral_ingest_events", "Ingested events, by outcome "
                               "(accepted, duplicate, rejected, throttled, failed).", ("outcome",), registry=r)
        self._depth = Gauge("timbral_ingest_queue_events", "Events waiting for their COPY.", registry=r)
        self._copy = Histogram("timbral_ingest_copy_seconds", "Time to COPY and commit one flush.",
                               buckets=LATENCY_BUCKETS, registry=r)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def reject(self, count: int) -> None:
        self._events.labels("rejected").inc(count)

    async def submit(self, events: list[Event]) -> tuple[int, int]:
        """Queue ``events`` and wait for their commit; returns (accepted, duplicates).

        Raises
        ------
        ApiError
            429 when the queue is full, 503 when shutting down or the database failed.
        """
        if self._closing:
            raise ApiError(503, "shutting_down", "the service is stopping; retry on another replica",
                           headers={"Retry-After": "1"})
        if self._queued + len(events) > self.capacity:
            self._events.labels("throttled").inc(len(events))
            raise ApiError(429, "ingest_queue_full",
                           f"{self._queued} events are waiting to be written (capacity {self.capacity}); "
                           "retry after the Retry-After seconds", headers={"Retry-After": "1"})
        pending = _Pending(events, asyncio.get_running_loop().create_future())
        self._pending.append(pending)
        self._queued += len(events)
        self._depth.set(self._queued)
        self._wake.set()
        inserted = await asyncio.shield(pending.done)  # a client hanging up does not cancel the write
        accepted = sum(1 for event in events if event.event_id in inserted)
        self._events.labels("accepted").inc(accepted)
        self._events.labels("duplicate").inc(len(events) - accepted)
        return accepted, len(events) - accepted

    async def close(self) -> None:
        """Flush everything queued, then stop the writer (the SIGTERM path)."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._conn is not None:
            await self._conn.close()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._closing and self._queued < self.batch_events:
                await asyncio.sleep(self.flush_seconds)  # linger: let concurrent requests join
            batch: list[_Pending] = []
            size = 0
            while self._pending and (not batch or size + len(self._pending[0].events) <= self.batch_events):
                item = self._pending.popleft()
                batch.append(item)
                size += len(item.events)
            self._queued -= size
            self._depth.set(self._queued)
            try:
                inserted = await self._write([event for item in batch for event in item.events])
            except Exception as exc:  # noqa: BLE001 - every waiter must hear about it
                self._events.labels("failed").inc(size)
                log.warning("ingestion flush failed; the events were not acknowledged",
                            extra={"events": size, "reason": f"{type(exc).__name__}: {exc}"[:300]})
                error = ApiError(503, "database_unavailable",
                                 "the events could not be written to the database; nothing of this batch "
                                 "was acknowledged, retry after Retry-After seconds",
                                 headers={"Retry-After": "1"})
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(error)
                if self._conn is not None:
                    await self._conn.close()
                    self._conn = None
                if self._closing:  # nothing more can be written: every waiter gets its 503 now
                    while self._pending:
                        self._pending.popleft().done.set_exception(error)
                    self._queued = 0
                    return
                continue
            for item in batch:
                if not item.done.done():
                    item.done.set_result(inserted)

    async def _write(self, events: list[Event]) -> set[str]:
        import psycopg

        started = time.perf_counter()
        if self._conn is None or self._conn.closed:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.timeout_seconds)))
        conn = self._conn
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE IF NOT EXISTS timbral_ingest_staging "
                               "(LIKE timbral_interactions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
            async with conn.cursor() as cursor:
                async with cursor.copy("COPY timbral_ingest_staging (event_id, user_id, item_id, value, "
                                       "occurred_at) FROM STDIN") as copy:
                    for e in events:
                        await copy.write_row((e.event_id, e.user_id, e.item_id, e.value, e.occurred_at))
                await cursor.execute(
                    "INSERT INTO timbral_interactions (event_id, user_id, item_id, value, occurred_at) "
                    "SELECT event_id, user_id, item_id, value, occurred_at FROM timbral_ingest_staging "
                    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id, user_id")
                rows = await cursor.fetchall()
                for payload in announcements(sorted({user for _, user in rows})):
                    await cursor.execute("SELECT pg_notify(%s, %s)", (INTERACTIONS_CHANNEL, payload))
                inserted = {event_id for event_id, _ in rows}
        self._copy.observe(time.perf_counter() - started)
        return inserted
