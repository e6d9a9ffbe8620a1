"""The Python client a music backend uses to call the Timbral service.

:class:`TimbralClient` is asynchronous (aiohttp): one connection pool per client,
a deadline on every call, and retries where a retry can help. Connection failures
and 502/503/504 answers (a replica restarting, a proxy without a healthy upstream)
are retried with exponential backoff and full jitter, waiting at least as long as
``Retry-After`` asks and never past the call's deadline. A 4xx answer is never
retried: asking again gets the same answer. Every call the client makes is a
read, so each is idempotent and safe to repeat, including the recommendation
queries sent as POST (a JSON body keeps integer and string ids apart).

Failures raise :class:`ServiceError` (carrying the service's
``{"error": {"code", "message"}}``), :class:`ServiceUnreachableError` or
:class:`ServiceTimeoutError`, all subclasses of :class:`ClientError`.
:class:`SyncTimbralClient` runs the same client on a private event loop for
scripts and notebooks.

Examples
--------
>>> async with TimbralClient("http://localhost:8001", timeout=2.0) as client:  # doctest: +SKIP
...     top = await client.recommend("u42", k=5)
...     top.strategy, top.items[0]
('nmf', (1203, 0.91))
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import threading
import time
import uuid
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from timbral.exceptions import TimbralError, ValidationError

__all__ = [
    "ClientError",
    "ExplainResult",
    "HealthResult",
    "RecommendationResult",
    "ServiceError",
    "ServiceTimeoutError",
    "ServiceUnreachableError",
    "SimilarResult",
    "SyncTimbralClient",
    "TimbralClient",
]

ExternalId = int | str
T = TypeVar("T")

RETRY_STATUSES = frozenset({502, 503, 504})
REQUEST_ID_HEADER = "X-Request-ID"


class ClientError(TimbralError):
    """A call to the Timbral service did not get the answer it asked for."""


class ServiceError(ClientError):
    """The service answered with an error status.

    Attributes
    ----------
    status : int
        The HTTP status (404 unknown id, 422 invalid request, 503 no model, ...).
    code : str
        The service's stable error code (``unknown_id``, ``invalid_request``, ...),
        or ``http_error`` when the answer came from something in between (a proxy)
        without the service's error shape.
    message : str
        The service's explanation: what was wrong and how to fix it.
    request_id : str
        Sent as ``X-Request-ID`` on every attempt; the service logs it.
    """

    def __init__(self, status: int, code: str, message: str, request_id: str) -> None:
        super().__init__(f"{status} {code}: {message} (request {request_id})")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


class ServiceUnreachableError(ClientError, ConnectionError):
    """No connection to the service could be made or kept, on any attempt."""


class ServiceTimeoutError(ClientError, TimeoutError):
    """The call's deadline passed before the service answered."""


@dataclass(frozen=True, slots=True)
class RecommendationResult:
    """Ranked items for one listener.

    ``strategy`` is ``nmf`` for a listener the model was trained on, ``fold_in`` for
    a new one whose recent ``items`` were folded in, ``popularity`` otherwise.
    ``items`` holds ``(item_id, score)`` pairs, best first.
    """

    user_id: ExternalId
    strategy: str
    items: list[tuple[ExternalId, float]]
    model_version: str
    cached: bool = False


@dataclass(frozen=True, slots=True)
class ExplainResult:
    """Why the model scores ``item_id`` for ``user_id`` as it does.

    ``factors`` are ``(latent factor, contribution)`` and ``items`` are
    ``(history item_id, contribution)``, largest first; ``bias`` is the explicit
    feedback model's ``μ + b_u + b_i`` (0 for implicit feedback).
    """

    user_id: ExternalId
    item_id: ExternalId
    score: float
    bias: float
    factors: list[tuple[int, float]]
    items: list[tuple[ExternalId, float]]
    model_version: str


@dataclass(frozen=True, slots=True)
class SimilarResult:
    """The items closest to ``item_id``: ``(item_id, cosine)`` pairs, best first."""

    item_id: ExternalId
    items: list[tuple[ExternalId, float]]
    model_version: str


