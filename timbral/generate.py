"""Synthetic, music-like listening data of any size, in bounded memory.

The generator mimics what play-count logs (Last.fm, a streaming service) look like:

* **item popularity** follows a Zipf law: the item of popularity rank ``r`` is drawn
  with probability proportional to ``r ** -popularity_exponent`` (a few hits, a long tail);
* **user activity** is heavy-tailed (Lomax / Pareto II): most listeners play a few
  dozen tracks, a few play thousands;
* **taste clusters**: every item belongs to one of ``n_genres`` genres and every user
  has a primary and a secondary genre; a play comes from the primary genre with
  probability ``0.65``, the secondary with ``0.2`` and the whole catalogue otherwise,
  always weighted by popularity;
* **play counts** are log-normal (heavy right tail), about 3.7 times larger inside
  a user's own genres;
* each ``(user, item)`` pair appears at most once, with a timestamp in 2024.

Users are generated in chunks of at most ``chunk_rows`` interactions, so 100M rows
stream to Parquet or CSV without ever being in memory at once. Everything is
vectorised NumPy; the result depends only on the arguments (``seed`` included).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from numpy.typing import NDArray

from timbral.exceptions import ValidationError

__all__ = [
    "GenerateSummary",
    "generate_interactions",
    "iter_interactions",
    "write_interactions",
    "write_partitioned",
]

SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("plays", pa.int64()),
        ("timestamp", pa.int64()),
    ]
)
_P_PRIMARY, _P_SECONDARY = 0.65, 0.2
_T0, _SPAN = 1_704_067_200, 366 * 86_400  # 2024-01-01T00:00:00Z, one (leap) year
_DENSE_BLOCK = 4_000_000  # matrix entries per block when a user needs most of the catalogue
_MAX_PLAYS = 1_000_000


@dataclass(frozen=True)
class GenerateSummary:
    """What :func:`write_interactions` wrote."""

    path: Path
    format: str
    n_rows: int
    n_users: int
    n_items: int
    seconds: float


def _check_sizes(n_users: int, n_items: int, n_interactions: int, chunk_rows: int) -> None:
    for name, value in [
        ("n_users", n_users),
        ("n_items", n_items),
        ("n_interactions", n_interactions),
        ("chunk_rows", chunk_rows),
    ]:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValidationError(f"{name} must be a positive integer, got {value!r}")
    if n_interactions > n_users * n_items:
        raise ValidationError(
            f"n_interactions={n_interactions} exceeds n_users * n_items = {n_users * n_items}: "
            "each (user, item) pair appears at most once; ask for fewer interactions "
            "or more users or items"
        )


def _allocate(total: int, weights: NDArray[np.float64], low: int, cap: int) -> NDArray[np.int64]:
    """Split ``total`` into integer counts in ``[low, cap]`` proportional to ``weights``.

    Largest-remainder rounding, then water-filling: what capped users cannot take is
    shared among the others in proportion to their weights.
    """
    counts = np.full(weights.shape[0], low, dtype=np.int64)
    while (left := total - int(counts.sum())) > 0:
        free = counts < cap
        share = np.zeros_like(weights)
        share[free] = left * weights[free] / weights[free].sum()
        add = np.floor(share).astype(np.int64)
        rest = left - int(add.sum())
        if rest > 0:  # give the remainder to the largest fractional parts
            frac = np.where(free, share - add, -1.0)
            add[np.argpartition(-frac, rest - 1)[:rest]] += 1
        counts = np.minimum(counts + add, cap)
    return counts


class _Catalogue:
    """Items with genres and Zipf popularity; samples items for users by genre."""

    def __init__(
        self, n_items: int, n_genres: int, exponent: float, rng: np.random.Generator
    ) -> None:
        popularity = np.arange(1, n_items + 1, dtype=np.float64) ** -exponent
        popularity = popularity[rng.permutation(n_items)]  # popularity unrelated to item id
        genre = rng.integers(0, n_genres, size=n_items)
        # Items sorted by genre: each genre is one contiguous segment of a cumulative sum.
        self.by_genre = np.argsort(genre, kind="stable")
        weights = popularity[self.by_genre] / popularity.sum()
        self.cum = np.cumsum(weights)
        self.cum[-1] = 1.0
        bounds = np.searchsorted(genre[self.by_genre], np.arange(n_genres + 1))
        cum0 = np.concatenate([[0.0], self.cum])
        self.genre_lo = cum0[bounds[:-1]]
        self.genre_mass = cum0[bounds[1:]] - self.genre_lo
        self.genre = genre
        self.popularity = popularity
        self.n_items = n_items

    def sample(self, genres: NDArray[np.int64], rng: np.random.Generator) -> NDArray[np.int64]:
        """One item per entry of ``genres`` (-1 = whole catalogue), popularity-weighted."""
        lo = np.where(genres >= 0, self.genre_lo[genres], 0.0)
        mass = np.where(genres >= 0, self.genre_mass[genres], 1.0)
        target = lo + rng.random(genres.shape[0]) * mass
        pos = np.minimum(np.searchsorted(self.cum, target, side="right"), self.n_items - 1)
        return self.by_genre[pos]

    def affinity(self, primary: NDArray[np.int64], secondary: NDArray[np.int64]) -> NDArray:
        """Dense (users, items) sampling probabilities of each user's mixture."""
        pop = self.popularity / self.popularity.sum()
        out = np.empty((primary.shape[0], self.n_items))
        out[:] = (1.0 - _P_PRIMARY - _P_SECONDARY) * pop
        for genres, p in [(primary, _P_PRIMARY), (secondary, _P_SECONDARY)]:
            in_genre = self.genre[None, :] == genres[:, None]
            mass = self.genre_mass[genres][:, None]
            out += np.where(in_genre, p * pop[None, :] / np.maximum(mass, 1e-300), 0.0)
        return out


