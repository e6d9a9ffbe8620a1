"""timbral.client against the real service process, and against a small aiohttp app
in this file that answers slowly or with 502/503/504, ``Retry-After`` and strangers'
bodies (those behaviours do not belong in the product)."""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import trustme
from aiohttp import web
from numpy.testing import assert_allclose
from redis_server import free_port
from server_support import ADMIN_TOKEN, ServerProcess

from timbral.client import (
    ClientError,
    ServiceError,
    ServiceTimeoutError,
    ServiceUnreachableError,
    SyncTimbralClient,
    TimbralClient,
)
from timbral.exceptions import ValidationError
from timbral.recommender import Recommender

# -- the real service ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"TIMBRAL_MODEL_DIR": str(model_dir), "TIMBRAL_ADMIN_TOKEN": ADMIN_TOKEN}
    with ServerProcess(tmp_path_factory.mktemp("service"), env) as process:
        yield process


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Recommender:
    return Recommender.load(model_dir)


def assert_same_items(got: list[tuple[Any, float]], expected: list[tuple[Any, float]]) -> None:
    assert [item for item, _ in got] == [item for item, _ in expected]
    assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5)


async def test_recommend_answers_what_the_model_answers(service, reference):
    async with TimbralClient(service.url) as client:
        got = await client.recommend("u3", k=5)
    expected = reference.recommend("u3", k=5)
    assert (got.user_id, got.strategy, got.model_version) == ("u3", "nmf", reference.model_version)
    assert all(isinstance(item, int) for item, _ in got.items)
    assert_same_items(got.items, expected.items)


async def test_recommend_folds_in_a_new_listener_and_honours_exclusions(service, reference):
    recent = [1001, 1007, 1010]
    async with TimbralClient(service.url) as client:
        new = await client.recommend("someone-new", k=5, items=recent)
        unknown = await client.recommend("someone-new", k=5)
        first = (await client.recommend("u3", k=5)).items[0][0]
        without = await client.recommend("u3", k=5, exclude_items=[first])
    assert new.strategy == "fold_in"
    assert_same_items(new.items, reference.recommend("someone-new", k=5, recent_items=recent).items)
    assert unknown.strategy == "popularity"
    assert first not in [item for item, _ in without.items]


async def test_recommend_batch_keeps_the_order_and_matches_single_calls(service, reference):
    users = ["u5", "nobody", "u0", np.str_("u7")]
    async with TimbralClient(service.url) as client:
        batch = await client.recommend_batch(users, k=4)
    assert [r.user_id for r in batch] == ["u5", "nobody", "u0", "u7"]
    assert [r.strategy for r in batch] == ["nmf", "popularity", "nmf", "nmf"]
    for result, user in zip(batch, users, strict=True):
        assert_same_items(result.items, reference.recommend(str(user), k=4).items)


async def test_explain_and_similar_match_the_model(service, reference):
    item = reference.recommend("u3", k=1).items[0][0]
    async with TimbralClient(service.url) as client:
        why = await client.explain("u3", np.int64(item))  # numpy ids, as notebooks hold them
        close = await client.similar(item, k=6)
    expected = reference.explain("u3", item)
    assert (why.user_id, why.item_id) == ("u3", item)
    assert why.score == pytest.approx(expected.score, rel=1e-5)
    assert [f for f, _ in why.factors] == [f for f, _ in expected.factors]
    assert_same_items(why.items, expected.items)
    assert close.item_id == item
    assert_same_items(close.items, reference.similar(item, k=6))


async def test_health_of_a_serving_model(service, reference):
    async with TimbralClient(service.url) as client:
        health = await client.health()
        detailed = await client.health(admin_token=ADMIN_TOKEN)
    assert health.ok and health.reason is None
    assert "version" not in health.components["model"]  # details only for operators
    assert detailed.components["model"]["version"] == reference.model_version
    assert detailed.components["redis"]["status"] == "disabled"


