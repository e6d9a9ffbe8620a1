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

from .drain import Batch, Drain
from .encoding import encode_rows
from .schemas import ExternalId
from .state import LoadedModel


@dataclass(frozen=True, slots=True)
class Answer:
    """One user's answer: ``recommendations`` is its JSON array of ranked items."""

    user_id: ExternalId
    strategy: str
    recommendations: bytes


@dataclass(frozen=True, slots=True)
class _Ask:
    model: LoadedModel
    user_id: ExternalId
    k: int
    exclude_seen: bool


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
        self._max_batch = max(1, max_batch)
        self._observe = observe
        self._drain: Drain[_Ask, Answer] = Drain(
            self._score, take=self._take_batch, max_tasks=max_in_flight)

    async def recommend(
        self, model: LoadedModel, user_id: ExternalId, k: int, exclude_seen: bool
    ) -> Answer:
        """``model.recommender.recommend(user_id, k, exclude_seen=...)``, its items as JSON."""
        return await self._drain.submit(_Ask(model, user_id, k, exclude_seen))

    def _take_batch(self, queue: Batch[_Ask, Answer]
                    ) -> tuple[Batch[_Ask, Answer], Batch[_Ask, Answer]]:
        """The oldest request and every queued one that can share its scoring call."""
        first = queue[0].payload
        batch, rest = [], []
        for waiting in queue:
            ask = waiting.payload
            same_call = ask.model is first.model and ask.exclude_seen == first.exclude_seen
            (batch if same_call and len(batch) < self._max_batch else rest).append(waiting)
        return batch, rest

    async def _score(self, batch: Batch[_Ask, Answer]) -> None:
        asks = [waiting.payload for waiting in batch]
        start = time.perf_counter()
        results = await asyncio.get_running_loop().run_in_executor(self._executor, _answer, asks)
        if self._observe is not None:
            self._observe(len(asks), time.perf_counter() - start)
        for waiting, result in zip(batch, results, strict=True):
            if not waiting.future.done():
                waiting.future.set_result(result)


def _answer(asks: list[_Ask]) -> list[Answer]:
    """Score ``asks`` (one model, one ``exclude_seen``) as one batch, encoded in this thread.

    The batch is scored at the largest ``k``; a shorter list is a prefix of a longer one.
    """
    k = max(ask.k for ask in asks)
    batch = asks[0].model.recommender.rank_batch(
        [ask.user_id for ask in asks], k, exclude_seen=asks[0].exclude_seen)
    rows = encode_rows(batch, [ask.k for ask in asks])
    return [Answer(user, strategy, row)
            for user, strategy, row in zip(batch.user_ids, batch.strategies, rows, strict=True)]