@dataclass(frozen=True, slots=True)
class HealthResult:
    """The service's readiness: ``status`` is ``ok``, ``degraded`` or ``unavailable``.

    ``reason`` says why it is not ``ok``. ``components`` holds the ``model``, ``redis``
    and ``system`` reports as sent: their details (model version, Redis error text, host
    figures) only when asked with the admin token.
    """

    status: str
    components: dict[str, Any]
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _scored(entries: Iterable[Mapping[str, Any]], key: str = "item_id",
            value: str = "score") -> list[tuple[Any, float]]:
    return [(entry[key], float(entry[value])) for entry in entries]


def _recommendation(payload: Mapping[str, Any], model_version: str) -> RecommendationResult:
    return RecommendationResult(
        user_id=payload["user_id"], strategy=payload["strategy"],
        items=_scored(payload["recommendations"]), model_version=model_version,
        cached=bool(payload.get("cached", False)))


def _segment(value: ExternalId) -> str:
    """An id as one path segment: ``/``, ``?``, ``#`` and spaces are percent-encoded."""
    return quote(str(value), safe="")


def _retry_after(header: str | None) -> float:
    """Seconds asked for by ``Retry-After`` (delay-seconds or an HTTP date); 0 if absent or unreadable."""
    if not header:
        return 0.0
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValidationError(f"`{name}` must be a number of seconds > 0; got {value!r}")
    return float(value)