async def test_service_errors_carry_code_and_message(service):
    async with TimbralClient(service.url, retries=3) as client:
        with pytest.raises(ServiceError, match=r"404 unknown_id: .*") as unknown:
            await client.similar(987654, k=3)
        with pytest.raises(ServiceError, match=r"422 invalid_request: k must be in 1\.\.1000, got 0"):
            await client.recommend("u3", k=0)
        with pytest.raises(ServiceError, match=r"422 invalid_request: user_ids must be a non-empty"):
            await client.recommend_batch([], k=3)
    assert unknown.value.status == 404 and unknown.value.code == "unknown_id"
    assert unknown.value.request_id.startswith("client-")


@pytest.mark.parametrize("hostile", ["a/b", "../../metrics", "x?k=5#frag", "spaced out", "ü∂", "%2F"])
async def test_ids_with_url_syntax_stay_one_path_segment(service, hostile):
    """An id is never re-read as a path, query or fragment: it reaches the model as given."""
    async with TimbralClient(service.url) as client:
        with pytest.raises(ServiceError, match=r"404 unknown_id: ") as caught:
            await client.explain(hostile, 1001)
    assert caught.value.message.startswith(f"user_id {hostile!r} is not known")


async def test_sync_client_works_in_scripts_and_inside_a_running_loop(service, reference):
    """A notebook cell runs inside the kernel's event loop; the sync client must not need it."""
    with SyncTimbralClient(service.url, timeout=10) as client:
        got = client.recommend("u3", k=5)
        batch = client.recommend_batch(["u3"], k=5)
        assert client.health().ok
        assert client.similar(got.items[0][0], k=2).items
        assert client.explain("u3", got.items[0][0]).score == pytest.approx(got.items[0][1], rel=1e-5)
    assert_same_items(got.items, reference.recommend("u3", k=5).items)
    assert batch[0].items == got.items
    client.close()  # idempotent
    with pytest.raises(ClientError, match="this SyncTimbralClient is closed; create a new one"):
        client.health()


async def test_retries_carry_a_call_across_a_service_restart(model_dir, tmp_path):
    """Kill the service, start it again: a call made while it is down waits it out."""
    service = ServerProcess(tmp_path, {"TIMBRAL_MODEL_DIR": str(model_dir)})
    await asyncio.to_thread(service.start)
    try:
        async with TimbralClient(service.url, timeout=120, retries=1000, max_backoff=0.5) as client:
            before = await client.recommend("u3", k=5)  # leaves a pooled keep-alive connection
            await asyncio.to_thread(service.stop)
            async with TimbralClient(service.url, retries=0) as impatient:
                with pytest.raises(ServiceUnreachableError, match=r"is the service running at http"):
                    await impatient.recommend("u3", k=5)
            # The call starts while nothing listens; the service comes back meanwhile.
            _, after = await asyncio.gather(asyncio.to_thread(service.start), client.recommend("u3", k=5))
    finally:
        service.stop()
    assert after.items == before.items


async def test_nothing_listening_is_unreachable_after_the_retries():
    async with TimbralClient(f"http://127.0.0.1:{free_port()}", retries=2, timeout=30) as client:
        with pytest.raises(ServiceUnreachableError, match=r"\(3 attempts\); is the service running"):
            await client.health()


# -- a scripted stand-in for failure modes ---------------------------------------------------


@dataclass
class Script:
    """Answers to give in turn (the last one repeats), and what arrived."""

    answers: list[tuple[int, dict[str, str], bytes]]
    delay: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    return status, {}, orjson.dumps({"error": {"code": code, "message": message}})


SIMILAR = (200, {}, orjson.dumps({"item_id": 7, "model_version": "v1",
                                  "similar": [{"item_id": 8, "score": 0.5}]}))
RECOMMENDATIONS = (200, {}, orjson.dumps({"user_id": "u1", "strategy": "nmf", "model_version": "v1",
                                          "cached": False,
                                          "recommendations": [{"item_id": 8, "score": 0.5}]}))


