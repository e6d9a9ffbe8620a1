"""The model being served, how a directory becomes one, and hot reload.

The served model lives in a :class:`ModelSlot`. A handler reads ``slot.current``
once and uses that object for the whole request, so a reload (one attribute
assignment on the event loop) swaps atomically: requests already running finish on
the old model, later ones see the new one, and none sees a mix.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from timbral.exceptions import ArtifactError
from timbral.ids import IdMap
from timbral.recommender import Recommender

from .errors import ApiError
from .metrics import Metrics
from .schemas import ExternalId

log = logging.getLogger("timbral.server.model")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    recommender: Recommender
    version: str
    path: Path
    loaded_at: datetime
    n_users: int
    n_items: int

    def user_id(self, value: ExternalId) -> ExternalId:
        """A client's user id in the model's id kind (path segments are strings)."""
        return _coerce(value, self.recommender.user_map)

    def item_id(self, value: ExternalId) -> ExternalId:
        """A client's item id in the model's id kind."""
        return _coerce(value, self.recommender.item_map)

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path),
            "loaded_at": self.loaded_at.isoformat(timespec="seconds"),
            "users": self.n_users,
            "items": self.n_items,
        }


def _coerce(value: ExternalId, ids: IdMap) -> ExternalId:
    """``value`` as the map parses it; a string that cannot be one of its ids stays as sent.

    Matching is exact (``IdMap.parse``): ``"042"``, ``" 42"``, ``"+42"`` or ``"4_2"`` are
    not user 42, so they are answered as unknown users under the id the client sent.
    """
    if isinstance(value, str):
        parsed = ids.parse(value)
        return value if parsed is None else parsed
    return str(value) if ids.kind == "str" else value


def load_model(path: Path, metrics: Metrics) -> LoadedModel:
    """Load and verify a model directory (blocking: run it in a thread).

    Beyond the artifact's own checks, one recommendation is computed so a model
    that loads but cannot score is refused before it serves anyone.

    Raises
    ------
    ArtifactError
        The directory is missing, damaged, or its model cannot score.
    """
    try:
        is_dir = path.is_dir()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ArtifactError(f"model directory {str(path)!r} cannot be looked up: {exc.strerror}") from None
    if not is_dir:
        raise ArtifactError(f"model directory {str(path)!r} does not exist or is not a directory")
    try:
        recommender = Recommender.load(path)
    except ArtifactError:
        raise
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"model directory {str(path)!r} could not be read: "
                            f"{type(exc).__name__}: {exc}") from exc
    # One kernel thread per call: the scoring pool is the server's parallelism. Nested
    # OpenMP teams inside pool threads oversubscribe the cores, and a team waiting for a
    # descheduled member stalls a whole scheduler slice (a 4-user batch took 23 ms, not 3).
    recommender.model.n_threads = 1
    if recommender.n_users < 1 or recommender.n_items < 1:
        raise ArtifactError(f"model in {str(path)!r} has {recommender.n_users} users and "
                            f"{recommender.n_items} items; it cannot recommend anything")
    try:
        recommender.recommend(recommender.user_ids[0], k=1)
    except Exception as exc:  # anything: this model must not go live
        raise ArtifactError(f"model in {str(path)!r} loaded but failed a test recommendation: "
                            f"{type(exc).__name__}: {exc}") from exc
    metrics.active_models.inc()
    weakref.finalize(recommender, metrics.active_models.dec)
    return LoadedModel(
        recommender=recommender,
        version=str(recommender.model_version),
        path=path,
        loaded_at=datetime.now(UTC),
        n_users=int(recommender.n_users),
        n_items=int(recommender.n_items),
    )


@dataclass(slots=True)
class Lifecycle:
    """Where the process is in its life: ``draining`` from SIGTERM until it exits.

    While draining, readiness answers 503 so load balancers stop routing here, and
    every other endpoint keeps answering until the listener closes.
    """

    draining: bool = False


@dataclass(slots=True)
class ModelSlot:
    """Holds the model being served (``None`` until one is loaded)."""

    current: LoadedModel | None = None

    def require(self) -> LoadedModel:
        model = self.current
        if model is None:
            raise ApiError(503, "model_unavailable",
                           "no model is loaded; set TIMBRAL_MODEL_DIR or POST /api/v1/model/reload")
        return model


@dataclass(slots=True)
class Reloader:
    """Loads new models in background tasks it owns, one at a time, then swaps them in.

    The task is shielded from the request that asked for it: a client that hangs up
    does not abort a half-done reload, and shutdown cancels and awaits it
    (:meth:`close`, from its cleanup context).
    """

    slot: ModelSlot
    metrics: Metrics
    on_swap: list[Any] = field(default_factory=list)  # callables run after each swap
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: set[asyncio.Task[LoadedModel]] = field(default_factory=set)

    async def reload(self, path: Path) -> LoadedModel:
        task = asyncio.get_running_loop().create_task(self._reload(path))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(task)

    async def _reload(self, path: Path) -> LoadedModel:
        async with self._lock:
            previous = self.slot.current
            try:
                loaded = await asyncio.to_thread(load_model, path, self.metrics)
            except ArtifactError as exc:
                self.metrics.model_reloads.labels("refused").inc()
                log.warning("model reload refused", extra={"path": str(path), "reason": str(exc)})
                raise
            self.slot.current = loaded
            for callback in self.on_swap:
                callback(loaded)
            self.metrics.model_reloads.labels("swapped").inc()
            log.info("model swapped", extra={
                "path": str(path), "model_version": loaded.version,
                "previous_version": previous.version if previous else None})
            return loaded

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
