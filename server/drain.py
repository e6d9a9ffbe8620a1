"""Queue requests, answer them in batches from a background drain task.

The Redis lookup coalescing (:mod:`.cache`) uses this: a caller queues its payload
with a future and awaits it; if no drain is running one is started, and it takes
everything queued, processes it as one batch, and loops until the queue is empty.
Under light load a request is processed at once, alone; under load, requests that
arrive while a batch is in flight share the next one. (The scoring micro-batcher,
:mod:`.batching`, drains its queue from threads instead: its batches are CPU work.)
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


class Drain(Generic[P, R]):
    """Answer queued requests with ``process(batch)``, one batch at a time.

    Parameters
    ----------
    process : async callable(batch)
        Sets the result of every still-pending future in ``batch``. If it raises, the
        exception is handed to each of them (their callers re-raise it), and the drain
        carries on with the next batch.
    """

    def __init__(self, process: Callable[[Batch[P, R]], Awaitable[None]]) -> None:
        self._process = process
        self._queue: Batch[P, R] = []
        self._running = False  # set in the drain itself: a finished task may still be in _tasks
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak refs

    async def submit(self, payload: P) -> R:
        """Queue ``payload`` and wait for the answer ``process`` gives it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append(Waiting(payload, future))
        if not self._running:
            self._running = True
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self) -> None:
        batch: Batch[P, R] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
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
            self._running = False
            # Work is left here only if this task was cancelled (shutdown): its callers
            # must not wait forever for a drain that is gone.
            for waiting in [*batch, *self._queue]:
                waiting.future.cancel()  # a no-op on the futures already answered
            self._queue = []
