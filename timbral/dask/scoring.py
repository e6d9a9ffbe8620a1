"""Every user's top-k written as partitioned Parquet by the Dask workers.

Each task loads the model directory once per worker process (verified like any
load), scores one contiguous range of users in batches with the model's own top-K
(``NMFModel.recommend_batch``: the same kernel and the same seen-item exclusion as
``Recommender.recommend``) and writes one Parquet file of (user_id, rank, item_id,
score). The client holds the list of ranges and the row counts the tasks return.

With ``redis_url`` the tasks also pre-warm the service's Redis tier: each answer is
stored under the service's own key and encoding (``timbral.server.cache``'s
``recommendation_key`` and ``recommendation_bodies``), so replicas loading the same
model directory answer every known user from cache from their first request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from timbral._validation import check_k
from timbral.dask.blocks import even_bounds
from timbral.exceptions import ValidationError
from timbral.logs import redact_url
from timbral.recommender import RankedBatch, Recommender

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["RecommendAllSummary", "recommend_all"]

#: Users scored per kernel call inside a task: bounds the (batch × n_items) score buffer.
SCORING_BATCH = 4096


@dataclass(frozen=True)
class RecommendAllSummary:
    """What :func:`recommend_all` wrote."""

    output: str
    files: list[str]
    n_users: int
    n_rows: int
    k: int
    model_version: str


@lru_cache(maxsize=2)
def _recommender(model_dir: str) -> Recommender:
    """The model, loaded once per worker process and model directory."""
    return Recommender.load(model_dir)


def _facts(model_dir: str) -> tuple[int, str]:
    rec = _recommender(model_dir)
    return rec.n_users, rec.model_version


def _prewarm(redis: Any, ttl_ms: int, rec: Recommender, users: NDArray[np.int64], k: int,
             ids: NDArray[np.int64], scores: NDArray[np.floating]) -> None:
    """Store a batch's answers in Redis as the service caches them (``exclude_seen=True``)."""
    from timbral.server.cache import recommendation_bodies, recommendation_key
    from timbral.server.encoding import encode_rows

    keep = ids >= 0
    offsets = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    user_ids = rec.user_ids[users].tolist()
    batch = RankedBatch(user_ids, ["nmf"] * len(user_ids), rec.item_ids[ids[keep]],
                        scores[keep].astype(np.float64), offsets)
    with redis.pipeline(transaction=False) as pipe:
        for user, items in zip(user_ids, encode_rows(batch), strict=True):
            pipe.set(recommendation_key(rec.model_version, user, k, True),
                     recommendation_bodies(rec.model_version, user, "nmf", items)[1], px=ttl_ms)
        pipe.execute()


