"""Score concurrent single-user requests together (micro-batching), off the event loop.

Scoring one user reads every item factor: 25 MB for 100K items × 64 factors, so
separate requests are bound by memory bandwidth, not arithmetic. Scorer threads
block on one queue; each takes everything queued (up to ``max_batch`` requests),
scores each (model, ``exclude_seen``) group with one ``rank_batch`` (one sgemm that
reads the item factors once for the whole group), and builds the final response
bodies, so the event loop does no JSON work for a miss. The whole batch is handed
back with one ``call_soon_threadsafe``: one wake-up of the loop per batch, not one
task, executor round trip and ``set_result`` per request. Under light load nothing
waits: an idle scorer takes a request as soon as it is queued.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .cache import recommendation_bodies
from .encoding import encode_rows
from .errors import ApiError
from .schemas import ExternalId
from .state import LoadedModel


@dataclass(frozen=True, slots=True)
class Answer:
    """One user's answer. ``body`` is the response (``"cached": false``) and
    ``cached_body`` what the cache keeps (``true``); both ``None`` for a user the model
    does not know (``strategy == "popularity"``), whose answer is the shared popular one."""

    user_id: ExternalId
    strategy: str
    body: bytes | None
    cached_body: bytes | None


@dataclass(frozen=True, slots=True)
class _Ask:
    model: LoadedModel
    user_id: ExternalId
    k: int
    exclude_seen: bool
    future: asyncio.Future[Answer]


_STOP = None  # queued once per thread by close(), after the work already queued


class RecommendBatcher:
    """Scorer threads answering single-user recommendations in batches.

    Built on the event loop that will await its answers (``create_app``'s executor
    context); ``asyncio.get_running_loop`` costs a system call (``getpid``) per call
    on Python 3.11, so the loop is looked up once here, not per request.

    Parameters
    ----------
    threads : int
        Scorer threads (batches scored at once); the kernels release the GIL.
    max_batch : int
        Requests one thread takes at once.
    max_queued : int
        Requests waiting or being scored at most; beyond it requests are refused with
        503 at once instead of queueing without bound behind a saturated scorer.
    observe : callable(batch_size, seconds), optional
        Told about every scoring call, from the scorer thread (for metrics).
    """

    def __init__(
        self,
        threads: int,
        *,
        max_batch: int = 64,
        max_queued: int = 4096,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self._max_batch = max(1, max_batch)
        self._max_queued = max(1, max_queued)
        self._observe = observe
        self._loop = asyncio.get_running_loop()
        self._queue: queue.SimpleQueue[_Ask | None] = queue.SimpleQueue()
        self._pending = 0  # asks queued or being scored; read and written on the loop only
        self._closed = False
        self._threads = [threading.Thread(target=self._run, name=f"timbral-batch-{i}", daemon=True)
                         for i in range(max(1, threads))]
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> int:
        """Requests queued or being scored now."""
        return self._pending

    async def recommend(
        self, model: LoadedModel, user_id: ExternalId, k: int, exclude_seen: bool
    ) -> Answer:
        """``model.recommender.recommend(user_id, k, exclude_seen=...)`` as a finished answer."""
        if self._closed:
            raise ApiError(503, "shutting_down", "the service is shutting down; retry on another replica")
        if self._pending >= self._max_queued:
            raise ApiError(503, "overloaded",
                           f"{self._pending} recommendations are already waiting to be scored; "
                           "retry shortly", headers={"Retry-After": "1"})
        future: asyncio.Future[Answer] = self._loop.create_future()
        self._pending += 1
        self._queue.put(_Ask(model, user_id, k, exclude_seen, future))
        return await future

    async def close(self) -> None:
        """Answer everything queued, then stop the threads (shutdown)."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
        await asyncio.to_thread(lambda: [thread.join() for thread in self._threads])

    def _run(self) -> None:
        """A scorer thread: wait for a request, take what else is queued, answer them all."""
        take, take_now = self._queue.get, self._queue.get_nowait
        while True:
            first = take()
            if first is _STOP:
                return
            asks, stop = [first], False
            while len(asks) < self._max_batch:
                try:
                    ask = take_now()
                except queue.Empty:
                    break
                if ask is _STOP:
                    stop = True
                    break
                asks.append(ask)
            self._answer_all(asks)
            if stop:
                return

    def _answer_all(self, asks: list[_Ask]) -> None:
        """Score ``asks`` in one call per (model, exclude_seen) and hand them back at once.

        A reload may swap the model between two requests of one batch: each is scored
        with the model its handler read. A group whose scoring raises hands the
        exception to each of its requests; the others are unaffected.
        """
        groups: dict[tuple[int, bool], list[_Ask]] = {}
        for ask in asks:
            groups.setdefault((id(ask.model), ask.exclude_seen), []).append(ask)
        outcomes: list[tuple[asyncio.Future[Answer], Answer | Exception]] = []
        for group in groups.values():
            start = time.perf_counter()
            try:
                answers: list[Answer] | list[Exception] = _answer(group)
            except Exception as exc:  # handed to each caller, which re-raises it
                answers = [exc] * len(group)
            if self._observe is not None:
                self._observe(len(group), time.perf_counter() - start)
            outcomes += zip((ask.future for ask in group), answers, strict=True)
        try:
            self._loop.call_soon_threadsafe(self._resolve, outcomes)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _resolve(self, outcomes: list[tuple[asyncio.Future[Answer], Answer | Exception]]) -> None:
        """On the loop: give every caller of a batch its answer (or its batch's error)."""
        self._pending -= len(outcomes)
        for future, outcome in outcomes:
            if future.done():  # its caller went away
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)


def _answer(asks: list[_Ask]) -> list[Answer]:
    """Score ``asks`` (one model, one ``exclude_seen``) as one batch, bodies built in this thread.

    The batch is scored at the largest ``k``; a shorter list is a prefix of a longer one.
    """
    model = asks[0].model
    batch = model.recommender.rank_batch(
        [ask.user_id for ask in asks], max(ask.k for ask in asks), exclude_seen=asks[0].exclude_seen)
    rows = encode_rows(batch, [ask.k for ask in asks])
    answers = []
    for user, strategy, row in zip(batch.user_ids, batch.strategies, rows, strict=True):
        if strategy == "popularity":
            answers.append(Answer(user, strategy, None, None))
        else:
            answers.append(Answer(user, strategy, *recommendation_bodies(model.version, user, strategy, row)))
    return answers
