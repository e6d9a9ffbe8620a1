"""Two cache tiers for recommendation lists, keyed by model version.

Tier 1 is a bounded in-process LRU with a TTL. Tier 2 is Redis through
``redis.asyncio`` with a connection pool and short timeouts. Redis is an
optimisation, never a dependency: every Redis call is bounded by a deadline, errors
become cache misses, and a circuit breaker stops calling Redis after repeated
failures, then lets one probe through after a cool-down (docs/architecture.md, "Caching and degradation").
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from timbral.recommender import ExternalId

from .config import Config
from .drain import Batch, Drain
from .metrics import Metrics

T = TypeVar("T")
Clock = Callable[[], float]


def cache_key(model_version: str, kind: str, *parts: object) -> str:
    """A key that changes with the model, so a reload never serves a stale list.

    ``repr`` keeps the integer user ``1`` and the string user ``"1"`` apart.
    """
    return f"timbral:{model_version}:{kind}:" + ":".join(repr(part) for part in parts)


def recommendation_key(model_version: str, user_id: ExternalId, k: int, exclude_seen: bool,
                       *recent_digest: str) -> str:
    """The key of a plain (cacheable) recommendation answer; ``recent_digest``: the user's
    plays since training, when the answer folds them in."""
    return cache_key(model_version, "rec", user_id, k, exclude_seen, *recent_digest)


def recommendation_bodies(model_version: str, user_id: ExternalId, strategy: str,
                          recommendations: bytes) -> tuple[bytes, bytes]:
    """A recommendation answer as served (``"cached": false``) and as cached (``true``);
    ``recommendations``: the JSON array of items (``server.encoding.encode_rows``).

    One encoder for the service and for ``timbral.dask.recommend_all``'s Redis pre-warm,
    so a pre-warmed entry is byte for byte what the service would have cached.
    """
    body = orjson.dumps({"user_id": user_id, "strategy": strategy,
                         "recommendations": orjson.Fragment(recommendations),
                         "model_version": model_version, "cached": False},
                        option=orjson.OPT_SERIALIZE_NUMPY)
    return body, body[: -len(b"false}")] + b"true}"  # "cached" is the last key


def redis_tls_options(config: Config) -> dict[str, Any]:
    """redis-py's ``ssl_*`` arguments for a ``rediss://`` ``REDIS_URL`` (none otherwise).

    The server's certificate is verified, and its host name checked, unless
    ``REDIS_SSL_CERT_REQS=none``: redis-py before 6.0 does not check host names by itself.
    """
    if not (config.redis_url or "").startswith("rediss://"):
        return {}
    options: dict[str, Any] = {
        "ssl_cert_reqs": config.redis_ssl_cert_reqs,
        "ssl_check_hostname": config.redis_ssl_cert_reqs != "none",
    }
    for option, path in (("ssl_ca_certs", config.redis_ssl_ca_certs),
                         ("ssl_certfile", config.redis_ssl_certfile),
                         ("ssl_keyfile", config.redis_ssl_keyfile)):
        if path is not None:
            options[option] = str(path)
    return options


# What one entry costs beyond its key's and value's bytes: the str and bytes headers,
# the (expiry, value, size) tuple, the float and the OrderedDict link (CPython 3.11, 64-bit).
ENTRY_OVERHEAD_BYTES = 300


class LRUCache:
    """A mapping bounded by bytes, with least-recently-used eviction and a per-entry TTL.

    An entry costs ``len(key) + len(value) + ENTRY_OVERHEAD_BYTES``; a value larger
    than the whole budget is not stored. ``max_bytes=0`` disables the cache. Not
    thread-safe: it is only touched from the event loop.
    """

    def __init__(self, max_bytes: int, ttl_seconds: float, clock: Clock = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.nbytes = 0
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value, _ = entry
        if expires <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return value

    def set(self, key: str, value: bytes) -> None:
        size = len(key) + len(value) + ENTRY_OVERHEAD_BYTES
        if key in self._entries:
            self._remove(key)
        if size > self.max_bytes:
            return
        self._entries[key] = (self._clock() + self.ttl_seconds, value, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, (_, _, evicted) = self._entries.popitem(last=False)
            self.nbytes -= evicted

    def _remove(self, key: str) -> None:
        self.nbytes -= self._entries.pop(key)[2]

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0


class BreakerState(enum.Enum):
    CLOSED = "closed"  # Redis is called normally
    OPEN = "open"  # Redis is skipped until the cool-down ends
    HALF_OPEN = "half_open"  # one probe call is in flight


class CircuitBreaker:
    """Skip a failing dependency for a while instead of waiting on it every request."""

    def __init__(self, failures: int, cooldown_seconds: float, clock: Clock = time.monotonic) -> None:
        self.failure_threshold = failures
        self.cooldown_seconds = cooldown_seconds
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.last_error = ""

    def allow(self) -> bool:
        """Whether a call may go through now (at most one probe when the cool-down ended)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._clock() - self.opened_at >= self.cooldown_seconds:
            self.state = BreakerState.HALF_OPEN
            return True
        return False

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.last_error = ""

    def record_failure(self, error: str) -> None:
        self.consecutive_failures += 1
        self.last_error = error
        if self.state is BreakerState.HALF_OPEN or self.consecutive_failures >= self.failure_threshold:
            self.state = BreakerState.OPEN
            self.opened_at = self._clock()


@dataclass(frozen=True, slots=True)
class RedisHealth:
    status: str  # "ok" | "degraded" | "disabled"
    latency_ms: float | None = None
    reason: str | None = None
    breaker: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (
            ("status", self.status), ("latency_ms", self.latency_ms),
            ("reason", self.reason), ("breaker", self.breaker),
        ) if v is not None}