def _score_range(model_dir: str, lo: int, hi: int, k: int, url: str, redis_url: str | None,
                 ttl_ms: int) -> int:
    """Top-k of users ``lo:hi`` (internal rows) into one Parquet file (and Redis); returns its row count."""
    import fsspec

    rec = _recommender(model_dir)
    redis = None if redis_url is None else _redis(redis_url)
    tables = []
    for start in range(lo, hi, SCORING_BATCH):
        users = np.arange(start, min(start + SCORING_BATCH, hi))
        ids, scores = rec.model.recommend_batch(users, k, exclude_seen=True)
        if redis is not None:
            _prewarm(redis, ttl_ms, rec, users, k, ids, scores)
        valid = ids >= 0  # users who have seen nearly everything get fewer than k
        rank = np.broadcast_to(np.arange(1, ids.shape[1] + 1, dtype=np.int16), ids.shape)
        tables.append(pa.table({
            "user_id": pa.array(np.repeat(rec.user_ids[users], valid.sum(axis=1))),
            "rank": pa.array(rank[valid]),
            "item_id": pa.array(rec.item_ids[ids[valid]]),
            "score": pa.array(scores[valid].astype(np.float32)),
        }))
    if redis is not None:
        redis.close()
    table = pa.concat_tables(tables)
    with fsspec.open(url, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    return table.num_rows


def recommend_all(
    model_dir: str | os.PathLike[str],
    client: Client,
    k: int = 10,
    output: str | os.PathLike[str] = "recommendations",
    *,
    n_partitions: int | None = None,
    redis_url: str | None = None,
    redis_ttl_seconds: float | None = None,
) -> RecommendAllSummary:
    """Write the top ``k`` unseen items of every user in ``model_dir`` as partitioned Parquet.

    Parameters
    ----------
    model_dir : path
        A model directory every worker can read (``timbral train`` or ``Recommender.save``).
    client : distributed.Client
    k : int, default=10
    output : path or fsspec URL
        Directory to create; receives ``part-00000.parquet``, ... with columns
        ``user_id``, ``rank`` (1 = best), ``item_id`` and ``score`` (float32).
    n_partitions : int, optional
        Files (= tasks); default four per worker thread.
    redis_url : str, optional
        ``redis://`` or ``rediss://`` URL (database in the path) of the service's Redis,
        reachable from every worker: each answer is also stored there under the
        service's cache key, so replicas serving this model start warm.
    redis_ttl_seconds : float, optional
        Expiry of the pre-warmed entries; default the service's default ``CACHE_TTL_SECONDS``.

    Returns
    -------
    RecommendAllSummary
    """
    import fsspec

    k = check_k(k)
    if n_partitions is None:
        n_partitions = 4 * max(1, sum(client.nthreads().values()))
    if isinstance(n_partitions, bool) or not isinstance(n_partitions, (int, np.integer)) or n_partitions < 1:
        raise ValidationError(f"n_partitions must be a positive integer, got {n_partitions!r}")
    redis_ttl_seconds = _check_redis(redis_url, redis_ttl_seconds)
    model_dir = os.fspath(model_dir)
    n_users, version = client.submit(_facts, model_dir, pure=False).result()
    fs, root = fsspec.core.url_to_fs(os.fspath(output))
    if fs.exists(root):
        raise ValidationError(
            f"output {os.fspath(output)!r} already exists; remove it or choose a new directory"
        )
    fs.makedirs(root, exist_ok=True)
    bounds = even_bounds(n_users, n_partitions)
    urls = [fs.unstrip_protocol(f"{root}/part-{p:05d}.parquet") for p in range(len(bounds) - 1)]
    counts = client.gather([
        client.submit(_score_range, model_dir, int(lo), int(hi), k, url, redis_url,
                      round(redis_ttl_seconds * 1000), pure=False)
        for lo, hi, url in zip(bounds[:-1], bounds[1:], urls, strict=True)
    ])
    return RecommendAllSummary(os.fspath(output), urls, n_users, int(sum(counts)), k, version)


def _check_redis(redis_url: str | None, ttl_seconds: float | None) -> float:
    """The TTL to use; refuses a URL that is not Redis's and a TTL that is not a positive number."""
    if redis_url is None:
        return 0.0
    from timbral.server.config import Config  # the service's default TTL, imported only to pre-warm

    if ttl_seconds is None:
        ttl_seconds = Config().cache_ttl_seconds
    if not isinstance(redis_url, str) or not redis_url.startswith(("redis://", "rediss://")):
        shown = redact_url(redis_url) if isinstance(redis_url, str) else type(redis_url).__name__
        raise ValidationError(
            f"redis_url must be a redis:// or rediss:// URL, got {shown!r}; pass the service's REDIS_URL"
        )
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, (int, float)) or not (
        np.isfinite(ttl_seconds) and ttl_seconds >= 0.001
    ):
        raise ValidationError(
            f"redis_ttl_seconds must be a number of seconds >= 0.001, got {ttl_seconds!r}; "
            "pass the service's CACHE_TTL_SECONDS"
        )
    return float(ttl_seconds)


def _redis(redis_url: str) -> Any:
    """A connection from a worker, checked at once: a bad URL or an unreachable server fails the task
    with the URL's credentials hidden."""
    import redis
    from redis.exceptions import RedisError

    try:
        connection = redis.Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)
        connection.ping()
    except (RedisError, ValueError, OSError) as exc:
        raise ValidationError(
            f"cannot pre-warm Redis at {redact_url(redis_url)} ({type(exc).__name__}: {redact_url(str(exc))}); "
            "check redis_url and that every worker can reach it"
        ) from None
    return connection