def _draw_genres(
    n: int, primary: NDArray[np.int64], secondary: NDArray[np.int64], rng: np.random.Generator
) -> NDArray[np.int64]:
    u = rng.random(n)
    return np.where(u < _P_PRIMARY, primary, np.where(u < _P_PRIMARY + _P_SECONDARY, secondary, -1))


def _sample_unique(
    catalogue: _Catalogue,
    counts: NDArray[np.int64],
    primary: NDArray[np.int64],
    secondary: NDArray[np.int64],
    rng: np.random.Generator,
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Distinct items per user: ``counts[u]`` of them, weighted sampling without replacement.

    Draws with replacement in rounds and keeps each user's first distinct draws (successive
    sampling); users still short after a few rounds (those who need most of a skewed
    catalogue) are finished exactly with Gumbel top-k over dense blocks of the catalogue.

    Returns
    -------
    users, items : ndarray of shape (counts.sum(),)
        Local user index (into ``counts``) and item index, sorted by user.
    """
    n_items = catalogue.n_items
    kept = np.empty(0, dtype=np.int64)  # keys user * n_items + item, in draw order
    have = np.zeros_like(counts)
    for _ in range(6):
        need = counts - have
        if not need.any():
            break
        draws = np.ceil(need * 1.25 + 2).astype(np.int64) * (need > 0)
        users = np.repeat(np.arange(counts.shape[0]), draws)
        items = catalogue.sample(_draw_genres(users.shape[0], primary[users], secondary[users], rng), rng)
        keys = np.concatenate([kept, users * n_items + items])
        _, first = np.unique(keys, return_index=True)
        keys = keys[np.sort(first)]  # distinct keys, earlier draws first
        order = np.argsort(keys // n_items, kind="stable")
        keys = keys[order]
        owner = keys // n_items
        starts = np.searchsorted(owner, np.arange(counts.shape[0]))
        rank = np.arange(keys.shape[0]) - starts[owner]
        kept = keys[rank < counts[owner]]
        have = np.bincount(kept // n_items, minlength=counts.shape[0])
    short = np.flatnonzero(have < counts)
    if short.size:
        kept = np.concatenate([kept, _finish_dense(catalogue, kept, short, counts - have,
                                                   primary, secondary, rng)])
        kept.sort()
    return kept // n_items, kept % n_items


def _finish_dense(
    catalogue: _Catalogue,
    kept: NDArray[np.int64],
    short: NDArray[np.int64],
    need: NDArray[np.int64],
    primary: NDArray[np.int64],
    secondary: NDArray[np.int64],
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """Exact weighted sampling without replacement (Gumbel top-k) for the ``short`` users."""
    n_items = catalogue.n_items
    block = max(1, _DENSE_BLOCK // n_items)
    out = []
    for start in range(0, short.shape[0], block):
        users = short[start : start + block]
        with np.errstate(divide="ignore"):
            scores = np.log(catalogue.affinity(primary[users], secondary[users]))
        scores += rng.gumbel(size=scores.shape)
        taken = kept[np.isin(kept // n_items, users)]
        row = np.searchsorted(users, taken // n_items)
        scores[row, taken % n_items] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")
        pick = np.arange(n_items)[None, :] < need[users][:, None]
        out.append((users[:, None] * n_items + order)[pick])
    return np.concatenate(out)


def iter_interactions(
    n_users: int,
    n_items: int,
    n_interactions: int,
    seed: int = 0,
    *,
    n_genres: int | None = None,
    popularity_exponent: float = 0.9,
    activity_shape: float = 1.5,
    chunk_rows: int = 1_000_000,
) -> Iterator[pa.Table]:
    """Generate synthetic listening data as a stream of Arrow tables.

    Parameters
    ----------
    n_users, n_items : int
        Sizes of the user base and the catalogue. External ids are ``1..n_users``
        and ``1..n_items``.
    n_interactions : int
        Exact number of rows (distinct ``(user, item)`` pairs) produced; at most
        ``n_users * n_items``.
    seed : int, default=0
        Seed of every random choice; the same arguments give the same rows.
    n_genres : int, optional
        Number of taste clusters; default ``clip(round(sqrt(n_items) / 3), 2, 50)``.
    popularity_exponent : float, default=0.9
        Zipf exponent of item popularity.
    activity_shape : float, default=1.5
        Lomax shape of user activity (smaller = heavier tail).
    chunk_rows : int, default=1_000_000
        Upper bound on the rows of one chunk (a single user may exceed it, once),
        which bounds memory.

    Yields
    ------
    pyarrow.Table
        Columns ``user_id``, ``item_id``, ``plays`` (int64 play counts ≥ 1) and
        ``timestamp`` (int64 epoch seconds in 2024), rows sorted by user.
    """
    _check_sizes(n_users, n_items, n_interactions, chunk_rows)
    if n_genres is None:
        n_genres = int(np.clip(round(math.sqrt(n_items) / 3), 2, 50))
    if n_genres < 1:
        raise ValidationError(f"n_genres must be a positive integer, got {n_genres!r}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    catalogue = _Catalogue(n_items, n_genres, popularity_exponent, rng)

    activity = rng.pareto(activity_shape, size=n_users) + 1.0
    low = min(5, n_items, n_interactions // n_users)  # loaders drop users below 5 by default
    # Nobody plays more than half the catalogue, unless the density asked for needs it.
    cap = max(low, n_items // 2) if n_interactions <= n_users * (n_items // 2) else n_items
    counts = _allocate(n_interactions, activity, low, cap)
    primary = rng.integers(0, n_genres, size=n_users)
    secondary = (primary + rng.integers(1, max(n_genres, 2), size=n_users)) % n_genres

    # Chunk boundaries: consecutive users whose counts add up to at most chunk_rows.
    ends = np.cumsum(counts)
    bounds = [0]
    while bounds[-1] < n_users:
        done = int(ends[bounds[-1] - 1]) if bounds[-1] else 0
        nxt = int(np.searchsorted(ends, done + chunk_rows, side="right"))
        bounds.append(max(nxt, bounds[-1] + 1))

    for index, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        crng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, index)))
        users, items = _sample_unique(
            catalogue, counts[lo:hi], primary[lo:hi], secondary[lo:hi], crng
        )
        users += lo
        own = (catalogue.genre[items] == primary[users]) | (catalogue.genre[items] == secondary[users])
        plays = np.ceil(crng.lognormal(np.where(own, 2.0, 0.7), 1.3))
        stamps = _T0 + crng.integers(0, _SPAN, size=users.shape[0])
        yield pa.table(
            [
                pa.array(users + 1),
                pa.array(items + 1),
                pa.array(np.minimum(plays, _MAX_PLAYS).astype(np.int64)),
                pa.array(stamps.astype(np.int64)),
            ],
            schema=SCHEMA,
        )


def generate_interactions(
    n_users: int, n_items: int, n_interactions: int, seed: int = 0, **options: object
) -> pa.Table:
    """All of :func:`iter_interactions` as one table (for data that fits in memory)."""
    chunks = list(iter_interactions(n_users, n_items, n_interactions, seed, **options))  # type: ignore[arg-type]
    return pa.concat_tables(chunks) if chunks else SCHEMA.empty_table()


_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".txt": "csv"}


def write_interactions(
    path: str | os.PathLike[str],
    n_users: int,
    n_items: int,
    n_interactions: int,
    seed: int = 0,
    *,
    format: str | None = None,
    progress: bool = False,
    **options: object,
) -> GenerateSummary:
    """Stream synthetic interactions to a Parquet, CSV or TSV file.

    The file is written beside its final name and renamed when complete, so a
    crash never leaves a truncated file under ``path``.

    Parameters
    ----------
    path : path-like
        Output file. Its extension (``.parquet``/``.pq``, ``.csv``/``.txt``, ``.tsv``)
        chooses the format unless ``format`` is given.
    n_users, n_items, n_interactions, seed
        As in :func:`iter_interactions`.
    format : {"parquet", "csv", "tsv"}, optional
        Overrides the extension.
    progress : bool, default=False
        Show a tqdm progress bar (in rows).
    **options
        Passed to :func:`iter_interactions`.
    """
    path = Path(path)
    fmt = format or _FORMATS.get(path.suffix.lower())
    if fmt not in {"parquet", "csv", "tsv"}:
        raise ValidationError(
            f"cannot tell the output format of {str(path)!r}: use a .parquet, .csv or .tsv "
            f"extension or pass format='parquet'|'csv'|'tsv' (got format={format!r})"
        )
    if not path.parent.is_dir():
        raise ValidationError(f"output directory {str(path.parent)!r} does not exist; create it first")
    start = time.perf_counter()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_interactions, unit="rows", unit_scale=True, desc="generate")
    n_rows = 0
    try:
        if fmt == "parquet":
            writer: pq.ParquetWriter | pa_csv.CSVWriter = pq.ParquetWriter(tmp, SCHEMA, compression="zstd")
        else:
            options_csv = pa_csv.WriteOptions(delimiter="\t" if fmt == "tsv" else ",", quoting_style="none")
            writer = pa_csv.CSVWriter(tmp, SCHEMA, write_options=options_csv)
        with writer:
            for table in iter_interactions(n_users, n_items, n_interactions, seed, **options):  # type: ignore[arg-type]
                writer.write_table(table)
                n_rows += table.num_rows
                if bar is not None:
                    bar.update(table.num_rows)
        os.replace(tmp, path)
    finally:
        if bar is not None:
            bar.close()
        tmp.unlink(missing_ok=True)
    return GenerateSummary(path, fmt, n_rows, n_users, n_items, time.perf_counter() - start)


def write_partitioned(
    directory: str | os.PathLike[str],
    n_users: int,
    n_items: int,
    n_interactions: int,
    seed: int = 0,
    *,
    n_partitions: int,
    progress: bool = False,
    **options: object,
) -> GenerateSummary:
    """Stream synthetic interactions to a directory of Parquet files, one per partition.

    The rows are those of :func:`iter_interactions` with the same arguments and
    ``chunk_rows`` defaulting to ``min(1_000_000, ceil(n_interactions / (8 n_partitions)))``
    (chunking is part of the random stream). Each partition holds whole users and
    ``n_interactions / n_partitions`` rows give or take half a chunk; memory stays
    bounded by one chunk whatever the total size. Files are written into a hidden sibling directory renamed into
    place when complete, so a crash never leaves a partial dataset under ``directory``.

    Parameters
    ----------
    directory : path-like
        Output directory (must not exist yet); receives ``part-00000.parquet``, ...
    n_partitions : int
        Number of files; at most ``n_users`` (a user is never split).
    n_users, n_items, n_interactions, seed, progress, **options
        As in :func:`write_interactions`.
    """
    directory = Path(directory)
    if isinstance(n_partitions, bool) or not isinstance(n_partitions, (int, np.integer)) or not (
        1 <= n_partitions <= max(int(n_users), 1)
    ):
        raise ValidationError(
            f"n_partitions must be an integer between 1 and n_users={n_users}, got {n_partitions!r}; "
            "a partition holds whole users"
        )
    if directory.exists():
        raise ValidationError(
            f"output directory {str(directory)!r} already exists; remove it or choose a new one "
            "(a partitioned dataset is written as a whole)"
        )
    if not directory.parent.is_dir():
        raise ValidationError(f"parent directory {str(directory.parent)!r} does not exist; create it first")
    share = int(n_interactions) / int(n_partitions)
    options.setdefault("chunk_rows", min(1_000_000, max(1, math.ceil(share / 8))))
    start = time.perf_counter()
    tmp = directory.with_name(f".{directory.name}.{os.getpid()}.tmp")
    tmp.mkdir()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_interactions, unit="rows", unit_scale=True, desc="generate")
    n_rows, part = 0, 0
    writer: pq.ParquetWriter | None = None
    try:
        for table in iter_interactions(n_users, n_items, n_interactions, seed, **options):  # type: ignore[arg-type]
            # The next partition starts when this chunk's middle passes the current one's end.
            if writer is not None and n_rows + table.num_rows / 2 > (part + 1) * share and part + 1 < n_partitions:
                writer.close()
                writer, part = None, part + 1
            if writer is None:
                writer = pq.ParquetWriter(tmp / f"part-{part:05d}.parquet", SCHEMA, compression="zstd")
            writer.write_table(table)
            n_rows += table.num_rows
            if bar is not None:
                bar.update(table.num_rows)
        if writer is not None:
            writer.close()
            writer = None
        os.replace(tmp, directory)
    finally:
        if writer is not None:
            writer.close()
        if bar is not None:
            bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return GenerateSummary(directory, "parquet", n_rows, n_users, n_items, time.perf_counter() - start)
