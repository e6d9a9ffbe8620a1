"""``create_app(config)``: the only way to build the service (used by ``python -m
server``, ``timbral serve`` and the tests)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .access_log import AccessLog
from .cache import LRUCache, TieredCache
from .config import Config
from .contexts import CLEANUP_CONTEXTS
from .keys import ACCESS_LOG, CACHE, CONFIG, LIFECYCLE, METRICS, MODEL, OPENAPI, RELOADER
from .metrics import Metrics
from .middlewares import observe
from .routes import ROUTES
from .state import Lifecycle, ModelSlot, Reloader

OPENAPI_PATH = Path(__file__).with_name("openapi.json")


def create_app(config: Config) -> web.Application:
    """Build the application for ``config``; resources open when it starts.

    The model (``config.model_dir``), the scoring executor, Redis and background
    reloads each have a cleanup context, so they are set up in order before the first
    request and released in reverse at shutdown.
    """
    app = web.Application(middlewares=[observe], client_max_size=config.max_body_bytes)
    metrics = Metrics()
    slot = ModelSlot()
    cache = TieredCache(LRUCache(config.tier1_max_bytes, config.cache_ttl_seconds), metrics)
    metrics.cache_bytes.set_function(lambda: cache.tier1.nbytes)
    metrics.cache_entries.set_function(lambda: len(cache.tier1))
    reloader = Reloader(slot, metrics)
    reloader.on_swap.append(lambda _model: cache.tier1.clear())  # old-version keys are dead weight
    app[CONFIG] = config
    app[METRICS] = metrics
    app[MODEL] = slot
    app[LIFECYCLE] = Lifecycle()
    app[CACHE] = cache
    app[RELOADER] = reloader
    app[OPENAPI] = OPENAPI_PATH.read_bytes()
    access_log = AccessLog(log_format=config.log_format) if config.log_level in ("DEBUG", "INFO") else None
    app[ACCESS_LOG] = access_log
    app.router.add_routes(ROUTES)
    app.cleanup_ctx.extend(CLEANUP_CONTEXTS)
    if access_log is not None:
        app.cleanup_ctx.append(access_log.flushing)
    return app