class RedisCache:
    """Tier 2: bytes in Redis with a TTL, behind a deadline and a circuit breaker."""

    def __init__(
        self,
        url: str,
        *,
        db: int,
        ttl_seconds: float,
        timeout_seconds: float,
        connect_timeout_seconds: float,
        max_connections: int,
        breaker: CircuitBreaker,
        metrics: Metrics,
        tls: Mapping[str, Any] | None = None,
    ) -> None:
        self.ttl_ms = max(1, round(ttl_seconds * 1000))
        self.timeout_seconds = timeout_seconds
        self.breaker = breaker
        self._metrics = metrics
        self._lookups: Drain[str, bytes | None] = Drain(self._mget)
        self._client = aioredis.Redis.from_url(
            url,
            db=db,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=connect_timeout_seconds,
            max_connections=max_connections,
            retry=Retry(NoBackoff(), 0),  # our deadline and breaker decide, not redis-py
            health_check_interval=0,
            **(tls or {}),  # redis_tls_options(config) for a rediss:// URL
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, operation: str, make: Callable[[], Awaitable[T]]) -> T | None:
        """Run one Redis command under the deadline; ``None`` when skipped or failed."""
        if not self.breaker.allow():
            return None
        settled = False
        try:
            async with asyncio.timeout(self.timeout_seconds):
                result = await make()
            settled = True
        except (RedisError, OSError, TimeoutError) as exc:
            settled = True
            self._failed(operation, f"{type(exc).__name__}: {exc}".rstrip(": "))
            return None
        finally:
            if not settled and self.breaker.state is BreakerState.HALF_OPEN:
                # The caller was cancelled during the probe: never leave the breaker half open.
                self.breaker.record_failure(f"{operation}: probe cancelled")
        if self.breaker.state is not BreakerState.CLOSED or self.breaker.consecutive_failures:
            self.breaker.record_success()
            self._metrics.redis_breaker_open.set(0)
        return result

    def _failed(self, operation: str, error: str) -> None:
        self._metrics.redis_errors.labels(operation).inc()
        self.breaker.record_failure(f"{operation}: {error}")
        self._metrics.redis_breaker_open.set(self.breaker.state is BreakerState.OPEN)

    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or ``None`` (missing, Redis skipped or failed).

        Lookups that arrive while one is in flight wait and go together in the next
        MGET: one round trip for many concurrent requests, under the same deadline.
        """
        return await self._lookups.submit(key)

    async def _mget(self, batch: Batch[str, bytes | None]) -> None:
        keys = list({waiting.payload: None for waiting in batch})  # a key asked twice is sent once
        values = await self._call("get", lambda: self._client.mget(keys))
        found = dict(zip(keys, values or [None] * len(keys), strict=True))
        for waiting in batch:
            if not waiting.future.done():  # its request may have been cancelled
                waiting.future.set_result(found[waiting.payload])

    async def set(self, key: str, value: bytes) -> None:
        await self._call("set", lambda: self._client.set(key, value, px=self.ttl_ms))

    async def health(self) -> RedisHealth:
        """Ping Redis under the deadline; once the cool-down has passed this is also a probe."""
        start = time.perf_counter()
        pong = await self._call("ping", self._client.ping)
        latency_ms = round((time.perf_counter() - start) * 1000, 3)
        breaker = self.breaker.state.value
        if pong is not None:
            return RedisHealth("ok", latency_ms, breaker=breaker)
        if self.breaker.state is BreakerState.CLOSED:
            reason = f"Redis did not answer: {self.breaker.last_error}"
        else:
            reason = (f"Redis skipped for {self.breaker.cooldown_seconds:g} s at a time after "
                      f"{self.breaker.consecutive_failures} failures; last: {self.breaker.last_error}")
        return RedisHealth("degraded", latency_ms, reason=reason, breaker=breaker)


class TieredCache:
    """Tier 1 in front of tier 2 (``redis`` is ``None`` when ``REDIS_URL`` is unset).

    Values are the encoded response bodies, so a hit is served without re-encoding.
    Tier 1 is read and written synchronously (:meth:`get_local`, :meth:`set_local`):
    without Redis a request never awaits the cache, which costs a coroutine per call.
    """

    def __init__(self, tier1: LRUCache, metrics: Metrics) -> None:
        self.tier1 = tier1
        self.redis: RedisCache | None = None
        self._metrics = metrics

    def get_local(self, key: str) -> bytes | None:
        """Tier 1's value; a miss is counted here only when there is no tier 2 to ask
        (:meth:`get_shared` counts the rest)."""
        value = self.tier1.get(key)
        if value is not None:
            self._metrics.cache_lookup("1", ())
        elif self.redis is None:
            self._metrics.cache_lookup(None, ("1",))
        return value

    async def get_shared(self, key: str) -> bytes | None:
        """Tier 2's value after a tier-1 miss (kept in tier 1 when found)."""
        if self.redis is None:
            return None
        value = await self.redis.get(key)
        if value is None:
            self._metrics.cache_lookup(None, ("1", "2"))
            return None
        self._metrics.cache_lookup("2", ("1",))
        self.tier1.set(key, value)
        return value

    async def get(self, key: str) -> bytes | None:
        value = self.get_local(key)
        return value if value is not None or self.redis is None else await self.get_shared(key)

    def set_local(self, key: str, value: bytes) -> None:
        self.tier1.set(key, value)

    async def set_shared(self, key: str, value: bytes) -> None:
        if self.redis is not None:
            await self.redis.set(key, value)

    async def set(self, key: str, value: bytes) -> None:
        self.set_local(key, value)
        await self.set_shared(key, value)
