"""``observe`` (built by :func:`observer`), wrapped around every route's handler: request
id, metrics, JSON access log, and every failure turned into ``{"error": {"code", "message"}}``.

A wrapper per route, not an aiohttp middleware: the middleware layer adds a second,
internal middleware, two partials and a cache lookup per request, and the route's name
has to be looked up on the request, where a wrapper is given it once. Measured end to
end, /ping's CPU per request fell ~9 % (benchmarks/README.md). The router's own 404 and
405 go through a catch-all route (:func:`unmatched`), so they are observed too.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import istr

from timbral.exceptions import ArtifactError, UnknownIdError, ValidationError

from .access_log import AccessLog
from .errors import ApiError, error_response
from .keys import REQUEST_ID
from .metrics import Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Observe = Callable[[Handler, str], Handler]

error_log = logging.getLogger("timbral.server.error")

# An ``istr``, so neither the request's lookup nor the response's header folds its case
# per request (~70 and ~90 ns saved of /ping's path, timeit).
REQUEST_ID_HEADER = istr("X-Request-ID")
_ids = itertools.count(1)
_prefix = f"{os.getpid():x}-"

# Stable codes for the statuses aiohttp itself raises.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    431: "headers_too_large",
}


UNMATCHED = "unmatched"  # the route name of every request no endpoint answers


def observer(metrics: Metrics, access_log: AccessLog | None) -> Observe:
    """``observe(handler, route)``: ``handler`` wrapped for the route named ``route``, bound to
    the application's metrics and access log.

    Request id, metrics and access log around the handler; every failure becomes
    ``{"error": {"code", "message"}}``. Bound rather than looked up on ``request.app``
    per request, and the method and status read once: under load every µs of Python on
    /ping's path costs it several, as the system calls around it evict the interpreter
    from the caches.
    """
    series = metrics.requests

    def observe(handler: Handler, route: str) -> Handler:
        async def observed(request: web.Request) -> web.StreamResponse:
            start = time.perf_counter()
            incoming = request.headers.get(REQUEST_ID_HEADER)
            request_id = incoming if incoming and len(incoming) <= 128 else f"{_prefix}{next(_ids):x}"
            request[REQUEST_ID] = request_id
            series.in_flight += 1
            try:
                response = await handler(request)
            except Exception as exc:
                response = _error_response(request, route, exc)
            finally:
                series.in_flight -= 1
            elapsed = time.perf_counter() - start
            method, status = request.method, response.status
            response.headers[REQUEST_ID_HEADER] = request_id
            series.observe(route, method, status, elapsed)
            if access_log is not None:
                access_log.write(request_id, method, request.path, route, status, elapsed)
            return response

        observed.observed_route = route  # type: ignore[attr-defined]  # what is_observed checks
        return observed

    return observe


def is_observed(handler: Handler) -> bool:
    """Whether ``handler`` came from an ``observe`` (a route without it would answer unseen)."""
    return hasattr(handler, "observed_route")


async def unmatched(request: web.Request) -> web.StreamResponse:
    """The catch-all route's handler: the 404, or the 405 with the methods the path allows,
    that the router would have answered itself (ours goes through ``observe``)."""
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource.name != UNMATCHED:
            _match, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def _error_response(request: web.Request, route: str, exc: Exception) -> web.Response:
    """The JSON answer for a failure; redirects (HTTPException < 400) are re-raised."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    if isinstance(exc, UnknownIdError):
        return error_response(404, "unknown_id", str(exc))
    if isinstance(exc, ValidationError):
        return error_response(422, "invalid_request", str(exc))
    if isinstance(exc, ArtifactError):
        return error_response(422, "invalid_model", str(exc))
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        message = _http_message(request, exc)
        return error_response(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message, headers)
    error_log.error("unhandled error", exc_info=exc, extra={
        "request_id": request.get(REQUEST_ID), "method": request.method,
        "path": request.path, "route": route})
    return error_response(500, "internal_error",
                          "the server failed to answer; the error is in its log")


def _http_message(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        return f"no endpoint at {request.path}; GET / lists the endpoints"
    if exc.status == 405:
        return (f"{request.method} is not allowed on {request.path}; "
                f"allowed: {exc.headers.get('Allow', 'none')}")
    return exc.text or exc.reason
