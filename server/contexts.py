"""One cleanup context per resource, in start order: executor, model, Redis, reloads, registry,
ingestion.

aiohttp runs them in this order at start-up and unwinds them in reverse at
shutdown, so background reloads are cancelled and awaited first and the executor
is shut down last.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from timbral._threads import available_cpus, pin_blas_to_one_thread

from .batching import RecommendBatcher
from .cache import CircuitBreaker, RedisCache, redis_tls_options
from .ingest import IngestQueue
from .keys import BATCHER, CACHE, CONFIG, EXECUTOR, FOLLOWER, INGEST, METRICS, MODEL, RELOADER, SCORING_THREADS
from .registry_follower import RegistryFollower
from .state import load_model

log = logging.getLogger("timbral.server")



async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
    """A bounded pool for scoring, and the micro-batcher's scorer threads: the kernels
    release the GIL, so threads use every core."""
    configured = app[CONFIG].executor_threads
    threads = configured or available_cpus()
    pin_blas_to_one_thread()  # parallelism comes from the pool; BLAS threads would oversubscribe
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="timbral-score")
    app[EXECUTOR] = executor
    app[SCORING_THREADS] = threads
    # The event loop is one thread that needs a core of its own: by default the scorers
    # get the others. On 2 cores, one scorer answered as many misses at 8 connections and
    # took a third off /ping's p99 under 64 connections of misses (benchmarks/README.md).
    scorers = configured or max(1, available_cpus() - 1)
    batcher = RecommendBatcher(scorers, max_batch=app[CONFIG].scorer_max_batch,
                               observe=app[METRICS].observe_batch)
    app[BATCHER] = batcher
    yield
    await batcher.close()  # answers what is still queued
    executor.shutdown(wait=True, cancel_futures=True)


async def model_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load ``TIMBRAL_MODEL_DIR`` before serving; a broken directory stops the start."""
    config = app[CONFIG]
    slot = app[MODEL]
    if config.model_dir is None and config.database_url is not None:
        log.info("no TIMBRAL_MODEL_DIR: serving the registry's production model once it is fetched")
    elif config.model_dir is None:
        log.warning("no model configured: health answers 503 until POST /api/v1/model/reload",
                    extra={"hint": "set TIMBRAL_MODEL_DIR"})
    else:
        slot.current = await asyncio.to_thread(load_model, config.model_dir, app[METRICS])
        log.info("model loaded", extra=slot.current.describe())
    yield
    slot.current = None


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """Tier 2 when ``REDIS_URL`` is set. Redis being down at start is not fatal."""
    config = app[CONFIG]
    if config.redis_url is None:
        yield
        return
    metrics = app[METRICS]
    redis = RedisCache(
        config.redis_url,
        db=config.redis_db,
        ttl_seconds=config.cache_ttl_seconds,
        timeout_seconds=config.redis_timeout_seconds,
        connect_timeout_seconds=config.redis_connect_timeout_seconds,
        max_connections=config.redis_max_connections,
        breaker=CircuitBreaker(config.breaker_failures, config.breaker_cooldown_seconds),
        metrics=metrics,
        tls=redis_tls_options(config),
    )
    health = await redis.health()
    if health.status != "ok":
        log.warning("Redis unavailable at start; serving from compute and tier 1",
                    extra=health.as_dict())
    app[CACHE].redis = redis
    yield
    app[CACHE].redis = None
    await redis.close()


async def reload_ctx(app: web.Application) -> AsyncIterator[None]:
    """Own the background reload tasks: cancel and await them before anything closes."""
    yield
    await app[RELOADER].close()


REGISTRY_START_WAIT_SECONDS = 120.0  # for the first production model before serving without it


async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
    """With ``DATABASE_URL``: migrate (when allowed), then follow the production model.

    Started after the reload context, so it stops first: no swap begins while the
    reloader is closing.
    """
    config = app[CONFIG]
    app[FOLLOWER] = None
    if config.database_url is None:
        yield
        return
    cache_dir = config.model_cache_dir or Path(tempfile.mkdtemp(prefix="timbral-models-"))
    cache_dir.mkdir(parents=True, exist_ok=True)
    follower = RegistryFollower(config.database_url, config, app[RELOADER], app[METRICS], cache_dir)
    if config.db_migrate:
        await follower.migrate()
    app[FOLLOWER] = follower
    await follower.start(REGISTRY_START_WAIT_SECONDS)
    yield
    await follower.close()
    if config.model_cache_dir is None:
        shutil.rmtree(cache_dir, ignore_errors=True)


async def ingest_ctx(app: web.Application) -> AsyncIterator[None]:
    """With ``TIMBRAL_INGEST_TOKEN``: the ingestion writer; at shutdown it flushes what is queued.

    aiohttp runs cleanup after in-flight requests were given their shutdown timeout, so
    requests waiting for their commit are answered first, then the rest is written.
    """
    config = app[CONFIG]
    app[INGEST] = None
    if config.ingest_token is None or config.database_url is None:
        yield
        return
    queue = IngestQueue(config.database_url, app[METRICS], capacity=config.ingest_queue_events,
                        batch_events=config.ingest_batch_events, flush_seconds=config.ingest_flush_seconds,
                        timeout_seconds=config.database_timeout_seconds)
    queue.start()
    app[INGEST] = queue
    yield
    await queue.close()


CLEANUP_CONTEXTS = (executor_ctx, model_ctx, redis_ctx, reload_ctx, registry_ctx, ingest_ctx)