@pytest.fixture
def scripted(aiohttp_server):
    """``start(script)`` serves ``script`` for every path and method; returns the base URL."""

    async def start(script: Script, ssl: ssl_module.SSLContext | None = None) -> str:
        async def answer(request: web.Request) -> web.Response:
            script.arrivals.append(time.monotonic())
            script.request_ids.append(request.headers.get("X-Request-ID", ""))
            script.paths.append(request.raw_path)
            raw = await request.read()
            script.bodies.append(orjson.loads(raw) if raw else None)
            if script.delay:
                await asyncio.sleep(script.delay)
            status, headers, body = script.answers[min(len(script.arrivals), len(script.answers)) - 1]
            return web.Response(status=status, headers=headers, body=body,
                                content_type="application/json")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        server = await aiohttp_server(app, ssl=ssl)
        return str(server.make_url("")).rstrip("/")

    return start


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_errors_are_retried_with_one_request_id(scripted, status):
    script = Script([error(status, "unavailable", "restarting"), error(status, "unavailable", "again"),
                     SIMILAR])
    async with TimbralClient(await scripted(script), retries=3, backoff=0.01) as client:
        result = await client.similar(7, k=1)
    assert result.items == [(8, 0.5)]
    assert len(script.arrivals) == 3
    assert len(set(script.request_ids)) == 1 and script.request_ids[0].startswith("client-")


async def test_idempotent_post_is_retried(scripted):
    script = Script([error(503, "unavailable", "busy"), RECOMMENDATIONS])
    async with TimbralClient(await scripted(script), backoff=0.01) as client:
        result = await client.recommend("u1", k=1, exclude_items=[3], items=[np.int64(4)])
    assert (result.strategy, result.items) == ("nmf", [(8, 0.5)])
    assert script.bodies == [{"user_id": "u1", "k": 1, "exclude_items": [3], "items": [4]}] * 2


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 429, 500])
async def test_other_errors_are_never_retried(scripted, status):
    script = Script([(status, {"Retry-After": "0"},
                      orjson.dumps({"error": {"code": "nope", "message": "will not change"}})), SIMILAR])
    async with TimbralClient(await scripted(script), retries=5) as client:
        with pytest.raises(ServiceError, match=rf"{status} nope: will not change \(request client-"):
            await client.similar(7)
    assert len(script.arrivals) == 1


async def test_retries_are_bounded(scripted):
    script = Script([error(503, "no_model", "no model loaded")])
    async with TimbralClient(await scripted(script), retries=2, backoff=0.01) as client:
        with pytest.raises(ServiceError, match="503 no_model: no model loaded") as caught:
            await client.similar(7)
    assert caught.value.status == 503 and len(script.arrivals) == 3


async def test_retry_after_is_waited_for(scripted):
    script = Script([(503, {"Retry-After": "1"}, b"{}"), SIMILAR])
    async with TimbralClient(await scripted(script), backoff=0.01, timeout=30) as client:
        await client.similar(7)
    assert script.arrivals[1] - script.arrivals[0] >= 1.0  # a lower bound, not a speed limit


async def test_retry_after_past_the_deadline_gives_up_at_once(scripted):
    script = Script([(503, {"Retry-After": "Fri, 31 Dec 2100 23:59:59 GMT"},
                      orjson.dumps({"error": {"code": "maintenance", "message": "back later"}}))])
    async with TimbralClient(await scripted(script), retries=5, timeout=30) as client:
        with pytest.raises(ServiceError, match="503 maintenance: back later"):
            await client.similar(7)
    assert len(script.arrivals) == 1


async def test_a_slow_answer_hits_the_deadline(scripted):
    script = Script([SIMILAR], delay=30)
    async with TimbralClient(await scripted(script), timeout=60, retries=3) as client:
        with pytest.raises(ServiceTimeoutError, match=r"GET /api/v1/similar/7: no answer within the "
                                                      r"0\.3 s deadline \(1 attempt\); raise `timeout`"):
            await client.similar(7, timeout=0.3)  # a per-call deadline overrides the client's
    assert len(script.arrivals) == 1


async def test_a_proxy_error_page_becomes_a_service_error(scripted):
    script = Script([(502, {}, b"<html><body>Bad Gateway</body></html>")])
    async with TimbralClient(await scripted(script), retries=1, backoff=0.01) as client:
        with pytest.raises(ServiceError, match=r"502 http_error: <html><body>Bad Gateway") as caught:
            await client.similar(7)
    assert caught.value.code == "http_error" and len(script.arrivals) == 2


