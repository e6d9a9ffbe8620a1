"""Hostile callers against a real server process: what they send cannot exhaust it or
make it print a secret (issue 10: the service)."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import scipy.sparse as sp
from redis_server import free_port
from server_support import ADMIN_TOKEN, ServerProcess

from timbral import NMFModel
from timbral.recommender import Recommender

CACHE_BUDGET = 4 << 20
# RSS is not the cache's own accounting: allocator slack, aiohttp buffers and freed
# but unreturned memory come on top. The flood below would add ~60 MB without a bound.
RSS_MARGIN = 24 << 20
N_ITEMS = 2000  # so an answer at k = 1000 is ~40 KB, as in production


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(7)
    n_users = 300
    user_items = sp.random(n_users, N_ITEMS, density=0.02, random_state=rng, format="csr",
                           dtype=np.float32)
    user_items.data = np.ceil(user_items.data * 10)
    model = NMFModel(n_components=4, max_iter=2, tol=0, random_state=0).fit(user_items)
    recommender = Recommender(model, [f"u{i}" for i in range(n_users)], np.arange(N_ITEMS),
                              user_items)
    return recommender.save(tmp_path_factory.mktemp("wide-model"))


def metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, flags=re.M).group(1))


async def fetch_all(urls: list[str], concurrency: int = 16) -> list[int]:
    statuses: list[int] = []
    queue = list(reversed(urls))
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while queue:
                async with session.get(queue.pop()) as response:
                    await response.read()
                    statuses.append(response.status)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


@pytest.mark.slow  # 10-20 s on a loaded 2-core machine: a flood needs volume
async def test_a_cache_flood_stays_within_the_configured_bytes(wide_model_dir, tmp_path):
    """Made-up ids share one popularity entry; distinct real questions stay within the budget."""
    env = {"TIMBRAL_MODEL_DIR": str(wide_model_dir), "TIMBRAL_CACHE_MAX_BYTES": str(CACHE_BUDGET)}
    with ServerProcess(tmp_path, env) as server:
        await fetch_all([f"{server.url}/api/v1/recommendations/u{i}?k=1000" for i in range(20)])
        before = server.rss_bytes()
        unknown = [f"{server.url}/api/v1/recommendations/nobody-{i}?k=1000" for i in range(700)]
        known = [f"{server.url}/api/v1/recommendations/u{i % 300}?k={1000 - i // 300}"
                 for i in range(700)]
        statuses = await fetch_all([url for pair in zip(unknown, known, strict=True) for url in pair])
        after = server.rss_bytes()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/metrics") as response:
                metrics = await response.text()
            async with session.get(f"{server.url}/api/v1/recommendations/nobody-else?k=1000") as response:
                shared = await response.json()
    assert statuses == [200] * 1400
    assert metric(metrics, "timbral_cache_bytes") <= CACHE_BUDGET
    assert shared["cached"] is True and shared["strategy"] == "popularity"
    assert shared["user_id"] == "nobody-else"
    assert after - before <= CACHE_BUDGET + RSS_MARGIN, (before, after)


@pytest.mark.slow  # 10-20 s on a loaded 2-core machine: a flood needs volume
async def test_a_batch_cannot_ask_for_more_than_the_item_cap(wide_model_dir, tmp_path):
    """The 4 KB request for a 50 MB answer is refused; the largest allowed one is answered
    in full while /ping keeps answering."""
    env = {"TIMBRAL_MODEL_DIR": str(wide_model_dir), "TIMBRAL_MAX_BATCH_ITEMS": "100000"}
    with ServerProcess(tmp_path, env) as server:
        async with aiohttp.ClientSession() as session:
            url = f"{server.url}/api/v1/recommendations"
            users = [f"u{i % 300}" for i in range(1000)]
            async with session.post(url, json={"user_ids": users, "k": 1000}) as response:
                refused = (response.status, await response.json())

            async def largest_batch() -> list[dict]:
                body = {"user_ids": users[:100], "k": 1000}
                async with session.post(url, json=body) as response:
                    assert response.status == 200
                    return (await response.json())["results"]

            async def pings(batches: asyncio.Future) -> list[int]:
                statuses = []
                while not batches.done():
                    async with session.get(f"{server.url}/ping") as response:
                        statuses.append(response.status)
                return statuses

            batches = asyncio.ensure_future(asyncio.gather(*(largest_batch() for _ in range(4))))
            ping_statuses = await pings(batches)
            answered = await batches
    status, body = refused
    assert status == 422 and body["error"]["code"] == "batch_too_large"
    assert "TIMBRAL_MAX_BATCH_ITEMS" in body["error"]["message"]
    assert "1000 user_ids × k=1000" in body["error"]["message"]
    assert [len(results) for results in answered] == [100] * 4
    assert all(len(r["recommendations"]) == 1000 for results in answered for r in results)
    assert ping_statuses and set(ping_statuses) == {200}


SECRET_PASSWORD = "s3cretpass-do-not-print"
SECRET_TOKEN = "admin-token-do-not-print-0123456789"


async def test_secrets_never_appear_in_answers_or_logs(model_dir, tmp_path):
    dead_redis = f"redis://:{SECRET_PASSWORD}@127.0.0.1:{free_port()}/0"
    env = {"TIMBRAL_MODEL_DIR": str(model_dir), "REDIS_URL": dead_redis,
           "TIMBRAL_ADMIN_TOKEN": SECRET_TOKEN + "\n", "LOG_LEVEL": "DEBUG"}
    server = ServerProcess(tmp_path, env).start()
    bodies = []
    try:
        async with aiohttp.ClientSession() as session:
            for path, headers in [("/api/v1/health", {}),
                                  ("/api/v1/health", {"Authorization": f"Bearer {SECRET_TOKEN}"}),
                                  ("/api/v1/recommendations/u1", {}), ("/", {}), ("/metrics", {}),
                                  ("/api/v1/nothing", {})]:
                async with session.get(server.url + path, headers=headers) as response:
                    bodies.append(await response.text())
            # The token from a secret file ends with a newline: it still works without it.
            async with session.post(f"{server.url}/api/v1/model/reload",
                                    headers={"Authorization": f"Bearer {SECRET_TOKEN}"}) as response:
                assert response.status == 200, await response.text()
                bodies.append(await response.text())
            async with session.post(f"{server.url}/api/v1/model/reload",
                                    headers={"Authorization": "Bearer wrong"}) as response:
                assert response.status == 401
                bodies.append(await response.text())
        assert '"degraded"' in bodies[0] and "127.0.0.1" not in bodies[0]  # public: no host
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0
    finally:
        server.stop()
    output = server.output()
    assert "timbral.server" in output  # the debug log was written...
    for text in [output, *bodies]:
        assert SECRET_PASSWORD not in text and SECRET_TOKEN not in text  # ...without secrets


@pytest.mark.parametrize(("name", "value"), [
    ("REDIS_URL", f"http://user:{SECRET_PASSWORD}@cache:6379/0"),
    ("REDIS_URL", f"rediss//:{SECRET_PASSWORD}@cache:6379/0"),  # malformed: printed, redacted
    ("REDIS_URL", f"tcp://cache:6379/0?password={SECRET_PASSWORD}"),
    ("TIMBRAL_ADMIN_TOKEN", "short-" + SECRET_PASSWORD[:8]),
])
def test_a_bad_secret_setting_is_refused_without_printing_it(name, value, monkeypatch, capsys):
    from timbral.server.__main__ import main

    monkeypatch.setenv("TIMBRAL_ADMIN_TOKEN", SECRET_TOKEN)
    monkeypatch.setenv(name, value)
    assert main([]) == 2
    printed = capsys.readouterr()
    assert printed.err.startswith(f"timbral server: invalid configuration:\n  {name}=")
    if value.startswith("http"):
        assert "REDIS_URL='http://<redacted>@cache:6379/0'" in printed.err
    if name == "TIMBRAL_ADMIN_TOKEN":
        assert "TIMBRAL_ADMIN_TOKEN='<redacted> (14 characters)'" in printed.err
    for secret in (SECRET_PASSWORD, SECRET_PASSWORD[:8], SECRET_TOKEN):
        assert secret not in printed.err + printed.out


def test_admin_token_is_stripped_of_whitespace_from_a_secret_file():
    from timbral.server.config import Config

    assert Config.from_env({"TIMBRAL_ADMIN_TOKEN": f" {ADMIN_TOKEN}\n"}).admin_token == ADMIN_TOKEN
    assert ADMIN_TOKEN not in repr(Config(admin_token=ADMIN_TOKEN))
    assert SECRET_PASSWORD not in repr(Config(redis_url=f"rediss://u:{SECRET_PASSWORD}@h:6380"))
