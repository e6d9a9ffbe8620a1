"""Both cache tiers: miss then hit, keys that follow the model version, TTL expiry."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from server_support import ADMIN_TOKEN, config

from timbral.server.app import create_app
from timbral.server.cache import (
    ENTRY_OVERHEAD_BYTES,
    BreakerState,
    CircuitBreaker,
    LRUCache,
    cache_key,
)
from timbral.server.keys import CACHE, METRICS


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lru_evicts_least_recently_used_and_expires():
    clock = Clock()
    cache = LRUCache(max_bytes=2 * (1 + 1 + ENTRY_OVERHEAD_BYTES), ttl_seconds=10, clock=clock)
    cache.set("a", b"1")
    cache.set("b", b"2")
    assert cache.get("a") == b"1"  # a is now the most recent
    cache.set("c", b"3")
    assert cache.get("b") is None and cache.get("a") == b"1" and cache.get("c") == b"3"
    clock.now = 10.0
    assert cache.get("a") is None and len(cache) == 1


def test_lru_is_bounded_by_bytes_not_entries():
    budget = 10_000
    cache = LRUCache(max_bytes=budget, ttl_seconds=10)
    for i in range(100):
        cache.set(f"k{i}", bytes(1000))
        assert cache.nbytes <= budget
    assert len(cache) == budget // (1000 + 3 + ENTRY_OVERHEAD_BYTES)
    assert cache.get("k99") == bytes(1000) and cache.get("k0") is None
    cache.set("k99", b"small")  # replacing an entry releases its old size
    assert cache.nbytes == sum(len(f"k{i}") + 1000 + ENTRY_OVERHEAD_BYTES
                               for i in range(93, 99)) + len("k99") + 5 + ENTRY_OVERHEAD_BYTES
    cache.set("huge", bytes(budget))  # larger than the whole budget: not stored, nothing evicted
    assert cache.get("huge") is None and len(cache) == 7
    cache.clear()
    assert cache.nbytes == 0 and len(cache) == 0


def test_breaker_opens_after_failures_then_lets_one_probe_through():
    clock = Clock()
    breaker = CircuitBreaker(failures=2, cooldown_seconds=1.0, clock=clock)
    breaker.record_failure("get: timeout")
    assert breaker.allow()
    breaker.record_failure("get: timeout")
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now = 1.0
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one probe at a time
    breaker.record_failure("ping: refused")
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now = 2.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_keys_carry_the_model_version_and_id_type():
    assert cache_key("v1", "rec", "u1", 10, True) != cache_key("v2", "rec", "u1", 10, True)
    assert cache_key("v1", "rec", 1, 10, True) != cache_key("v1", "rec", "1", 10, True)


def hits(app, tier: str) -> float:
    return app[METRICS].cache_hits(tier)


async def test_tier1_miss_then_hit(aiohttp_client, model_dir):
    client = await aiohttp_client(create_app(config(model_dir)))
    first = await (await client.get("/api/v1/recommendations/u7?k=4")).json()
    second = await (await client.get("/api/v1/recommendations/u7?k=4")).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["recommendations"] == second["recommendations"]
    assert hits(client.app, "1") == 1
    # Ad-hoc filters are never served from (or stored in) the cache.
    body = {"user_id": "u7", "k": 4, "exclude_items": [1001]}
    assert not (await (await client.post("/api/v1/recommendations", json=body)).json())["cached"]
    assert not (await (await client.post("/api/v1/recommendations", json=body)).json())["cached"]


async def test_tier1_entries_expire(aiohttp_client, model_dir):
    client = await aiohttp_client(create_app(config(model_dir, cache_ttl_seconds=0.2)))
    await client.get("/api/v1/recommendations/u7")
    assert (await (await client.get("/api/v1/recommendations/u7")).json())["cached"]
    await asyncio.sleep(0.25)
    assert not (await (await client.get("/api/v1/recommendations/u7")).json())["cached"]


async def test_tier2_miss_then_hit_in_redis(aiohttp_client, model_dir, redis_url):
    app = create_app(config(model_dir, redis_url=redis_url, tier1_max_bytes=0))
    client = await aiohttp_client(app)
    first = await (await client.get("/api/v1/recommendations/u8?k=3")).json()
    second = await (await client.get("/api/v1/recommendations/u8?k=3")).json()
    assert (first["cached"], second["cached"]) == (False, True)
    assert first["recommendations"] == second["recommendations"]
    assert hits(app, "2") == 1 and hits(app, "1") == 0
    redis = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key.decode() for key in await redis.keys("timbral:*")]
    finally:
        await redis.aclose()
    assert keys == [f"timbral:{first['model_version']}:rec:'u8':3:True"]
    health = await (await client.get("/api/v1/health")).json()
    assert health["status"] == "ok" and health["components"]["redis"]["status"] == "ok"


async def test_tier2_is_shared_between_replicas(aiohttp_client, model_dir, redis_url):
    one = await aiohttp_client(create_app(config(model_dir, redis_url=redis_url)))
    two = await aiohttp_client(create_app(config(model_dir, redis_url=redis_url)))
    assert not (await (await one.get("/api/v1/recommendations/u9")).json())["cached"]
    assert (await (await two.get("/api/v1/recommendations/u9")).json())["cached"]
    assert hits(two.app, "2") == 1


async def test_tier2_entries_expire_after_cache_ttl(aiohttp_client, model_dir, redis_url):
    client = await aiohttp_client(create_app(config(
        model_dir, redis_url=redis_url, tier1_max_bytes=0, cache_ttl_seconds=0.3)))
    await client.get("/api/v1/recommendations/u10")
    assert (await (await client.get("/api/v1/recommendations/u10")).json())["cached"]
    await asyncio.sleep(0.4)
    assert not (await (await client.get("/api/v1/recommendations/u10")).json())["cached"]


async def test_a_reload_never_serves_the_old_models_lists(aiohttp_client, model_dir,
                                                         other_model_dir, redis_url):
    app = create_app(config(model_dir, redis_url=redis_url))
    client = await aiohttp_client(app)
    old = await (await client.get("/api/v1/recommendations/u11")).json()
    assert (await (await client.get("/api/v1/recommendations/u11")).json())["cached"]
    response = await client.post("/api/v1/model/reload", json={"path": str(other_model_dir)},
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status == 200
    new = await (await client.get("/api/v1/recommendations/u11")).json()
    assert new["model_version"] != old["model_version"]
    assert new["cached"] is False
    assert len(app[CACHE].tier1) == 1  # the old version's entries were dropped


async def test_tier1_can_be_switched_off(aiohttp_client, model_dir):
    client = await aiohttp_client(create_app(config(model_dir, tier1_max_bytes=0)))
    await client.get("/api/v1/recommendations/u1")
    assert not (await (await client.get("/api/v1/recommendations/u1")).json())["cached"]


async def test_concurrent_tier2_lookups_share_round_trips(redis_url):
    from timbral.server.cache import RedisCache
    from timbral.server.metrics import Metrics

    cache = RedisCache(redis_url, db=0, ttl_seconds=60, timeout_seconds=1.0,
                       connect_timeout_seconds=1.0, max_connections=8,
                       breaker=CircuitBreaker(3, 1.0), metrics=Metrics())
    admin = aioredis.Redis.from_url(redis_url)
    try:
        for i in range(0, 40, 2):  # every other key exists
            await cache.set(f"coalesce:{i}", f"value {i}".encode())
        await admin.config_resetstat()
        keys = [f"coalesce:{i}" for i in range(40)] + ["coalesce:2", "coalesce:2"]
        values = await asyncio.gather(*(cache.get(key) for key in keys))
        stats = await admin.info("commandstats")
    finally:
        await admin.aclose()
        await cache.close()
    assert values[:40] == [f"value {i}".encode() if i % 2 == 0 else None for i in range(40)]
    assert values[40:] == [b"value 2", b"value 2"]  # a key asked twice is answered twice
    assert "cmdstat_get" not in stats
    assert 1 <= stats["cmdstat_mget"]["calls"] < 42 / 2, stats["cmdstat_mget"]
