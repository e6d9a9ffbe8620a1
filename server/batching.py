"""Score concurrent single-user requests together (micro-batching).

Scoring one user reads every item factor: 25 MB for 100K items × 64 factors, so
separate requests are bound by memory bandwidth, not arithmetic. Requests that
arrive while the scorers are busy wait in a queue and are scored as one
``recommend_batch`` (one sgemm that reads the item factors once for the whole
batch). Under light load nothing waits: a request finds a free scorer and runs
at once, alone. At most one batch per executor thread is in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from server.state import LoadedModel
from server.schemas import ExternalId
from timbral.recommender import Recommendations


@dataclass(slots=True)
class _Pending:
    model: LoadedModel
    user_id: ExternalId
    k: int
    exclude_seen: bool
    future: asyncio.Future[Recommendations]


class RecommendBatcher:
    """Queue single-user recommendations and score them in batches on ``executor``.

    Parameters
    ----------
    executor : Executor
        The scoring pool; the kernels release the GIL.
    max_in_flight : int
        Batches scored at once (the executor's thread count).
    max_batch : int
        Users per batch at most.
    observe : callable(batch_size, seconds), optional
        Told about every batch (for metrics).
    """

    def __init__(
        self,
        executor: Executor,
        *,
        max_in_flight: int,
        max_batch: int = 64,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        self._executor = executor
        self._max_in_flight = max(1, max_in_flight)
        self._max_batch = max(1, max_batch)
        self._observe = observe
        self._queue: list[_Pending] = []
        self._in_flight = 0
        self._drains: set[asyncio.Task[None]] = set()

    async def recommend(
        self, model: LoadedModel, user_id: ExternalId, k: int, exclude_seen: bool
    ) -> Recommendations:
        """What ``model.recommender.recommend(user_id, k, exclude_seen=...)`` returns."""
        future: asyncio.Future[Recommendations] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(model, user_id, k, exclude_seen, future))
        if self._in_flight < self._max_in_flight:
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._drains.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._drains.discard)
        return await future

    async def _drain(self) -> None:
        """Score queued requests batch by batch until the queue is empty."""
        try:
            while self._queue:
                batch = self._take_batch()
                await self._score(batch)
        finally:
            self._in_flight -= 1

    def _take_batch(self) -> list[_Pending]:
        """The oldest request and every queued one that can share its scoring call."""
        first = self._queue[0]
        batch, rest = [], []
        for pending in self._queue:
            same_call = pending.model is first.model and pending.exclude_seen == first.exclude_seen
            (batch if same_call and len(batch) < self._max_batch else rest).append(pending)
        self._queue = rest
        return batch

    async def _score(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a client may have gone away
        if not live:
            return
        model = live[0].model
        k = max(p.k for p in live)  # a shorter list is a prefix of a longer one
        start = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor,
                _recommend_batch,
                model,
                [p.user_id for p in live],
                k,
                live[0].exclude_seen,
            )
        except Exception as exc:  # handed to every waiting request, which re-raises it
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        if self._observe is not None:
            self._observe(len(live), time.perf_counter() - start)
        for pending, result in zip(live, results):
            if not pending.future.done():
                pending.future.set_result(
                    result if pending.k == k else Recommendations(result.user_id, result.strategy, result.items[: pending.k])
                )


def _recommend_batch(
    model: LoadedModel, user_ids: list[ExternalId], k: int, exclude_seen: bool
) -> list[Recommendations]:
    return model.recommender.recommend_batch(user_ids, k, exclude_seen=exclude_seen)
