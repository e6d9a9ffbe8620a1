"""Replicas follow the registry: promotion within 2 s under load, refusals, database outages."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path

import aiohttp
import psycopg
import pytest
from postgres_server import fresh_database
from redis_server import free_port
from server_support import ADMIN_TOKEN, ServerProcess, config

from timbral.recommender import Recommender
from timbral.registry import Registry
from timbral.server.app import create_app
from timbral.server.config import Config, ConfigError


@pytest.fixture
def registry(database_url, model_dir, other_model_dir):
    """Versions 1 (model_dir, in production) and 2 (other_model_dir, staged)."""
    with Registry(database_url) as reg:
        reg.upgrade()
        reg.register(model_dir)
        reg.register(other_model_dir)
        reg.promote(1)
        yield reg


ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # health details are for the admin only


def model_version(directory: Path) -> str:
    return Recommender.load(directory).model_version


async def served_version(client) -> str:
    return (await (await client.get("/")).json())["model_version"]


async def eventually(predicate, within: float, step: float = 0.02) -> float:
    """Seconds until ``predicate()`` (a coroutine function) is true; fails after ``within``."""
    start = time.monotonic()
    while not await predicate():
        assert time.monotonic() - start < within, f"not true within {within} s"
        await asyncio.sleep(step)
    return time.monotonic() - start


def database_config(url: str, tmp_path: Path, **overrides: object):
    return config(None, database_url=url, model_cache_dir=tmp_path / "cache", **overrides)


async def test_serves_production_and_follows_a_promotion(aiohttp_client, registry, model_dir,
                                                         other_model_dir, tmp_path):
    app = create_app(database_config(registry.url, tmp_path))
    client = await aiohttp_client(app)
    assert await served_version(client) == model_version(model_dir)
    assert (await (await client.get("/api/v1/health")).json())["components"]["database"] == {"status": "ok"}
    health = await (await client.get("/api/v1/health", headers=ADMIN)).json()
    assert health["status"] == "ok"
    assert health["components"]["database"] | {"last_contact": None} == {
        "status": "ok", "production_version": 1, "serving_version": 1, "last_contact": None}
    registry.promote(2)
    new = model_version(other_model_dir)

    async def switched() -> bool:
        return await served_version(client) == new

    await eventually(switched, within=2.0)
    assert [p.name for p in (tmp_path / "cache").iterdir()][0].startswith("v2-")  # v1's copy is gone
    metrics = (await (await client.get("/metrics")).text())
    assert 'timbral_registry_model_switches_total{outcome="swapped"} 2.0' in metrics
    assert "timbral_registry_serving_version 2.0" in metrics and "timbral_registry_up 1.0" in metrics


async def test_a_missed_notification_is_caught_by_the_periodic_check(
        aiohttp_client, registry, other_model_dir, tmp_path):
    app = create_app(database_config(registry.url, tmp_path, registry_poll_seconds=0.3))
    client = await aiohttp_client(app)
    with psycopg.connect(registry.url, autocommit=True) as conn:  # a promotion without NOTIFY
        conn.execute("UPDATE timbral_model_versions SET status = 'archived' WHERE version = 1")
        conn.execute("UPDATE timbral_model_versions SET status = 'production' WHERE version = 2")
    new = model_version(other_model_dir)

    async def switched() -> bool:
        return await served_version(client) == new

    await eventually(switched, within=3.0)


def corrupt_chunk(url: str, version: int, *, fix_registry_hash: bool) -> None:
    """Flip a byte of a stored arrays.npz; optionally make the registry's hash agree."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE timbral_model_chunks SET data = overlay(data placing "
                     "decode(lpad(to_hex(get_byte(data, 200) # 255), 2, '0'), 'hex') from 201) "
                     "WHERE version = %s AND name = 'arrays.npz' AND seq = 0", (version,))
        if fix_registry_hash:
            blocks = conn.execute("SELECT data FROM timbral_model_chunks WHERE version = %s "
                                  "AND name = 'arrays.npz' ORDER BY seq", (version,)).fetchall()
            digest = hashlib.sha256(b"".join(bytes(b) for (b,) in blocks)).hexdigest()
            conn.execute("UPDATE timbral_model_files SET sha256 = %s WHERE version = %s "
                         "AND name = 'arrays.npz'", (digest, version))


@pytest.mark.parametrize("fix_registry_hash", [False, True], ids=["registry-hash", "artifact-checksum"])
async def test_a_corrupted_model_is_refused_and_the_old_one_keeps_serving(
        aiohttp_client, registry, model_dir, tmp_path, fix_registry_hash):
    corrupt_chunk(registry.url, 2, fix_registry_hash=fix_registry_hash)
    app = create_app(database_config(registry.url, tmp_path))
    client = await aiohttp_client(app)
    old = model_version(model_dir)
    registry.promote(2)

    async def refused() -> bool:
        text = await (await client.get("/metrics")).text()
        return 'timbral_registry_model_switches_total{outcome="refused"} 1.0' in text

    await eventually(refused, within=5.0)
    response = await client.get("/api/v1/recommendations/u1")
    assert response.status == 200 and (await response.json())["model_version"] == old
    health = await (await client.get("/api/v1/health", headers=ADMIN)).json()
    database = health["components"]["database"]
    assert health["status"] == "degraded" and database["status"] == "degraded"
    assert database["serving_version"] == 1 and database["production_version"] == 2
    reason = "the stored copy is damaged" if not fix_registry_hash else "does not match its sha256"
    assert "production version 2 is not served: version 2 refused" in database["reason"]
    assert reason in database["reason"]
    assert list((tmp_path / "cache").iterdir())[0].name.startswith("v1-")  # nothing of v2 kept


