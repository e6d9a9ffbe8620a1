"""Serve the registry's production model and follow every promotion (``DATABASE_URL``).

A :class:`RegistryFollower` keeps one connection that LISTENs on the registry's
channel. A promotion's NOTIFY (sent at commit) wakes it at once; without one it still
checks every ``TIMBRAL_REGISTRY_POLL_SECONDS``, so a notification lost while the
connection was down costs at most one period. When the production version differs
from the one served, it downloads the files into ``TIMBRAL_MODEL_CACHE_DIR`` (each
file's size and sha256 checked against the registry while streaming, see
:meth:`timbral.registry.Registry.download`) and hands the directory to the
:class:`~server.state.Reloader`, which verifies the artifact's own checksums, runs a
test recommendation and swaps atomically. A version that fails any check is refused,
the current model keeps serving, and it is retried only after a poll period.

When the database is unreachable the service keeps serving what it has, health
reports ``database: degraded``, and the follower reconnects with capped backoff; on
reconnecting it checks the production version at once, so it recovers by itself.

The same connection LISTENs on ``timbral_interactions``: ingestion announces the users
whose events it committed, and the follower reads their plays since the served model
was created into :class:`~server.recent.RecentEvents` for real-time fold-in. After a
swap (or a reconnect, when announcements may have been missed) it reloads the plays
of the most recently active users since the new model's creation. Notifications that
arrive while the connection runs a query are kept by psycopg (>= 3.3) and handed over
by the next ``notifies()``, so none is lost between two waits.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import Counter, Gauge

from timbral.exceptions import ArtifactError, RegistryError

from .config import Config
from .ingest import INTERACTIONS_CHANNEL
from .metrics import Metrics
from .recent import RecentEvents
from .state import LoadedModel, Reloader

log = logging.getLogger("timbral.server.registry")

_QUERY = "SELECT version FROM timbral_model_versions WHERE status = 'production'"
# Plays since the model's creation, per user and item; to_regclass: the table may not exist yet.
_RECENT = """
SELECT user_id, item_id, sum(value)::float8 FROM timbral_interactions
WHERE received_at >= %(since)s AND (%(users)s::text[] IS NULL OR user_id = ANY(%(users)s::text[]))
  AND user_id IN (SELECT user_id FROM timbral_interactions WHERE received_at >= %(since)s
                  AND (%(users)s::text[] IS NULL OR user_id = ANY(%(users)s::text[]))
                  GROUP BY user_id ORDER BY max(received_at) DESC LIMIT %(limit)s)
