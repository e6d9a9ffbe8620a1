"""Every malformed request gets a 4xx ``{"error": {"code", "message"}}``, never a 5xx."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_server import free_port
from server_support import config

from timbral.server.app import OPENAPI_PATH, create_app

REC = "/api/v1/recommendations"


@pytest.fixture
async def client(aiohttp_client, model_dir):
    return await aiohttp_client(create_app(config(model_dir, max_batch_users=50,
                                                  max_body_bytes=4096, max_id_length=64)))


async def error_of(response, status: int) -> dict[str, str]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert "Traceback" not in body["error"]["message"]
    return body["error"]


async def test_malformed_json(client):
    error = await error_of(await client.post(REC, data=b'{"user_id": "u1",'), 400)
    assert error["code"] == "invalid_json"


async def test_body_not_an_object(client):
    error = await error_of(await client.post(REC, json=["u1"]), 422)
    assert "JSON object" in error["message"]


async def test_missing_user_id(client):
    error = await error_of(await client.post(REC, json={"k": 3}), 422)
    assert "missing field user_id" in error["message"]


@pytest.mark.parametrize(("field", "value", "message"), [
    ("user_id", 1.5, "user_id must be a string or an integer"),
    ("user_id", None, "user_id must be a string or an integer"),
    ("user_id", True, "user_id must be a string or an integer"),
    ("k", "10", "k must be an integer"),
    ("k", True, "k must be an integer"),
    ("exclude_seen", "yes", "exclude_seen must be true or false"),
    ("exclude_items", "1001", "exclude_items must be a list of ids"),
    ("items", [1001, {"id": 2}], r"items[1] must be a string or an integer"),
])
async def test_wrong_types(client, field, value, message):
    body = {"user_id": "u1", field: value}
    error = await error_of(await client.post(REC, json=body), 422)
    assert message in error["message"]


@pytest.mark.parametrize("k", [0, -1, 1001, 10**20])
async def test_k_out_of_range_in_body(client, k):
    error = await error_of(await client.post(REC, json={"user_id": "u1", "k": k}), 422)
    assert "1..1000" in error["message"]


@pytest.mark.parametrize("k", ["0", "1001", "ten", ""])
async def test_k_out_of_range_in_query(client, k):
    error = await error_of(await client.get(f"{REC}/u1", params={"k": k}), 422)
    assert "query parameter k" in error["message"]


async def test_unknown_field_is_named(client):
    error = await error_of(await client.post(REC, json={"user_id": "u1", "kk": 3}), 422)
    assert "'kk'" in error["message"]


async def test_batch_above_maximum(client):
    error = await error_of(await client.post(REC, json={"user_ids": [f"u{i}" for i in range(51)]}), 422)
    assert "at most 50" in error["message"]


async def test_empty_batch_and_both_forms(client):
    await error_of(await client.post(REC, json={"user_ids": []}), 422)
    error = await error_of(await client.post(REC, json={"user_id": "u1", "user_ids": ["u2"]}), 422)
    assert "not both" in error["message"]


async def test_body_above_limit_is_413(client):
    body = json.dumps({"user_id": "u1", "exclude_items": list(range(2000))})
    error = await error_of(await client.post(REC, data=body), 413)
    assert error["code"] == "body_too_large"


async def test_unknown_route_is_json_404(client):
    error = await error_of(await client.get("/api/v2/nothing"), 404)
    assert error["code"] == "not_found"


async def test_wrong_method_is_json_405_with_allow(client):
    response = await client.delete("/api/v1/health")
    error = await error_of(response, 405)
    assert error["code"] == "method_not_allowed"
    assert "GET" in response.headers["Allow"]


async def test_absurdly_long_ids(client):
    error = await error_of(await client.post(REC, json={"user_id": "u" * 10_000}), 413)
    assert error["code"] == "body_too_large"
    error = await error_of(await client.post(REC, json={"user_id": "u" * 65}), 422)
    assert "at most 64" in error["message"]
    await error_of(await client.get(f"{REC}/{'u' * 65}"), 422)
    await error_of(await client.get(f"/api/v1/similar/{'9' * 65}"), 422)
    await error_of(await client.post(REC, json={"user_id": 2**70}), 422)


async def test_reload_bad_body(client):
    headers = {"Authorization": "Bearer test-admin-token-0123456789"}
    error = await error_of(await client.post("/api/v1/model/reload", json={"path": 3},
                                             headers=headers), 422)
    assert "path must be a non-empty string" in error["message"]


# -- property-based fuzzing against the OpenAPI document ------------------------------------

DOC = json.loads(OPENAPI_PATH.read_text())
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that mostly follow ``schema``, plus arbitrary JSON to probe the edges."""
    if "$ref" in schema:
        return from_schema(DOC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    if "oneOf" in schema:
        return st.one_of([from_schema(s) for s in schema["oneOf"]])
    kind = schema.get("type")
    if kind == "object":
        props = {name: from_schema(s) for name, s in schema.get("properties", {}).items()}
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: v for k, v in props.items() if k in required},
            optional={k: v for k, v in props.items() if k not in required})
    if kind == "array":
        return st.lists(from_schema(schema["items"]), max_size=min(schema.get("maxItems", 5), 5))
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**63)) - 1, schema.get("maximum", 2**63) + 1)
    if kind == "boolean":
        return st.booleans()
    if kind == "number":
        return st.floats(allow_nan=False)
    return st.text(max_size=schema.get("maxLength", 300) + 1)


