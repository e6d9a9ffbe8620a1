"""Request handlers: validate, then score in the executor, then encode with orjson.

A handler reads the served model once (``slot.require()``) and uses that object to
the end, which is what makes a reload atomic for every request.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psutil
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from timbral import __version__
from timbral.recommender import Recommender

from .cache import cache_key, recommendation_bodies, recommendation_key
from .encoding import encode_rows
from .errors import ApiError
from .ingest import RejectedEvents, check_token, parse_events
from .keys import (
    BATCHER,
    CACHE,
    CONFIG,
    EXECUTOR,
    FOLLOWER,
    INGEST,
    LIFECYCLE,
    METRICS,
    MODEL,
    OPENAPI,
    RELOADER,
    REQUEST_ID,
    SCORING_THREADS,
)
from .observe import REQUEST_ID_HEADER
from .recent import RecentPlays
from .schemas import (
    BatchRequest,
    ExternalId,
    bearer_credentials,
    check_path_id,
    parse_json,
    parse_recommendation_body,
    parse_reload_body,
    query_bool,
    query_k,
    token_matches,
)
from .state import LoadedModel

T = TypeVar("T")
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
PONG = b"pong"
SEND_SLICE_BYTES = 256 * 1024


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload, option=JSON_OPTIONS), status=status,
                        content_type="application/json")


async def score(request: web.Request, operation: str, fn: Callable[..., T], *args: Any,
                **kwargs: Any) -> T:
    """Run a model call on the scoring pool; the event loop keeps answering meanwhile."""
    start = time.perf_counter()
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(request.app[EXECUTOR], functools.partial(fn, *args, **kwargs))
    request.app[METRICS].scoring_seconds.labels(operation).observe(time.perf_counter() - start)
    return result


def _items(pairs: Iterable[tuple[Any, float]]) -> list[dict[str, Any]]:
    return [{"item_id": item, "score": float(score_)} for item, score_ in pairs]


async def ping(request: web.Request) -> web.Response:
    """Liveness: never touches the model or Redis."""
    return web.Response(body=PONG, content_type="text/plain")


async def index(request: web.Request) -> web.Response:
    model = request.app[MODEL].current
    endpoints = sorted(
        {(route.method, route.resource.canonical) for route in request.app.router.routes()
         if route.method not in ("HEAD", "*") and route.resource is not None})  # "*": the catch-all
    return json_response({
        "service": "timbral-ml",
        "version": __version__,
        "model_version": model.version if model else None,
        "endpoints": [{"method": method, "path": path} for method, path in endpoints],
    })


async def health(request: web.Request) -> web.Response:
    """Readiness: 503 without a model or while shutting down; a Redis outage is ``degraded``.

    Anyone gets the status and general reasons; the details (model path, Redis error
    text, host figures) only go to a caller with the admin token, as they help an attacker.
    """
    app = request.app
    model = app[MODEL].current
    redis = await app[CACHE].redis.health() if app[CACHE].redis is not None else None
    follower = app[FOLLOWER]
    database = follower.health() if follower is not None else {
        "status": "disabled", "reason": "DATABASE_URL is not set; the model comes from TIMBRAL_MODEL_DIR"}
    if app[LIFECYCLE].draining:
        status, reason = "unavailable", "shutting down"
    elif model is None:
        status, reason = "unavailable", "no model is loaded"
    elif redis is not None and redis.status == "degraded":
        status, reason = "degraded", "the shared cache is not answering; answers are computed"
    elif database["status"] == "degraded":
        status, reason = "degraded", "the model registry cannot be followed; the loaded model keeps serving"
    else:
        status, reason = "ok", None
    model_part: dict[str, Any] = {"status": "ok"} if model else {
        "status": "unavailable", "reason": "no model is loaded"}
    redis_part: dict[str, Any] = {"status": "disabled"} if redis is None else {"status": redis.status}
    if redis is not None and redis.status == "degraded":
        redis_part["reason"] = "not answering"
    system: dict[str, Any] = {"status": "ok"}
    database_part: dict[str, Any] = {"status": database["status"]}
    if is_admin(request):
        database_part = database
        if model is not None:
            model_part.update(model.describe())
        elif app[CONFIG].model_dir is None:
            model_part["reason"] = "no model loaded; set TIMBRAL_MODEL_DIR or POST /api/v1/model/reload"
        redis_part = redis.as_dict() if redis is not None else {
            "status": "disabled", "reason": "REDIS_URL is not set; tier 1 (in-process) cache only"}
        system = _system(app[CONFIG].model_dir)
    payload: dict[str, Any] = {"status": status}
    if reason is not None:
        payload["reason"] = reason
    payload["components"] = {"model": model_part, "redis": redis_part, "database": database_part,
                             "system": system}
    return json_response(payload, status=503 if status == "unavailable" else 200)


def is_admin(request: web.Request) -> bool:
    """Whether the request carries ``Authorization: Bearer <TIMBRAL_ADMIN_TOKEN>``."""
    token = request.app[CONFIG].admin_token
    if token is None:
        return False
    given = bearer_credentials(request.headers.get("Authorization", ""))
    return bool(given) and token_matches(given, token)


def _system(model_dir: Path | None) -> dict[str, Any]:
    memory = psutil.virtual_memory()
    disk = shutil.disk_usage(model_dir if model_dir and model_dir.exists() else "/")
    return {
        "status": "ok",
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        "memory_percent": memory.percent,
        "process_rss_mb": round(psutil.Process().memory_info().rss / 2**20, 1),
        "disk_free_gb": round(disk.free / 2**30, 2),
        "disk_percent": round(100 * disk.used / disk.total, 1),
    }


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].exposition(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def recommend_get(request: web.Request) -> web.Response:
    """The common question, on the shortest path: no ``RecommendRequest``, no awaited
    cache without Redis, the answer's bytes built by the scorer thread."""
    app = request.app
    user_id = check_path_id(request.match_info["user_id"], "user_id", app[CONFIG].max_id_length)
    query = request.rel_url.query
    k, exclude_seen = query_k(query), query_bool(query, "exclude_seen", True)
    return await _recommend_plain(request, app[MODEL].require(), user_id, k, exclude_seen)


