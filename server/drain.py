"""Queue requests, answer them in batches from background drain tasks.

The Redis lookup coalescing (:mod:`.cache`) and the scoring micro-batcher
(:mod:`.batching`) share this mechanism: a caller queues its payload with a future
and awaits it; if fewer than ``max_tasks`` drains are running one is started, and
each drain takes a batch, processes it, and loops until the queue is empty. Under
light load a request is processed at once, alone; under load, requests that arrive
while a batch is in flight share the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

P = TypeVar("P")
R = TypeVar("R")


@dataclass(slots=True)
class Waiting(Generic[P, R]):
    """One queued request: what was asked, and the future its caller awaits."""

    payload: P
    future: asyncio.Future[R]


Batch = list[Waiting[P, R]]


def take_all(queue: Batch[P, R]) -> tuple[Batch[P, R], Batch[P, R]]:
    """The default batching rule: everything queued goes in one batch."""
    return queue, []


class Drain(Generic[P, R]):
    """Answer queued requests with ``process(batch)``, from at most ``max_tasks`` tasks.

    Parameters
    ----------
    process : async callable(batch)
        Sets the result of every still-pending future in ``batch``. If it raises, the
        exception is handed to each of them (their callers re-raise it), and the drain
        carries on with the next batch.
    take : callable(queue) -> (batch, rest), default :func:`take_all`
        Splits the queue into the next batch and what stays queued.
    max_tasks : int, default 1
        Batches processed at once.
    """

    def __init__(
        self,
        process: Callable[[Batch[P, R]], Awaitable[None]],
        *,
        take: Callable[[Batch[P, R]], tuple[Batch[P, R], Batch[P, R]]] = take_all,
        max_tasks: int = 1,
    ) -> None:
        self._process = process
        self._take = take
        self._max_tasks = max(1, max_tasks)
        self._queue: Batch[P, R] = []
        self._running = 0  # counted in the drain itself: a finished task may still be in _tasks
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak refs

    async def submit(self, payload: P) -> R:
        """Queue ``payload`` and wait for the answer ``process`` gives it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append(Waiting(payload, future))
        if self._running < self._max_tasks:
            self._running += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        batch: Batch[P, R] = []
        try:
            while self._queue:
                batch, self._queue = self._take(self._queue)
                live = [waiting for waiting in batch if not waiting.future.done()]
                if not live:  # every caller of this batch has gone away
                    continue
                try:
                    await self._process(live)
                except Exception as exc:
                    for waiting in live:
                        if not waiting.future.done():
                            waiting.future.set_exception(exc)
        finally:
            self._running -= 1
            # Work is left here only if this task was cancelled (shutdown): its callers
            # must not wait forever for a drain that is gone.
            for waiting in batch:
                waiting.future.cancel()  # a no-op on the futures already answered
            if not self._running:
                for waiting in self._queue:
                    waiting.future.cancel()
                self._queue = []