def operation_requests() -> st.SearchStrategy[tuple[str, str, bytes | None]]:
    """(method, URL, body) for every documented operation."""
    choices = []
    for path, operations in DOC["paths"].items():
        for method, op in operations.items():
            params = op.get("parameters", [])
            path_params = {p["name"]: st.text(min_size=1, max_size=80) | st.integers().map(str)
                           for p in params if p["in"] == "path"}
            query = {p["name"]: st.text(max_size=8) | st.integers(-5, 2000).map(str)
                     for p in params if p["in"] == "query"}
            body = st.none()
            if "requestBody" in op:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                body = st.one_of(from_schema(schema), JSON).map(lambda v: json.dumps(v).encode())
                body = body | st.binary(max_size=50)

            @st.composite
            def request(draw, path=path, method=method, path_params=path_params, query=query,
                        body=body):
                url = path
                for name, strategy in path_params.items():
                    url = url.replace("{" + name + "}", urllib.parse.quote(draw(strategy), safe=""))
                chosen = draw(st.fixed_dictionaries({}, optional=query))
                if chosen:
                    url += "?" + urllib.parse.urlencode(chosen)
                return method.upper(), url, draw(body)

            choices.append(request())
    return st.one_of(choices)


@pytest.fixture(scope="module")
def live_server(model_dir) -> Iterator[int]:
    """The app on a real socket, in a thread of its own (hypothesis drives it synchronously)."""
    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(config(model_dir, max_batch_users=50)), access_log=None)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    yield port
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@settings(max_examples=250, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=operation_requests())
def test_fuzzed_requests_never_get_a_5xx(live_server, request):
    method, url, body = request
    connection = http.client.HTTPConnection("127.0.0.1", live_server, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if url.endswith("/model/reload") and body is not None and len(body) % 2:
            headers["Authorization"] = "Bearer test-admin-token-0123456789"
        connection.request(method, url, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
    finally:
        connection.close()
    assert response.status < 500, (method, url, body, payload)
    if response.status >= 400:
        assert set(json.loads(payload)["error"]) == {"code", "message"}


async def test_batch_items_above_the_cap_are_refused_naming_it(aiohttp_client, model_dir):
    """Issue 10.3: users × k is capped, and the message says by what and how to comply."""
    client = await aiohttp_client(create_app(config(model_dir, max_batch_items=100)))
    rec = "/api/v1/recommendations"
    error = await error_of(await client.post(rec, json={"user_ids": ["u1", "u2", "u3"], "k": 34}), 422)
    assert error["code"] == "batch_too_large"
    assert error["message"] == ("3 user_ids × k=34 asks for 102 items; a batch answers at most 100 "
                                "(TIMBRAL_MAX_BATCH_ITEMS): send fewer users per request or a smaller k")
    response = await client.post(rec, json={"user_ids": ["u1", "u2", "u3", "u4"], "k": 25})
    assert response.status == 200
    assert [len(r["recommendations"]) for r in (await response.json())["results"]] == [25] * 4


@pytest.mark.parametrize("k", [" 5", "+5", "1_0", "٥", "5.0"])
async def test_query_k_takes_ascii_digits_only(client, k):
    error = await error_of(await client.get(f"{REC}/u1", params={"k": k}), 422)
    assert "query parameter k must be an integer" in error["message"]


@pytest.mark.parametrize("value", ["yes", "TRUE", " true", ""])
async def test_query_exclude_seen_takes_the_documented_spellings_only(client, value):
    error = await error_of(await client.get(f"{REC}/u1", params={"exclude_seen": value}), 422)
    assert "exclude_seen must be true or false" in error["message"]


async def test_reload_path_too_long_for_the_file_system_is_a_422(client):
    headers = {"Authorization": "Bearer test-admin-token-0123456789"}
    error = await error_of(await client.post("/api/v1/model/reload", json={"path": "0" * 300},
                                             headers=headers), 422)
    assert error["code"] == "invalid_model" and "File name too long" in error["message"]


async def test_reload_body_null_is_not_an_empty_body(client):
    headers = {"Authorization": "Bearer test-admin-token-0123456789"}
    error = await error_of(await client.post("/api/v1/model/reload", data=b"null",
                                             headers=headers), 422)
    assert "the body must be a JSON object" in error["message"]


async def test_reload_path_with_nul_is_refused(client):
    headers = {"Authorization": "Bearer test-admin-token-0123456789"}
    error = await error_of(await client.post("/api/v1/model/reload", json={"path": "/models/a\x00b"},
                                             headers=headers), 422)
    assert "without NUL" in error["message"]


async def test_null_lists_mean_absent_as_documented(client):
    response = await client.post(REC, json={"user_id": "u1", "items": None, "exclude_items": None})
    assert response.status == 200
