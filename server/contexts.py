"""One cleanup context per resource, in start order: executor, model, Redis, reloads.

aiohttp runs them in this order at start-up and unwinds them in reverse at
shutdown, so background reloads are cancelled and awaited first and the executor
is shut down last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from timbral._threads import available_cpus, pin_blas_to_one_thread

from .batching import RecommendBatcher
from .cache import CircuitBreaker, RedisCache, redis_tls_options
from .keys import BATCHER, CACHE, CONFIG, EXECUTOR, METRICS, MODEL, RELOADER, SCORING_THREADS
from .state import load_model

log = logging.getLogger("timbral.server")



async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
    """A bounded pool for scoring: the kernels release the GIL, so threads use every core."""
    threads = app[CONFIG].executor_threads or available_cpus()
    pin_blas_to_one_thread()  # parallelism comes from the pool; BLAS threads would oversubscribe
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="timbral-score")
    app[EXECUTOR] = executor
    app[SCORING_THREADS] = threads
    app[BATCHER] = RecommendBatcher(
        executor, max_in_flight=threads, observe=app[METRICS].observe_batch
    )
    yield
    executor.shutdown(wait=True, cancel_futures=True)


async def model_ctx(app: web.Application) -> AsyncIterator[None]:
    """Load ``TIMBRAL_MODEL_DIR`` before serving; a broken directory stops the start."""
    config = app[CONFIG]
    slot = app[MODEL]
    if config.model_dir is None:
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


CLEANUP_CONTEXTS = (executor_ctx, model_ctx, redis_ctx, reload_ctx)
