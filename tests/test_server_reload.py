"""Hot reload: admin only, verified before the swap, atomic under load."""

from __future__ import annotations

import asyncio
import shutil

from server_support import ADMIN_TOKEN, config

from timbral.server.app import create_app
from timbral.server.keys import METRICS

RELOAD = "/api/v1/model/reload"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def test_reload_under_500_concurrent_requests(aiohttp_client, model_dir, other_model_dir):
    app = create_app(config(model_dir, tier1_max_bytes=0))
    client = await aiohttp_client(app)
    old = (await (await client.get("/")).json())["model_version"]

    async def one(n: int) -> tuple[int, str]:
        if n % 2:
            response = await client.get(f"/api/v1/recommendations/u{n % 100}?k=5")
        else:
            response = await client.post("/api/v1/recommendations", json={"user_id": f"u{n % 100}"})
        body = await response.json()
        return response.status, body.get("model_version", "")

    async def reload_midway() -> int:
        await asyncio.sleep(0.05)
        response = await client.post(RELOAD, json={"path": str(other_model_dir)}, headers=AUTH)
        return response.status

    results = await asyncio.gather(*(one(n) for n in range(600)), reload_midway())
    answers, reload_status = results[:-1], results[-1]
    assert reload_status == 200
    assert [status for status, _ in answers if status != 200] == []
    new = (await (await client.get("/")).json())["model_version"]
    assert new != old
    assert {version for _, version in answers} <= {old, new}
    after = await (await client.get("/api/v1/recommendations/u1")).json()
    assert after["model_version"] == new
    assert app[METRICS].model_reloads.labels("swapped")._value.get() == 1


async def test_reload_without_a_path_uses_the_configured_directory(aiohttp_client, model_dir):
    client = await aiohttp_client(create_app(config(model_dir)))
    response = await client.post(RELOAD, headers=AUTH)
    body = await response.json()
    assert response.status == 200 and body["status"] == "reloaded"
    assert body["path"] == str(model_dir) and body["previous_version"] == body["version"]


async def test_corrupt_directory_is_refused_and_the_old_model_keeps_serving(
        aiohttp_client, model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    victim = max((p for p in broken.iterdir() if p.suffix == ".npz"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    app = create_app(config(model_dir))
    client = await aiohttp_client(app)
    version = (await (await client.get("/")).json())["model_version"]
    for path in (broken, tmp_path / "missing"):
        response = await client.post(RELOAD, json={"path": str(path)}, headers=AUTH)
        assert response.status == 422, await response.text()
        assert (await response.json())["error"]["code"] == "invalid_model"
    body = await (await client.get("/api/v1/recommendations/u1")).json()
    assert body["model_version"] == version
    assert app[METRICS].model_reloads.labels("refused")._value.get() == 2
    assert app[METRICS].active_models._value.get() == 1


async def test_wrong_or_missing_token_is_401(aiohttp_client, model_dir, other_model_dir):
    client = await aiohttp_client(create_app(config(model_dir)))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}):
        response = await client.post(RELOAD, json={"path": str(other_model_dir)}, headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await response.json())["error"]["code"] == "unauthorized"


async def test_reload_is_disabled_without_a_configured_token(aiohttp_client, model_dir):
    client = await aiohttp_client(create_app(config(model_dir, admin_token=None)))
    response = await client.post(RELOAD, headers=AUTH)
    assert response.status == 403
    assert (await response.json())["error"]["code"] == "reload_disabled"


async def test_reload_loads_a_first_model_into_an_empty_server(aiohttp_client, model_dir):
    client = await aiohttp_client(create_app(config(None)))
    assert (await client.get("/api/v1/health")).status == 503
    assert (await client.post(RELOAD, json={"path": str(model_dir)}, headers=AUTH)).status == 200
    assert (await client.get("/api/v1/health")).status == 200
