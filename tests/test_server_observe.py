"""What the ``observe`` middleware does around every request: the request id (the
caller's when acceptable, else a fresh one), the per-request metrics, and one access-log
line with the same fields, for answers, failures and unmatched paths alike."""

from __future__ import annotations

import json
import re

import pytest
from aiohttp import web
from server_support import config

from timbral.server import access_log
from timbral.server.app import add_routes, create_app
from timbral.server.keys import METRICS


@pytest.fixture
def logged(capfd, aiohttp_client, model_dir, monkeypatch):
    """Builds, inside the test (so that its log goes to the stderr ``capfd`` reads), a
    client over an app logging at INFO; lines are written only when it closes."""
    monkeypatch.setattr(access_log, "FLUSH_SECONDS", 3600.0)

    async def crash(request):
        raise RuntimeError("the handler failed")

    async def build():
        app = create_app(config(model_dir, log_level="INFO"))
        add_routes(app, [web.get("/crash", crash)])
        return await aiohttp_client(app)

    return build


def _access_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if '"timbral.server.access"' in line]


async def test_the_callers_request_id_is_echoed_and_logged(logged, capfd):
    client = await logged()
    response = await client.get("/ping", headers={"X-Request-ID": "caller-7"})
    assert response.headers["X-Request-ID"] == "caller-7"
    await client.close()
    (line,) = _access_lines(capfd.readouterr().err)
    assert line["request_id"] == "caller-7"


async def test_the_request_id_header_is_read_in_any_case(logged, capfd):
    client = await logged()
    response = await client.get("/ping", headers={"x-request-id": "lower-1"})
    assert (b"X-Request-ID", b"lower-1") in response.raw_headers  # sent spelled as documented
    await client.close()
    (line,) = _access_lines(capfd.readouterr().err)
    assert line["request_id"] == "lower-1"


@pytest.mark.parametrize("sent", [None, "", "x" * 129])
async def test_a_missing_empty_or_overlong_request_id_is_replaced_by_a_fresh_one(logged, capfd, sent):
    client = await logged()
    headers = {} if sent is None else {"X-Request-ID": sent}
    ids = [(await client.get("/ping", headers=headers)).headers["X-Request-ID"] for _ in range(3)]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", i) for i in ids)
    await client.close()
    assert [line["request_id"] for line in _access_lines(capfd.readouterr().err)] == ids


async def test_a_128_character_request_id_is_accepted(logged):
    client = await logged()
    response = await client.get("/ping", headers={"X-Request-ID": "y" * 128})
    assert response.headers["X-Request-ID"] == "y" * 128
    await client.close()  # its line is written while capfd still reads stderr


async def test_hostile_request_ids_stay_inside_their_json_string(logged, capfd):
    client = await logged()
    hostile = ['a"b', "back\\slash", '"},{"level":"ERROR', "é☃"]
    for text in hostile:
        assert (await client.get("/ping", headers={"X-Request-ID": text})).status == 200
    await client.close()
    assert [line["request_id"] for line in _access_lines(capfd.readouterr().err)] == hostile


async def test_every_answer_has_a_request_id_and_one_line_with_the_same_fields(logged, capfd):
    client = await logged()
    """Success, a crashed handler, an unmatched path and a wrong method: same fields,
    the status actually sent, the route template (never the raw path) as the route."""
    asked = [("GET", "/ping", 200, "/ping"), ("GET", "/crash", 500, "/crash"),
             ("GET", "/nowhere", 404, "unmatched"), ("POST", "/ping", 405, "unmatched"),
             ("GET", "/api/v1/similar/1000", 200, "/api/v1/similar/{item_id}")]
    for method, path, status, _ in asked:
        response = await client.request(method, path, headers={"X-Request-ID": f"r-{path}-{method}"})
        assert response.status == status and response.headers["X-Request-ID"] == f"r-{path}-{method}"
    await client.close()
    lines = _access_lines(capfd.readouterr().err)
    assert [(line["method"], line["path"], line["status"], line["route"]) for line in lines] == asked
    for line in lines:
        assert set(line) == {"timestamp", "level", "service", "logger", "message", "request_id",
                             "method", "path", "route", "status", "duration_ms"}
        assert line["level"] == "INFO" and line["service"] == "timbral-ml" and line["message"] == "request"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"])
        assert 0 < line["duration_ms"] < 60_000


