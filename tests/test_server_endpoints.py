"""Each endpoint's success shape through ``aiohttp_client`` over ``create_app``."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from server_support import ADMIN, ADMIN_TOKEN, N_ITEMS, N_USERS, config

from timbral.server.app import OPENAPI_PATH, create_app
from timbral.server.config import Config, ConfigError
from timbral.server.keys import CACHE, MODEL


@pytest.fixture
async def client(aiohttp_client, model_dir):
    return await aiohttp_client(create_app(config(model_dir)))


async def test_ping_is_plain_pong(client):
    response = await client.get("/ping")
    assert response.status == 200
    assert await response.text() == "pong"
    assert response.headers["X-Request-ID"]


async def test_index_lists_service_version_and_endpoints(client):
    body = await (await client.get("/")).json()
    assert body["service"] == "timbral-ml"
    assert body["model_version"]
    assert {"method": "POST", "path": "/api/v1/recommendations"} in body["endpoints"]


async def test_health_ok_with_model_and_no_redis(client):
    response = await client.get("/api/v1/health", headers=ADMIN)
    body = await response.json()
    assert response.status == 200
    assert body["status"] == "ok"
    assert body["components"]["model"]["users"] == N_USERS
    assert body["components"]["model"]["items"] == N_ITEMS
    assert body["components"]["redis"]["status"] == "disabled"
    assert {"cpu_percent", "memory_percent", "disk_percent"} <= set(body["components"]["system"])


async def test_health_is_503_without_a_model(aiohttp_client):
    client = await aiohttp_client(create_app(config(None)))
    response = await client.get("/api/v1/health")
    assert response.status == 503
    assert (await response.json())["status"] == "unavailable"
    response = await client.get("/api/v1/recommendations/u1")
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "model_unavailable"
    assert (await client.get("/ping")).status == 200


async def test_get_recommendations_shape(client):
    response = await client.get("/api/v1/recommendations/u3?k=5")
    body = await response.json()
    assert response.status == 200
    assert set(body) == {"user_id", "model_version", "strategy", "cached", "recommendations"}
    assert body["user_id"] == "u3" and body["strategy"] == "nmf" and body["cached"] is False
    assert len(body["recommendations"]) == 5
    assert all(set(r) == {"item_id", "score"} for r in body["recommendations"])
    scores = [r["score"] for r in body["recommendations"]]
    assert scores == sorted(scores, reverse=True)


async def test_unknown_user_gets_popular_items(client):
    body = await (await client.get("/api/v1/recommendations/nobody")).json()
    assert body["strategy"] == "popularity"
    assert len(body["recommendations"]) == 10


async def test_post_single_with_filters_and_fold_in(client):
    first = await (await client.post("/api/v1/recommendations", json={"user_id": "u3", "k": 3})).json()
    banned = [r["item_id"] for r in first["recommendations"]]
    body = await (await client.post("/api/v1/recommendations", json={
        "user_id": "u3", "k": 3, "exclude_items": banned, "exclude_seen": False})).json()
    assert not set(banned) & {r["item_id"] for r in body["recommendations"]}
    folded = await (await client.post("/api/v1/recommendations", json={
        "user_id": "new-listener", "k": 4, "items": [1001, 1002, 1003]})).json()
    assert folded["strategy"] == "fold_in"
    assert not {1001, 1002, 1003} & {r["item_id"] for r in folded["recommendations"]}


async def test_post_batch_shape(client):
    response = await client.post("/api/v1/recommendations",
                                 json={"user_ids": ["u1", "u2", "ghost"], "k": 2})
    body = await response.json()
    assert response.status == 200
    assert [r["user_id"] for r in body["results"]] == ["u1", "u2", "ghost"]
    assert [r["strategy"] for r in body["results"]] == ["nmf", "nmf", "popularity"]
    assert all(len(r["recommendations"]) == 2 for r in body["results"])


async def test_explain_shape(client):
    rec = await (await client.get("/api/v1/recommendations/u5?k=1")).json()
    item = rec["recommendations"][0]["item_id"]
    response = await client.get(f"/api/v1/explain/u5/{item}")
    body = await response.json()
    assert response.status == 200
    assert body["user_id"] == "u5" and body["item_id"] == item
    assert body["score"] == pytest.approx(rec["recommendations"][0]["score"], rel=1e-4)
    assert body["factors"] and {"factor", "contribution"} == set(body["factors"][0])


async def test_similar_shape_and_unknown_item_404(client):
    body = await (await client.get("/api/v1/similar/1000?k=4")).json()
    assert body["item_id"] == 1000 and len(body["similar"]) == 4
    assert 1000 not in {r["item_id"] for r in body["similar"]}
    response = await client.get("/api/v1/similar/999999")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "unknown_id"
    response = await client.get("/api/v1/explain/u1/not-an-item")
    assert response.status == 404


async def test_metrics_exports_the_agreed_names(client):
    await client.get("/api/v1/recommendations/u1")
    await client.get("/api/v1/recommendations/u1")
    text = await (await client.get("/metrics")).text()
    for name in ("timbral_requests_total", "timbral_request_duration_seconds_bucket",
                 "timbral_cache_hit_rate", "timbral_active_models", "timbral_cache_hits_total",
                 "timbral_cache_misses_total", "timbral_redis_errors_total"):
        assert name in text
    assert ('timbral_requests_total{method="GET",route="/api/v1/recommendations/{user_id}",'
            'status="200"} 2.0') in text
    assert "timbral_active_models 1.0" in text
    assert "timbral_cache_hit_rate 0.5" in text
    route = 'route="/api/v1/recommendations/{user_id}"'
    assert f'timbral_request_duration_seconds_bucket{{le="+Inf",{route}}} 2.0' in text
    assert f"timbral_request_duration_seconds_count{{{route}}} 2.0" in text
    assert 'timbral_cache_hits_total{tier="1"} 1.0' in text
    assert 'timbral_cache_misses_total{tier="1"} 1.0' in text
    assert "timbral_requests_in_flight 1.0" in text  # the /metrics request itself


def test_latency_buckets_are_cumulative_and_inclusive():
    from timbral.server.metrics import LATENCY_BUCKETS, Metrics

    metrics = Metrics()
    for seconds in (0.0005, 0.0007, 0.003, 99.0):  # on a bound, inside, inside, past the last
        metrics.requests.observe("/ping", "GET", 200, seconds)
    text = metrics.exposition().decode()
    assert 'timbral_request_duration_seconds_bucket{le="0.0005",route="/ping"} 1.0' in text
    assert 'timbral_request_duration_seconds_bucket{le="0.001",route="/ping"} 2.0' in text
    assert 'timbral_request_duration_seconds_bucket{le="0.005",route="/ping"} 3.0' in text
    assert f'timbral_request_duration_seconds_bucket{{le="{LATENCY_BUCKETS[-1]}",route="/ping"}} 3.0' in text
    assert 'timbral_request_duration_seconds_bucket{le="+Inf",route="/ping"} 4.0' in text
    assert 'timbral_request_duration_seconds_sum{route="/ping"} 99.0042' in text


async def test_openapi_document_matches_the_routes(client):
    served = await (await client.get("/api/v1/openapi.json")).json()
    assert served == json.loads(OPENAPI_PATH.read_text())
    documented = {(method.upper(), path) for path, ops in served["paths"].items() for method in ops}
    registered = {(route.method, route.resource.canonical) for route in client.app.router.routes()
                  if route.method not in ("HEAD", "*")}  # "*": the catch-all answering 404/405
    assert documented == registered


def test_config_from_env_reads_the_operator_names(tmp_path):
    cfg = Config.from_env({"API_PORT": "9000", "DEBUG": "true", "REDIS_URL": "redis://r:6379",
                           "REDIS_DB": "2", "TIMBRAL_MODEL_DIR": str(tmp_path),
                           "CACHE_TTL_SECONDS": "60", "TIMBRAL_ADMIN_TOKEN": ADMIN_TOKEN,
                           "LOG_LEVEL": "debug", "NMF_N_COMPONENTS": "32"})
    assert (cfg.api_port, cfg.debug, cfg.redis_db, cfg.model_dir, cfg.log_level) == (
        9000, True, 2, tmp_path, "DEBUG")
    assert Config.from_env({}).api_port == 8001


def test_config_errors_name_every_bad_variable():
    with pytest.raises(ConfigError, match=r"API_PORT='eighty': expected an integer") as info:
        Config.from_env({"API_PORT": "eighty", "DEBUG": "maybe"})
    assert "DEBUG='maybe'" in str(info.value)
    with pytest.raises(ConfigError, match=r"REDIS_URL='localhost:6379': expected a URL"):
        Config.from_env({"REDIS_URL": "localhost:6379"})
    with pytest.raises(ConfigError, match=r"CACHE_TTL_SECONDS=0.0: expected a number of seconds > 0"):
        Config.from_env({"CACHE_TTL_SECONDS": "0"})


async def test_responses_are_orjson_encoded_json(client):
    response = await client.get("/api/v1/recommendations/u2")
    assert response.content_type == "application/json"
    assert orjson.loads(await response.read())["user_id"] == "u2"


async def test_access_log_is_one_json_line_per_request(aiohttp_client, model_dir, capfd):
    client = await aiohttp_client(create_app(config(model_dir, log_level="INFO")))
    response = await client.get("/api/v1/recommendations/u4", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    await asyncio.sleep(0.4)  # lines are written in batches
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    (entry,) = [line for line in lines if line.get("request_id") == "abc-123"]
    assert entry["service"] == "timbral-ml" and entry["level"] == "INFO"
    assert entry["route"] == "/api/v1/recommendations/{user_id}" and entry["status"] == 200
    assert entry["duration_ms"] > 0 and entry["timestamp"].endswith("Z")


async def test_access_log_in_text_format_is_one_short_line_per_request(aiohttp_client, model_dir, capfd):
    client = await aiohttp_client(create_app(config(model_dir, log_level="INFO", log_format="text")))
    await client.get("/api/v1/recommendations/u4", headers={"X-Request-ID": "abc-124"})
    await asyncio.sleep(0.4)  # lines are written in batches
    (line,) = [line for line in capfd.readouterr().err.splitlines() if "request_id=abc-124" in line]
    assert " INFO  GET /api/v1/recommendations/u4 200 " in line and not line.startswith("{")


async def test_public_health_says_why_in_general_terms_only(aiohttp_client, model_dir, tmp_path):
    """Issue 10.5: the model's path, Redis's address and its error text need the admin token."""
    from redis_server import free_port

    app = create_app(config(model_dir, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                            redis_timeout_seconds=0.05, redis_connect_timeout_seconds=0.05))
    client = await aiohttp_client(app)
    public = await (await client.get("/api/v1/health")).json()
    assert public == {"status": "degraded",
                      "reason": "the shared cache is not answering; answers are computed",
                      "components": {"model": {"status": "ok"},
                                     "redis": {"status": "degraded", "reason": "not answering"},
                                     "database": {"status": "disabled"},
                                     "system": {"status": "ok"}}}
    wrong = await (await client.get("/api/v1/health", headers={"Authorization": "Bearer nope"})).json()
    assert wrong == public
    admin = await (await client.get("/api/v1/health", headers=ADMIN)).json()
    assert admin["components"]["model"]["path"] == str(model_dir)
    assert "127.0.0.1" in admin["components"]["redis"]["reason"]
    assert "process_rss_mb" in admin["components"]["system"]


async def test_unknown_users_share_one_cached_popularity_entry(client):
    """Issue 10.1: answers for made-up ids are not cached one per id."""
    cache = client.app[CACHE]
    first = await (await client.get("/api/v1/recommendations/ghost-1?k=7")).json()
    entries = len(cache.tier1)
    bodies = [await (await client.get(f"/api/v1/recommendations/ghost-{i}?k=7")).json()
              for i in range(2, 50)]
    assert len(cache.tier1) == entries == 1
    assert first["cached"] is False and all(body["cached"] for body in bodies)
    assert [body["user_id"] for body in bodies] == [f"ghost-{i}" for i in range(2, 50)]
    assert {body["strategy"] for body in bodies} == {"popularity"}
    assert all(body["recommendations"] == first["recommendations"] for body in bodies)
    recommender = client.app[MODEL].require().recommender
    assert [r["item_id"] for r in first["recommendations"]] == [i for i, _ in recommender.popular(7)]
    assert set(first) == {"user_id", "model_version", "strategy", "cached", "recommendations"}