async def recommend_post(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    body = parse_json(await request.read())
    parsed = parse_recommendation_body(body, max_batch=config.max_batch_users,
                                       max_batch_items=config.max_batch_items,
                                       max_id_length=config.max_id_length)
    if isinstance(parsed, BatchRequest):
        return await _recommend_batch(request, parsed)
    model = request.app[MODEL].require()
    if parsed.cacheable:
        return await _recommend_plain(request, model, parsed.user_id, parsed.k, parsed.exclude_seen)
    # ad-hoc filters are one-offs: scored, never cached
    recs = await score(
        request, "recommend", model.recommender.recommend, model.user_id(parsed.user_id), parsed.k,
        exclude_seen=parsed.exclude_seen,
        exclude_items=None if parsed.exclude_items is None else [model.item_id(i) for i in parsed.exclude_items],
        recent_items=None if parsed.recent_items is None else [model.item_id(i) for i in parsed.recent_items])
    return json_response({**recs.to_dict(), "model_version": model.version, "cached": False})


async def _recommend_plain(request: web.Request, model: LoadedModel, client_user_id: ExternalId,
                           k: int, exclude_seen: bool) -> web.Response:
    """A cacheable answer: from a cache tier, else from the micro-batcher, then cached."""
    app = request.app
    user_id = model.user_id(client_user_id)
    follower = app[FOLLOWER]  # plays since training, folded in (DATABASE_URL only)
    recent = follower.recent.get(str(user_id)) if follower is not None else None
    if recent is not None:
        return await _recommend_recent(request, model, user_id, k, exclude_seen, recent)
    cache = app[CACHE]
    key = recommendation_key(model.version, user_id, k, exclude_seen)
    cached = cache.get_local(key)
    if cached is None and cache.redis is not None:
        cached = await cache.get_shared(key)
    if cached is not None:
        return web.Response(body=cached, content_type="application/json")
    # scored together with concurrent questions; the scorer thread also looked the user
    # up (one lookup per batch) and built both bodies
    answer = await app[BATCHER].recommend(model, user_id, k, exclude_seen)
    if answer.cached_body is None:  # only known users' answers are cached per id
        return await _popular(request, model, user_id, k)
    cache.set_local(key, answer.cached_body)
    if cache.redis is not None:
        await cache.set_shared(key, answer.cached_body)
    return web.Response(body=answer.body, content_type="application/json")


async def _recommend_recent(request: web.Request, model: LoadedModel, user_id: ExternalId, k: int,
                            exclude_seen: bool, recent: RecentPlays) -> web.Response:
    """A known user's answer with their plays since training folded in, cached under a
    digest of those plays: older answers of this user are never reused."""
    cache = request.app[CACHE]
    key = recommendation_key(model.version, user_id, k, exclude_seen, recent.digest)
    cached = await cache.get(key)
    if cached is not None:
        return web.Response(body=cached, content_type="application/json")
    if not model.recommender.known_user(user_id):
        return await _popular(request, model, user_id, k)
    recs = await score(request, "recommend", model.recommender.recommend_with_recent, user_id,
                       {model.item_id(item): plays for item, plays in recent.items.items()},
                       k, exclude_seen=exclude_seen)
    body, cached_body = recommendation_bodies(model.version, recs.user_id, recs.strategy,
                                              orjson.dumps(_items(recs.items)))
    await cache.set(key, cached_body)
    return web.Response(body=body, content_type="application/json")


async def _popular(request: web.Request, model: LoadedModel, user_id: ExternalId,
                   k: int) -> web.Response:
    """An unknown user's answer, from one cache entry per k shared by every unknown id.

    Caching per id would let anyone fill both tiers with answers for made-up users.
    """
    cache = request.app[CACHE]
    key = cache_key(model.version, "popular", k)
    ranked = await cache.get(key)
    cached = ranked is not None
    if ranked is None:
        ranked = orjson.dumps(_items(model.recommender.popular(k)), option=JSON_OPTIONS)
        await cache.set(key, ranked)
    return json_response({"user_id": user_id, "strategy": "popularity",
                          "recommendations": orjson.Fragment(ranked),
                          "model_version": model.version, "cached": cached})


async def _recommend_batch(request: web.Request, req: BatchRequest) -> web.StreamResponse:
    model = request.app[MODEL].require()
    user_ids = [model.user_id(u) for u in req.user_ids]
    # one part per scoring thread: the kernels run single-threaded in the pool
    n_parts = max(1, min(len(user_ids), request.app[SCORING_THREADS]))
    bounds = [len(user_ids) * part // n_parts for part in range(n_parts + 1)]
    parts = await asyncio.gather(*(
        score(request, "recommend_batch", _recommend_encoded, model.recommender,
              user_ids[start:stop], req.k)
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)))
    head = orjson.dumps({"model_version": model.version, "k": req.k}, option=JSON_OPTIONS)
    pieces = [head[:-1], b',"results":[']
    for i, part in enumerate(parts):
        pieces += (b",", part) if i else (part,)
    pieces.append(b"]}")
    return await send_json(request, b"".join(pieces))  # one copy of a body of up to ~5 MB


async def send_json(request: web.Request, body: bytes) -> web.StreamResponse:
    """Answer with ``body`` (JSON), sent in slices of ``SEND_SLICE_BYTES`` when larger.

    A multi-megabyte body written at once keeps the event loop in one long socket
    write; in slices, other requests (``/ping``) are answered between them.
    """
    if len(body) <= SEND_SLICE_BYTES:
        return web.Response(body=body, content_type="application/json")
    response = web.StreamResponse()
    response.content_type = "application/json"
    response.content_length = len(body)
    # the headers leave with prepare(), before observe could add this one
    response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
    await response.prepare(request)
    view = memoryview(body)
    try:
        for start in range(0, len(body), SEND_SLICE_BYTES):
            await response.write(view[start:start + SEND_SLICE_BYTES])
        await response.write_eof()
    except ConnectionResetError:  # the client left mid-answer: nothing to tell it, nothing failed here
        pass
    return response


def _recommend_encoded(recommender: Recommender, user_ids: list[ExternalId], k: int) -> bytes:
    """``recommend_batch``'s answers as comma-separated JSON objects (in a scoring thread).

    Items are encoded from arrays (:mod:`.encoding`) a few thousand per C call, and each
    user's object by its own orjson call: between calls the event loop gets the GIL
    back, so /ping stays fast meanwhile.
    """
    batch = recommender.rank_batch(user_ids, k)
    rows = encode_rows(batch)
    return b",".join(
        orjson.dumps({"user_id": user, "strategy": strategy, "recommendations": orjson.Fragment(row)},
                     option=JSON_OPTIONS)
        for user, strategy, row in zip(batch.user_ids, batch.strategies, rows, strict=True))


async def explain(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    model = request.app[MODEL].require()
    user_id = model.user_id(check_path_id(request.match_info["user_id"], "user_id",
                                          config.max_id_length))
    item_id = model.item_id(check_path_id(request.match_info["item_id"], "item_id",
                                          config.max_id_length))
    explanation = await score(request, "explain", model.recommender.explain, user_id, item_id)
    return json_response({"user_id": user_id, "item_id": item_id,
                          "model_version": model.version, **explanation.to_dict()})


async def similar(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    model = request.app[MODEL].require()
    item_id = model.item_id(check_path_id(request.match_info["item_id"], "item_id",
                                          config.max_id_length))
    k = query_k(request.rel_url.query)
    pairs = await score(request, "similar", model.recommender.similar, item_id, k)
    return json_response({"item_id": item_id, "model_version": model.version,
                          "similar": _items(pairs)})


async def reload_model(request: web.Request) -> web.Response:
    """Admin: load a directory in the background, verify it, swap it in atomically."""
    config = request.app[CONFIG]
    if config.admin_token is None:
        raise ApiError(403, "reload_disabled",
                       "model reload is disabled; set TIMBRAL_ADMIN_TOKEN to enable it")
    if not is_admin(request):
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <TIMBRAL_ADMIN_TOKEN>",
                       headers={"WWW-Authenticate": 'Bearer realm="timbral"'})
    path = parse_reload_body(await request.read())
    if path is None:
        if config.model_dir is None:
            raise ApiError(422, "invalid_request",
                           'no path given and TIMBRAL_MODEL_DIR is not set; send {"path": "..."}')
        target = config.model_dir
    else:
        target = Path(path)
    previous = request.app[MODEL].current
    loaded: LoadedModel = await request.app[RELOADER].reload(target)
    return json_response({"status": "reloaded", "previous_version": previous.version if previous else None,
                          **loaded.describe()})


async def ingest_interactions(request: web.Request) -> web.Response:
    """Write a batch of play events; 200 only once they are committed (see server.ingest)."""
    config = request.app[CONFIG]
    check_token(request.headers.get("Authorization", ""), config.ingest_token)
    queue = request.app[INGEST]
    if queue is None:
        raise ApiError(403, "ingest_disabled", "interaction ingestion is disabled; set DATABASE_URL")
    try:
        events = parse_events(parse_json(await request.read()), max_events=config.ingest_max_events,
                              max_id_length=config.max_id_length)
    except RejectedEvents as exc:
        queue.reject(len(exc.rejected))
        return json_response({"error": {"code": exc.code, "message": exc.message, "rejected": exc.rejected}},
                             status=exc.status)
    accepted, duplicates = await queue.submit(events)
    return json_response({"received": len(events), "accepted": accepted, "duplicates": duplicates})
