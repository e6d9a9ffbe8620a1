"""``create_app(config)``: the only way to build the service (used by ``python -m
server``, ``timbral serve`` and the tests)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .access_log import AccessLog
from .cache import LRUCache, TieredCache
from .config import Config
from .contexts import CLEANUP_CONTEXTS
from .keys import CACHE, CONFIG, LIFECYCLE, METRICS, MODEL, OBSERVE, OPENAPI, RELOADER
from .metrics import Metrics
from .observe import UNMATCHED, is_observed, observer, unmatched
from .routes import ROUTES
from .state import Lifecycle, ModelSlot, Reloader

OPENAPI_PATH = Path(__file__).with_name("openapi.json")
_SHOWN_REASON = 120  # characters of the parser's reason kept in the log line


class ClientErrorFilter(logging.Filter):
    """Log a request aiohttp's HTTP parser refused as one WARNING line, without traceback.

    A NUL in a header, a garbled request line or an oversized header is the client's
    error: aiohttp answers it 400 itself (no handler runs) but logs it on
    ``aiohttp.server`` at ERROR with a traceback, which pages an operator for someone
    else's garbage. Every other record of that logger (real server errors) is left as is.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, HttpProcessingError) or not 400 <= error.code < 500:
            return True  # a server error: ERROR, with its traceback
        if record.levelno <= logging.WARNING:
            return True  # already quiet (aiohttp logs non-HTTP bytes at DEBUG)
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        record.msg, record.args = "refused a malformed HTTP request (answered %d)", (error.code,)
        record.exc_info = record.exc_text = None
        record.error = type(error).__name__
        # The first line only: the parser's next lines quote the raw bytes, which may hold a credential.
        record.reason = (error.message or "").strip().split("\n", 1)[0][:_SHOWN_REASON]
        return logging.getLogger(record.name).isEnabledFor(logging.WARNING)


def quiet_client_errors() -> None:
    """Install :class:`ClientErrorFilter` on ``aiohttp.server`` (once per process)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientErrorFilter) for f in logger.filters):
        logger.addFilter(ClientErrorFilter())


def create_app(config: Config) -> web.Application:
    """Build the application for ``config``; resources open when it starts.

    The model (``config.model_dir``), the scoring executor, Redis and background
    reloads each have a cleanup context, so they are set up in order before the first
    request and released in reverse at shutdown.
    """
    quiet_client_errors()
    metrics = Metrics()
    access_log = AccessLog(log_format=config.log_format) if config.log_level in ("DEBUG", "INFO") else None
    app = web.Application(client_max_size=config.max_body_bytes)
    app[OBSERVE] = observer(metrics, access_log)
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
    add_routes(app, ROUTES)
    # Last, and keyed on "/": the router tries it only after every other route failed.
    app.router.add_route("*", "/{tail:.*}", app[OBSERVE](unmatched, UNMATCHED), name=UNMATCHED)
    app.on_startup.insert(0, _refuse_unobserved_routes)  # before any resource opens
    app.cleanup_ctx.extend(CLEANUP_CONTEXTS)
    if access_log is not None:
        app.cleanup_ctx.append(access_log.flushing)
    return app


def add_routes(app: web.Application, routes: Iterable[web.RouteDef]) -> None:
    """Register ``routes`` on an app from :func:`create_app`, each handler observed (request
    id, metrics, access log, JSON errors) under its route's template as its name.

    The only way to add a route: one added with ``app.router`` directly is refused when
    the app starts.
    """
    observe = app[OBSERVE]
    for route in routes:
        # aiohttp reuses the resource just added for the same path and name when registering
        resource = app.router.add_resource(route.path, name=route.kwargs.get("name"))
        web.RouteDef(route.method, route.path, observe(route.handler, resource.canonical),
                     route.kwargs).register(app.router)


async def _refuse_unobserved_routes(app: web.Application) -> None:
    """A route added with ``app.router`` would answer with no request id, metrics or log line."""
    for route in app.router.routes():
        if not is_observed(route.handler):
            raise RuntimeError(
                f"route {route.method} {route.resource.canonical if route.resource else '?'} was added "
                f"with app.router directly, so it would answer unobserved (no request id, metrics or "
                f"access log); add it with timbral.server.app.add_routes(app, [web.get(...)])")