async def test_database_down_keeps_serving_says_degraded_and_recovers(
        aiohttp_client, postgres_process, model_dir, other_model_dir, tmp_path):
    with fresh_database(postgres_process.url) as url:
        with Registry(url) as reg:
            reg.upgrade()
            reg.register(model_dir)
            reg.register(other_model_dir)
            reg.promote(1)
        client = await aiohttp_client(create_app(database_config(url, tmp_path)))
        old, new = model_version(model_dir), model_version(other_model_dir)
        postgres_process.stop()  # fast shutdown: every connection is cut

        async def database_status() -> str:
            return (await (await client.get("/api/v1/health")).json())["components"]["database"]["status"]

        async def degraded() -> bool:
            return await database_status() == "degraded"

        await eventually(degraded, within=5.0)
        health = await (await client.get("/api/v1/health", headers=ADMIN)).json()
        assert health["status"] == "degraded" and "unreachable" in health["components"]["database"]["reason"]
        for user in ("u1", "u2", "nobody"):
            response = await client.get(f"/api/v1/recommendations/{user}")
            assert response.status == 200 and (await response.json())["model_version"] == old
        assert "secret" not in str(health)

        postgres_process.start()

        async def ok() -> bool:
            return await database_status() == "ok"

        await eventually(ok, within=10.0)
        with Registry(url) as reg:
            reg.promote(2)

        async def switched() -> bool:
            return await served_version(client) == new

        await eventually(switched, within=2.0)


async def test_start_with_the_database_down_serves_the_configured_directory(
        aiohttp_client, model_dir, tmp_path):
    url = f"postgresql://timbral:pw@127.0.0.1:{free_port()}/nowhere"
    client = await aiohttp_client(create_app(config(model_dir, database_url=url,
                                                    model_cache_dir=tmp_path / "cache")))
    health = await (await client.get("/api/v1/health", headers=ADMIN)).json()
    assert health["status"] == "degraded"
    assert health["components"]["model"]["status"] == "ok"
    assert health["components"]["database"]["status"] == "degraded"
    assert ":pw@" not in str(health)


async def test_migrations_run_at_start_when_allowed(aiohttp_client, database_url, tmp_path):
    client = await aiohttp_client(create_app(database_config(database_url, tmp_path, db_migrate=True)))
    health = await (await client.get("/api/v1/health")).json()
    assert health["status"] == "unavailable"  # migrated, but nothing promoted yet
    assert health["components"]["database"]["status"] == "ok"
    with Registry(database_url) as reg:
        assert reg.pending_migrations() == []


@pytest.mark.parametrize("value", ["mysql://u:hunter2@h/db", "sqlite:///x.db", "localhost:5432"])
def test_a_non_postgresql_database_url_is_refused_without_echoing_it(value):
    with pytest.raises(ConfigError, match=r"DATABASE_URL=.*expected a URL starting with postgresql://") as caught:
        Config.from_env({"DATABASE_URL": value})
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(Config(database_url="postgresql://u:hunter2@h/db"))


def replica(url: str, cache: Path) -> ServerProcess:
    """A server process that follows the registry at ``url``, with no model directory of its own."""
    return ServerProcess(cache.parent, {"DATABASE_URL": url, "TIMBRAL_MODEL_CACHE_DIR": str(cache),
                                        "TIMBRAL_EXECUTOR_THREADS": "1"})


@pytest.mark.slow
async def test_two_replicas_follow_a_promotion_within_2s_under_load(
        registry, model_dir, other_model_dir, tmp_path):
    """Two ``python -m server`` processes, a load generator on both, a promotion midway."""
    replicas = [replica(registry.url, tmp_path / f"cache{i}") for i in range(2)]
    try:
        for server in replicas:
            await asyncio.to_thread(server.start)
        old, new = model_version(model_dir), model_version(other_model_dir)
        failures: list[str] = []
        first_new: dict[int, float] = {}
        stop = asyncio.Event()
        answers = 0

        async def load(session: aiohttp.ClientSession, url: str, worker: int) -> None:
            nonlocal answers
            n = worker
            while not stop.is_set():
                n += 7
                try:
                    async with session.get(f"{url}/api/v1/recommendations/u{n % 120}?k=5",
                                           ) as response:
                        body = await response.json()
                        if response.status != 200 or body["model_version"] not in (old, new):
                            failures.append(f"{response.status} {body}")
                        elif body["model_version"] == new:
                            first_new.setdefault(url, time.monotonic())
                        answers += 1
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))

        async with aiohttp.ClientSession() as session:
            workers = [asyncio.create_task(load(session, server.url, w)) for server in replicas for w in range(4)]
            await asyncio.sleep(0.5)
            promoted_at = time.monotonic()
            await asyncio.to_thread(registry.promote, 2)
            while len(first_new) < 2 and time.monotonic() - promoted_at < 10:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*workers)
        assert failures == []
        delays = {url: round(at - promoted_at, 3) for url, at in first_new.items()}
        assert len(delays) == 2 and max(delays.values()) < 2.0, delays
        assert answers > 100
    finally:
        for server in replicas:
            server.stop()
