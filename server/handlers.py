"""Request handlers: validate, then score in the executor, then encode with orjson.

A handler reads the served model once (``slot.require()``) and uses that object to
the end, which is what makes a reload atomic for every request.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psutil
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from server.cache import cache_key
from server.errors import ApiError
from server.keys import (
    BATCHER, CACHE, CONFIG, EXECUTOR, FOLLOWER, INGEST, METRICS, MODEL, OPENAPI, RELOADER, SCORING_THREADS)
from server.ingest import RejectedEvents, check_token, parse_events
from server.schemas import (
    BatchRequest,
    RecommendRequest,
    check_path_id,
    parse_json,
    parse_recommendation_body,
    parse_reload_body,
    query_bool,
    query_k,
)
from server.state import LoadedModel
from timbral import __version__

T = TypeVar("T")
JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
PONG = b"pong"


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
         if route.method != "HEAD" and route.resource is not None})
    return json_response({
        "service": "timbral-ml",
        "version": __version__,
        "model_version": model.version if model else None,
        "endpoints": [{"method": method, "path": path} for method, path in endpoints],
    })


async def health(request: web.Request) -> web.Response:
    """Readiness: 503 only without a model; a Redis outage is ``degraded``, not down."""
    app = request.app
    model = app[MODEL].current
    cache = app[CACHE]
    if model is None:
        model_part: dict[str, Any] = {"status": "unavailable",
                                      "reason": "no model loaded; set TIMBRAL_MODEL_DIR or "
                                                "POST /api/v1/model/reload"}
    else:
        model_part = {"status": "ok", **model.describe()}
    redis_part = (await cache.redis.health()).as_dict() if cache.redis else {
        "status": "disabled", "reason": "REDIS_URL is not set; tier 1 (in-process) cache only"}
    follower = app[FOLLOWER]
    database_part = follower.health() if follower else {
        "status": "disabled", "reason": "DATABASE_URL is not set; the model comes from TIMBRAL_MODEL_DIR"}
    if model is None:
        status = "unavailable"
    elif "degraded" in (redis_part["status"], database_part["status"]):
        status = "degraded"
    else:
        status = "ok"
    return json_response(
        {"status": status, "components": {
            "model": model_part, "redis": redis_part, "database": database_part,
            "system": _system(app[CONFIG].model_dir)}},
        status=503 if model is None else 200)


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
    config = request.app[CONFIG]
    user_id = check_path_id(request.match_info["user_id"], "user_id", config.max_id_length)
    query = request.rel_url.query
    return await _recommend_one(request, RecommendRequest(
        user_id=user_id, k=query_k(query),
        exclude_seen=query_bool(query, "exclude_seen", True)))


async def recommend_post(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    body = parse_json(await request.read())
    parsed = parse_recommendation_body(body, max_batch=config.max_batch_users,
                                       max_id_length=config.max_id_length)
    if isinstance(parsed, BatchRequest):
        return await _recommend_batch(request, parsed)
    return await _recommend_one(request, parsed)


async def _recommend_one(request: web.Request, req: RecommendRequest) -> web.Response:
    model = request.app[MODEL].require()
    user_id = model.user_id(req.user_id)
    follower = request.app[FOLLOWER]  # plays since training, folded in (DATABASE_URL only)
    recent = follower.recent.get(str(user_id)) if follower is not None and req.cacheable else None
    key = None
    if req.cacheable:
        key = cache_key(model.version, "rec", user_id, req.k, req.exclude_seen,
                        *((recent.digest,) if recent else ()))
        cached = await request.app[CACHE].get(key)
        if cached is not None:
            return web.Response(body=cached, content_type="application/json")
    if recent is not None:
        recs = await score(request, "recommend", model.recommender.recommend_with_recent, user_id,
                           {model.item_id(item): plays for item, plays in recent.items.items()},
                           req.k, exclude_seen=req.exclude_seen)
    elif req.cacheable:  # the plain question: scored together with concurrent ones
        recs = await request.app[BATCHER].recommend(model, user_id, req.k, req.exclude_seen)
    else:
        recs = await score(
            request, "recommend", model.recommender.recommend, user_id, req.k,
            exclude_seen=req.exclude_seen,
            exclude_items=None if req.exclude_items is None else [model.item_id(i) for i in req.exclude_items],
            recent_items=None if req.recent_items is None else [model.item_id(i) for i in req.recent_items])
    payload = {**recs.to_dict(), "model_version": model.version, "cached": False}
    body = orjson.dumps(payload, option=JSON_OPTIONS)
    if key is not None:  # "cached" is the last key: the cached copy differs only there
        await request.app[CACHE].set(key, body[: -len(b"false}")] + b"true}")
    return web.Response(body=body, content_type="application/json")


async def _recommend_batch(request: web.Request, req: BatchRequest) -> web.Response:
    model = request.app[MODEL].require()
    user_ids = [model.user_id(u) for u in req.user_ids]
    # one part per scoring thread: the kernels run single-threaded in the pool
    n_parts = max(1, min(len(user_ids), request.app[SCORING_THREADS]))
    bounds = [len(user_ids) * part // n_parts for part in range(n_parts + 1)]
    parts = await asyncio.gather(*(
        score(request, "recommend_batch", model.recommender.recommend_batch,
              user_ids[start:stop], req.k)
        for start, stop in zip(bounds[:-1], bounds[1:])))
    results = [recs for part in parts for recs in part]
    return json_response({
        "model_version": model.version,
        "k": req.k,
        "results": [recs.to_dict() for recs in results],
    })


async def explain(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    model = request.app[MODEL].require()
    user_id = model.user_id(check_path_id(request.match_info["user_id"], "user_id",
                                          config.max_id_length))
    item_id = model.item_id(check_path_id(request.match_info["item_id"], "item_id",
                                          config.max_id_length))
    explanation = await score(request, "explain", model.recommender.explain, user_id, item_id)
    return json_response({"user_id": user_id, "item_id": item_id,
                          "model_version": model.version, **explanation})


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
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), config.admin_token.encode()):
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <TIMBRAL_ADMIN_TOKEN>",
                       headers={"WWW-Authenticate": 'Bearer realm="timbral"'})
    path = parse_reload_body(parse_json(await request.read()))
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