async def test_metrics_count_each_route_method_and_status_and_sum_each_routes_latency(aiohttp_client,
                                                                                     model_dir):
    app = create_app(config(model_dir))

    async def crash(request):
        raise RuntimeError("the handler failed")

    add_routes(app, [web.get("/crash", crash)])
    client = await aiohttp_client(app)
    for path in ("/ping", "/ping", "/crash", "/nowhere"):
        await client.get(path)
    await client.post("/ping")
    text = (await (await client.get("/metrics")).read()).decode()
    for route, method, status, count in (("/ping", "GET", 200, 2), ("/crash", "GET", 500, 1),
                                         ("unmatched", "GET", 404, 1), ("unmatched", "POST", 405, 1)):
        assert f'timbral_requests_total{{method="{method}",route="{route}",status="{status}"}} {count}.0' in text
    # one histogram per route, over all its methods and statuses
    assert 'timbral_request_duration_seconds_count{route="unmatched"} 2.0' in text
    assert 'timbral_request_duration_seconds_bucket{le="+Inf",route="/ping"} 2.0' in text
    assert "timbral_requests_in_flight 1.0" in text  # the /metrics request itself: the crash gave its back
    series = app[METRICS].requests
    assert series.in_flight == 0


def test_a_routes_histogram_sums_its_statuses_buckets_and_seconds():
    from timbral.server.metrics import Metrics

    metrics = Metrics()
    for status, seconds in ((200, 0.0004), (200, 0.002), (503, 0.002), (503, 7.0)):
        metrics.requests.observe("/api/v1/health", "GET", status, seconds)
    text = metrics.exposition().decode()
    route = 'route="/api/v1/health"'
    assert f'timbral_request_duration_seconds_bucket{{le="0.0005",{route}}} 1.0' in text
    assert f'timbral_request_duration_seconds_bucket{{le="0.0025",{route}}} 3.0' in text
    assert f'timbral_request_duration_seconds_bucket{{le="5.0",{route}}} 3.0' in text
    assert f'timbral_request_duration_seconds_bucket{{le="+Inf",{route}}} 4.0' in text
    total = re.search(rf"timbral_request_duration_seconds_sum{{{route}}} (\S+)", text).group(1)
    assert float(total) == pytest.approx(7.0044, rel=1e-12)
    assert f'timbral_requests_total{{method="GET",{route},status="200"}} 2.0' in text
    assert f'timbral_requests_total{{method="GET",{route},status="503"}} 2.0' in text


async def test_the_routers_own_404_and_405_are_answered_as_json_with_an_id(aiohttp_client, model_dir):
    """They go through the catch-all route: the 405's Allow lists what the path allows,
    for templated paths and for "/" alike; the index never lists the catch-all."""
    client = await aiohttp_client(create_app(config(model_dir)))
    for method, path, status, allow in (("POST", "/api/v1/similar/1000", 405, "GET,HEAD"),
                                        ("DELETE", "/", 405, "GET,HEAD"),
                                        ("PUT", "/api/v1/recommendations", 405, "POST"),
                                        ("GET", "/api/v1/similar", 404, None),
                                        ("GET", "/ping/", 404, None)):
        response = await client.request(method, path)
        assert response.status == status and response.headers.get("Allow") == allow
        assert response.headers["X-Request-ID"]
        code = (await response.json())["error"]["code"]
        assert code == ("method_not_allowed" if status == 405 else "not_found")
    head = await client.head("/nowhere")
    assert head.status == 404 and head.headers["X-Request-ID"]
    listed = (await (await client.get("/")).json())["endpoints"]
    assert all(endpoint["method"] != "*" and "{tail}" not in endpoint["path"] for endpoint in listed)


async def test_a_route_added_without_observe_is_refused_when_the_app_starts(model_dir):
    app = create_app(config(model_dir))

    async def unseen(request):
        return web.Response(text="no id, no metrics, no log line")

    app.router.add_get("/unseen", unseen)
    runner = web.AppRunner(app)
    with pytest.raises(RuntimeError, match=r"route (GET|HEAD) /unseen was added with app.router directly.*add_routes"):
        await runner.setup()
    await runner.cleanup()