class TimbralClient:
    """Async client of the Timbral HTTP service.

    Parameters
    ----------
    base_url : str
        Where the service listens, e.g. ``http://timbral:8001`` (a path prefix behind
        a gateway is kept).
    timeout : float, default=5.0
        Deadline in seconds of one call, retries and waits included. Each method
        also takes ``timeout=`` for that call alone.
    retries : int, default=3
        How many times a call is repeated after a connection failure or a
        502/503/504 answer, within its deadline. 0 disables retries.
    backoff : float, default=0.05
        Seconds before the first retry; the cap doubles with every retry up to
        ``max_backoff``, and the wait is drawn uniformly below it (full jitter),
        so clients that failed together do not retry together.
    max_backoff : float, default=2.0
    max_connections : int, default=100
        Size of the connection pool (concurrent requests beyond it wait for a
        connection).

    Use it as ``async with TimbralClient(...) as client:``, or call
    :meth:`aclose` when done. The pool opens at the first call, on the running loop.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        max_connections: int = 100,
    ) -> None:
        url = URL(base_url) if isinstance(base_url, str) else None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ValidationError(f"`base_url` must be an http:// or https:// URL with a host, "
                                  f"like 'http://localhost:8001'; got {base_url!r}")
        if url.user is not None or url.password is not None:  # it would be echoed in messages
            raise ValidationError(f"`base_url` must not carry a user name or password (the service "
                                  f"has no login); got '{url.scheme}://***@{url.host_port_subcomponent}'")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValidationError(f"`retries` must be an integer >= 0 (0 = no retries); got {retries!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ValidationError(f"`max_connections` must be an integer >= 1; got {max_connections!r}")
        self.base_url = str(url).rstrip("/")
        self.timeout = _positive(timeout, "timeout")
        self.retries = retries
        self.backoff = _positive(backoff, "backoff")
        self.max_backoff = _positive(max_backoff, "max_backoff")
        self.max_connections = max_connections
        self._http: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"TimbralClient({self.base_url!r}, timeout={self.timeout:g}, retries={self.retries})"

    async def __aenter__(self) -> TimbralClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (a later call opens a new one)."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- the service's endpoints ---------------------------------------------------------

    async def recommend(
        self,
        user_id: ExternalId,
        k: int = 10,
        *,
        exclude_items: Iterable[ExternalId] | None = None,
        items: Iterable[ExternalId] | None = None,
        timeout: float | None = None,
    ) -> RecommendationResult:
        """The top ``k`` items for ``user_id``, the listener's own plays left out.

        ``exclude_items`` are never recommended. ``items`` are what a listener just
        played: for a listener the model has never seen they are folded into the
        model (strategy ``fold_in``) instead of answering with popular items.
        """
        body: dict[str, Any] = {"user_id": user_id, "k": k}
        if exclude_items is not None:
            body["exclude_items"] = list(exclude_items)
        if items is not None:
            body["items"] = list(items)
        payload = await self._request("POST", "/api/v1/recommendations", body=body, timeout=timeout)
        return _recommendation(payload, payload["model_version"])

    async def recommend_batch(self, user_ids: Sequence[ExternalId], k: int = 10, *,
                              timeout: float | None = None) -> list[RecommendationResult]:
        """:meth:`recommend` for many listeners in one request, in the order given."""
        if isinstance(user_ids, (str, bytes)):
            raise ValidationError(f"`user_ids` must be a list of user ids, not one string; got {user_ids!r}")
        payload = await self._request("POST", "/api/v1/recommendations",
                                      body={"user_ids": list(user_ids), "k": k}, timeout=timeout)
        return [_recommendation(result, payload["model_version"]) for result in payload["results"]]

    async def explain(self, user_id: ExternalId, item_id: ExternalId, *,
                      timeout: float | None = None) -> ExplainResult:
        """Why ``item_id`` scores as it does for ``user_id`` (404 ``unknown_id`` for ids the model lacks)."""
        payload = await self._request(
            "GET", f"/api/v1/explain/{_segment(user_id)}/{_segment(item_id)}", timeout=timeout)
        return ExplainResult(
            user_id=payload["user_id"], item_id=payload["item_id"], score=float(payload["score"]),
            bias=float(payload.get("bias") or 0.0),
            factors=_scored(payload["factors"], "factor", "contribution"),
            items=_scored(payload["items"], "item_id", "contribution"),
            model_version=payload["model_version"])

    async def similar(self, item_id: ExternalId, k: int = 10, *,
                      timeout: float | None = None) -> SimilarResult:
        """The ``k`` items closest to ``item_id`` (404 ``unknown_id`` for an item the model lacks)."""
        payload = await self._request("GET", f"/api/v1/similar/{_segment(item_id)}",
                                      params={"k": str(k)}, timeout=timeout)
        return SimilarResult(item_id=payload["item_id"], items=_scored(payload["similar"]),
                             model_version=payload["model_version"])

    async def health(self, *, admin_token: str | None = None, timeout: float | None = None) -> HealthResult:
        """The service's readiness; with ``admin_token`` (``TIMBRAL_ADMIN_TOKEN``), its details too.

        ``unavailable`` (HTTP 503: no model, or shutting down) is an answer, not retried.
        """
        headers = None if admin_token is None else {"Authorization": f"Bearer {admin_token}"}
        payload = await self._request("GET", "/api/v1/health", timeout=timeout, answers=(200, 503),
                                      headers=headers)
        return HealthResult(status=payload["status"], components=payload["components"],
                            reason=payload.get("reason"))

    # -- transport -----------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                timeout=aiohttp.ClientTimeout(total=None),  # the call's deadline governs
                headers={"Accept": "application/json"})
        return self._http

    async def _request(self, method: str, path: str, *, body: Any = None,
                       params: Mapping[str, str] | None = None, timeout: float | None,
                       answers: tuple[int, ...] = (200,), headers: Mapping[str, str] | None = None) -> Any:
        """Send one call, retrying what can be retried until its deadline; the decoded JSON answer."""
        seconds = self.timeout if timeout is None else _positive(timeout, "timeout")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        request_id = f"client-{uuid.uuid4().hex}"  # one id for every attempt: the service logs it
        headers = {**(headers or {}), REQUEST_ID_HEADER: request_id}
        data = None
        if body is not None:
            try:
                data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
            except orjson.JSONEncodeError as exc:
                raise ValidationError(f"ids must be strings or integers; {method} {path} could "
                                      f"not encode its body: {exc}") from None
            headers["Content-Type"] = "application/json"
        url = URL(self.base_url + path, encoded=True).with_query(params)
        attempt = 0
        while True:
            attempt += 1
            retry_after = 0.0
            try:
                async with asyncio.timeout_at(deadline):
                    async with self._session().request(method, url, data=data, headers=headers) as response:
                        raw = await response.read()
                status = response.status
            except TimeoutError:
                raise ServiceTimeoutError(
                    f"{method} {path}: no answer within the {seconds:g} s deadline ({attempt} "
                    f"attempt{'s' if attempt > 1 else ''}); raise `timeout` or check the service "
                    f"at {self.base_url} (request {request_id})") from None
            except aiohttp.ClientSSLError as exc:  # a retry cannot fix a certificate
                raise ServiceUnreachableError(f"{method} {path}: {type(exc).__name__}: {exc}") from None
            except aiohttp.ClientConnectionError as exc:
                failure: ClientError = ServiceUnreachableError(
                    f"{method} {path}: {type(exc).__name__}: {exc} ({attempt} attempt"
                    f"{'s' if attempt > 1 else ''}); is the service running at {self.base_url}?")
            else:
                payload = _decode(raw)
                if status in answers and isinstance(payload, dict) and "error" not in payload:
                    return payload
                failure = _service_error(status, payload, raw, request_id, self.base_url)
                if status not in RETRY_STATUSES:
                    raise failure
                retry_after = _retry_after(response.headers.get("Retry-After"))
            if attempt > self.retries:
                raise failure
            delay = max(retry_after, random.uniform(0.0, min(self.max_backoff, self.backoff * 2 ** (attempt - 1))))
            if loop.time() + delay >= deadline:
                raise failure  # waiting would outlast the deadline: the last answer is the best we have
            await asyncio.sleep(delay)


def _decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _service_error(status: int, payload: Any, raw: bytes, request_id: str, base_url: str) -> ServiceError:
    """The service's ``{"error": {"code", "message"}}``, or what a proxy or stranger sent instead."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return ServiceError(status, error["code"], str(error.get("message", "")), request_id)
    if status < 400:
        return ServiceError(status, "invalid_response", f"the answer is not the service's JSON; "
                            f"is {base_url} a Timbral service?", request_id)
    text = raw[:200].decode("utf-8", errors="replace").strip()
    return ServiceError(status, "http_error", text or "no message", request_id)