GROUP BY user_id, item_id"""
MAX_BACKOFF_SECONDS = 5.0
CLOSE_RETRY_SECONDS = 1.0  # how often close() repeats its cancel while the loop is still running
MAX_RECENT_USERS = 100_000


class RegistryFollower:
    """Keeps the served model equal to the registry's production model."""

    def __init__(self, url: str, config: Config, reloader: Reloader, metrics: Metrics,
                 cache_dir: Path) -> None:
        self.url = url
        self.poll_seconds = config.registry_poll_seconds
        self.timeout_seconds = config.database_timeout_seconds
        self.cache_dir = cache_dir
        self.reloader = reloader
        self.recent = RecentEvents(MAX_RECENT_USERS)
        self._recent_stale = True  # reload everyone's recent plays at the next check
        reloader.on_swap.append(self._on_swap)
        self.serving: int | None = None  # registry version being served
        self.production: int | None = None  # as last read from the database
        self.connected = False
        self.last_error: str | None = None
        self.last_contact: datetime | None = None
        self._retry_at: dict[int, float] = {}  # refused version -> monotonic time of the next try
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # set by close(): the loop stops even if a driver swallows a cancel
        registry = metrics.registry
        self._up = Gauge("timbral_registry_up", "1 while the registry database answers.", registry=registry)
        self._production = Gauge("timbral_registry_production_version",
                                 "Registry version marked production (0 = none).", registry=registry)
        self._serving = Gauge("timbral_registry_serving_version",
                              "Registry version this replica serves (0 = none).", registry=registry)
        self._switches = Counter("timbral_registry_model_switches",
                                 "Registry versions swapped in or refused, by outcome.", ("outcome",),
                                 registry=registry)
        self._checks = Counter("timbral_registry_checks",
                               "Production checks, by trigger (start, notify, poll, reconnect).",
                               ("trigger",), registry=registry)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, wait_seconds: float) -> None:
        """Start following; wait up to ``wait_seconds`` for the first production model."""
        first = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(first))
        try:
            await asyncio.wait_for(first.wait(), wait_seconds)
        except TimeoutError:
            log.warning("registry not reached at start; serving without it until it answers",
                        extra={"reason": self.last_error})

    async def migrate(self) -> None:
        """Apply pending schema migrations (``TIMBRAL_DB_MIGRATE=true``)."""
        applied = await asyncio.to_thread(self._upgrade)
        if applied:
            log.info("database schema migrated", extra={"applied": applied})

    def _upgrade(self) -> list[int]:
        from timbral.registry import Registry

        with Registry(self.url) as registry:
            return [m.version for m in registry.upgrade()]

    async def close(self) -> None:
        """Stop following. A cancel that lands inside the database driver can come back as
        a driver error, which the loop treats as a lost connection: so the loop also checks
        a closing flag, and the cancel is repeated until the task has ended."""
        self._closing = True
        while self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=CLOSE_RETRY_SECONDS)

    def health(self) -> dict[str, Any]:
        """The ``database`` component of ``/api/v1/health``."""
        part: dict[str, Any] = {
            "status": "ok", "production_version": self.production, "serving_version": self.serving,
            "last_contact": self.last_contact.isoformat(timespec="seconds") if self.last_contact else None}
        if not self.connected:
            part.update(status="degraded", reason=f"registry database unreachable ({self.last_error}); "
                                                  "serving the model already loaded")
        elif self.production is not None and self.production != self.serving:
            part.update(status="degraded", reason=f"production version {self.production} is not served: "
                                                  f"{self.last_error}")
        return part

    # -- the loop ----------------------------------------------------------------------

    async def _run(self, first: asyncio.Event) -> None:
        import psycopg

        from timbral.registry import CHANNEL, redact

        backoff = 0.1
        trigger = "start"
        while not self._closing:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=max(1, round(self.timeout_seconds)))
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await conn.execute(f"LISTEN {INTERACTIONS_CHANNEL}")
                    self._set_connected(True)
                    self._recent_stale = True  # announcements may have been missed while away
                    backoff = 0.1
                    while True:
                        while await self._check(conn, trigger):
                            trigger = "recheck"  # a promotion during the download is not missed
                        first.set()
                        trigger = await self._wait(conn)
            except psycopg.Error as exc:
                text = str(exc).replace(self.url, redact(self.url)).strip()
                self.last_error = text.splitlines()[0] if text else type(exc).__name__
            except (TimeoutError, OSError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
            if self._closing:
                return
            if self.connected:
                log.warning("registry database lost; serving the current model",
                            extra={"reason": self.last_error})
            self._set_connected(False)
            first.set()  # do not hold the start-up any longer: serve what we have
            trigger = "reconnect"
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _wait(self, conn: Any) -> str:
        """Until a promotion is announced ("notify") or a poll period passes ("poll");
        interaction announcements meanwhile refresh those users' recent plays."""
        deadline = time.monotonic() + self.poll_seconds
        while (left := deadline - time.monotonic()) > 0:
            # Collected first: the connection is busy while notifies() iterates.
            notes = [note async for note in conn.notifies(timeout=left, stop_after=1)]
            for note in notes:
                if note.channel != INTERACTIONS_CHANNEL:
                    return "notify"
                await self._refresh_recent(conn, _users(note.payload))
        return "poll"

    def _on_swap(self, _model: LoadedModel) -> None:
        self.recent.clear()  # plays are counted from each model's creation
        self._recent_stale = True

    async def _refresh_recent(self, conn: Any, users: list[str] | None) -> None:
        """Read ``users``' plays (None: the most recently active users') since the served
        model was created into :attr:`recent`."""
        import psycopg

        model = self.reloader.slot.current
        created = model.recommender.metadata.get("created_at") if model else None
        if not isinstance(created, str) or users == []:
            return
        since = datetime.fromisoformat(created.replace("Z", "+00:00"))
        try:
            cursor = await asyncio.wait_for(
                conn.execute(_RECENT, {"since": since, "users": users, "limit": MAX_RECENT_USERS}),
                self.timeout_seconds)
            rows = await cursor.fetchall()
        except psycopg.errors.UndefinedTable:
            return  # ingestion's migration is not applied: there is nothing to fold in
        grouped: dict[str, dict[str, float]] = {}
        for user, item, plays in rows:
            grouped.setdefault(user, {})[item] = plays
        for user, items in grouped.items():
            self.recent.replace(user, items)

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self._up.set(1 if connected else 0)

    async def _check(self, conn: Any, trigger: str) -> bool:
        """Read the production version and switch to it if needed; True when swapped."""
        self._checks.labels(trigger).inc()
        cursor = await asyncio.wait_for(conn.execute(_QUERY), self.timeout_seconds)
        row = await cursor.fetchone()
        self.last_contact = datetime.now(UTC)
        self.production = None if row is None else int(row[0])
        self._production.set(self.production or 0)
        version = self.production
        if self._recent_stale and (version is None or version == self.serving):
            self._recent_stale = False
            await self._refresh_recent(conn, None)
        if version is None or version == self.serving:
            return False
        if time.monotonic() < self._retry_at.get(version, 0.0):
            return False  # refused recently: retry after a poll period, not on every notification
        return await self._switch(version)

    async def _switch(self, version: int) -> bool:
        target = self.cache_dir / f"v{version}-{uuid.uuid4().hex[:8]}"
        try:
            await asyncio.to_thread(self._download, version, target)
            await self.reloader.reload(target)
        except (RegistryError, ArtifactError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            self._retry_at[version] = time.monotonic() + self.poll_seconds
            self.last_error = f"version {version} refused: {exc}"
            self._switches.labels("refused").inc()
            log.error("registry model refused; the current model keeps serving",
                      extra={"registry_version": version, "reason": str(exc)})
            return False
        previous, self.serving = self.serving, version
        self._serving.set(version)
        self._retry_at.pop(version, None)
        self._switches.labels("swapped").inc()
        log.info("following the registry", extra={"registry_version": version, "previous": previous})
        for stale in self.cache_dir.glob("v*"):  # the loaded model lives in memory
            if stale != target:
                shutil.rmtree(stale, ignore_errors=True)
        return True

    def _download(self, version: int, target: Path) -> None:
        from timbral.registry import Registry

        with Registry(self.url) as registry:
            registry.download(version, target)


def _users(payload: str) -> list[str]:
    """The user ids of an interactions announcement (nothing, if it is not one)."""
    try:
        users = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    return [u for u in users if isinstance(u, str)] if isinstance(users, list) else []