async def test_something_else_answering_is_reported(scripted):
    script = Script([(200, {}, b"<html>welcome to nginx</html>")])
    async with TimbralClient(await scripted(script)) as client:
        with pytest.raises(ServiceError, match=r"200 invalid_response: .* is .* a Timbral service\?"):
            await client.similar(7)


async def test_a_certificate_that_does_not_verify_is_not_retried(scripted):
    """HTTPS to a service whose certificate this machine does not trust: one attempt, a clear error."""
    context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(context)
    script = Script([SIMILAR])
    url = await scripted(script, ssl=context)
    assert url.startswith("https://")
    async with TimbralClient(url, retries=5) as client:
        with pytest.raises(ServiceUnreachableError, match=r"GET /api/v1/similar/7: .*certificate verify failed") \
                as caught:
            await client.similar(7)
    assert "attempts" not in str(caught.value)  # given up at once, not after 6 handshakes
    assert script.arrivals == []  # the handshake failed: no request was ever made


async def test_health_reports_unavailable_without_retrying(scripted):
    body = orjson.dumps({"status": "unavailable", "reason": "no model is loaded",
                         "components": {"model": {"status": "unavailable"}}})
    script = Script([(503, {}, body)])
    async with TimbralClient(await scripted(script), retries=5) as client:
        health = await client.health()
    assert (health.status, health.reason, health.ok) == ("unavailable", "no model is loaded", False)
    assert len(script.arrivals) == 1


async def test_health_behind_a_gateway_error_is_retried(scripted):
    script = Script([error(503, "upstream_down", "no healthy upstream"), error(503, "upstream_down", "still"),
                     (200, {}, orjson.dumps({"status": "ok", "components": {}}))])
    async with TimbralClient(await scripted(script), retries=5, backoff=0.01) as client:
        health = await client.health()
    assert (health.status, len(script.arrivals)) == ("ok", 3)


async def test_a_path_prefix_in_base_url_is_kept(scripted):
    script = Script([SIMILAR])
    async with TimbralClient(await scripted(script) + "/timbral/") as client:
        await client.similar("a/b", k=3)
    assert script.paths == ["/timbral/api/v1/similar/a%2Fb?k=3"]


# -- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"base_url": "localhost:8001"}, r"`base_url` must be an http:// or https:// URL with a host"),
    ({"base_url": "ftp://example.com"}, r"`base_url` must be .* got 'ftp://example.com'"),
    ({"base_url": None}, r"`base_url` must be .* got None"),
    ({"base_url": "https://admin:hunter2@gw.example.com:8443"},
     r"`base_url` must not carry a user name or password .*; got 'https://\*\*\*@gw.example.com:8443'"),
    ({"timeout": 0}, r"`timeout` must be a number of seconds > 0; got 0"),
    ({"timeout": float("nan")}, r"`timeout` must be a number of seconds > 0; got nan"),
    ({"timeout": "5"}, r"`timeout` must be a number of seconds > 0; got '5'"),
    ({"retries": -1}, r"`retries` must be an integer >= 0 \(0 = no retries\); got -1"),
    ({"retries": True}, r"`retries` must be an integer >= 0"),
    ({"backoff": -0.1}, r"`backoff` must be a number of seconds > 0; got -0.1"),
    ({"max_connections": 0}, r"`max_connections` must be an integer >= 1; got 0"),
])
def test_bad_client_arguments_are_refused(kwargs, message):
    kwargs = {"base_url": "http://127.0.0.1:8001", **kwargs}
    with pytest.raises(ValidationError, match=message) as caught:
        TimbralClient(**kwargs)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ValidationError, match=message):
        SyncTimbralClient(**kwargs)


async def test_bad_call_arguments_are_refused_before_sending(scripted):
    script = Script([SIMILAR])
    async with TimbralClient(await scripted(script)) as client:
        with pytest.raises(ValidationError, match=r"`user_ids` must be a list of user ids, not one string"):
            await client.recommend_batch("u1")
        with pytest.raises(ValidationError, match=r"ids must be strings or integers; POST "):
            await client.recommend(object())
        with pytest.raises(ValidationError, match=r"`timeout` must be a number of seconds > 0; got -1"):
            await client.similar(7, timeout=-1)
    assert script.arrivals == []