class SyncTimbralClient:
    """:class:`TimbralClient` for code that does not run an event loop, or cannot block
    the one it runs in (a notebook's cell). Same arguments, same results, same errors.

    Calls run on a private event loop in a daemon thread, so the one connection pool
    outlives the calls. Use it as ``with SyncTimbralClient(...) as client:`` or
    :meth:`close` it.
    """

    def __init__(self, base_url: str, **options: Any) -> None:
        self._client = TimbralClient(base_url, **options)  # arguments are checked before a thread starts
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="timbral-client", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"Sync{self._client!r}"

    def __enter__(self) -> SyncTimbralClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _run(self, call: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            call.close()
            raise ClientError("this SyncTimbralClient is closed; create a new one")
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def close(self) -> None:
        """Close the connection pool and stop the client's thread (idempotent)."""
        if self._loop.is_closed():
            return
        self._run(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def recommend(self, user_id: ExternalId, k: int = 10, *,
                  exclude_items: Iterable[ExternalId] | None = None,
                  items: Iterable[ExternalId] | None = None,
                  timeout: float | None = None) -> RecommendationResult:
        """See :meth:`TimbralClient.recommend`."""
        return self._run(self._client.recommend(user_id, k, exclude_items=exclude_items,
                                                items=items, timeout=timeout))

    def recommend_batch(self, user_ids: Sequence[ExternalId], k: int = 10, *,
                        timeout: float | None = None) -> list[RecommendationResult]:
        """See :meth:`TimbralClient.recommend_batch`."""
        return self._run(self._client.recommend_batch(user_ids, k, timeout=timeout))

    def explain(self, user_id: ExternalId, item_id: ExternalId, *,
                timeout: float | None = None) -> ExplainResult:
        """See :meth:`TimbralClient.explain`."""
        return self._run(self._client.explain(user_id, item_id, timeout=timeout))

    def similar(self, item_id: ExternalId, k: int = 10, *,
                timeout: float | None = None) -> SimilarResult:
        """See :meth:`TimbralClient.similar`."""
        return self._run(self._client.similar(item_id, k, timeout=timeout))

    def health(self, *, admin_token: str | None = None, timeout: float | None = None) -> HealthResult:
        """See :meth:`TimbralClient.health`."""
        return self._run(self._client.health(admin_token=admin_token, timeout=timeout))
