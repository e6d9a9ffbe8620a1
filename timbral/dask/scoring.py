"""Every user's top-k written as partitioned Parquet by the Dask workers.

Each task loads the model directory once per worker process (verified like any
load), scores one contiguous range of users in batches with the model's own top-K
(``NMFModel.recommend_batch``: the same kernel and the same seen-item exclusion as
``Recommender.recommend``) and writes one Parquet file of (user_id, rank, item_id,
score). The client holds the list of ranges and the row counts the tasks return.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from timbral._validation import check_k
from timbral.dask.blocks import even_bounds
from timbral.exceptions import ValidationError
from timbral.recommender import Recommender

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


def _score_range(model_dir: str, lo: int, hi: int, k: int, url: str) -> int:
    """Top-k of users ``lo:hi`` (internal rows) into one Parquet file; returns its row count."""
    import fsspec

    rec = _recommender(model_dir)
    tables = []
    for start in range(lo, hi, SCORING_BATCH):
        users = np.arange(start, min(start + SCORING_BATCH, hi))
        ids, scores = rec.model.recommend_batch(users, k, exclude_seen=True)
        valid = ids >= 0  # users who have seen nearly everything get fewer than k
        rank = np.broadcast_to(np.arange(1, ids.shape[1] + 1, dtype=np.int16), ids.shape)
        tables.append(pa.table({
            "user_id": pa.array(np.repeat(rec.user_ids[users], valid.sum(axis=1))),
            "rank": pa.array(rank[valid]),
            "item_id": pa.array(rec.item_ids[ids[valid]]),
            "score": pa.array(scores[valid].astype(np.float32)),
        }))
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
        client.submit(_score_range, model_dir, int(lo), int(hi), k, url, pure=False)
        for lo, hi, url in zip(bounds[:-1], bounds[1:], urls, strict=True)
    ])
    return RecommendAllSummary(os.fspath(output), urls, n_users, int(sum(counts)), k, version)
