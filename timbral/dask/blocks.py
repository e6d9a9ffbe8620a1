"""Interactions read, cleaned, id-mapped and shuffled into blocks by the Dask workers.

The client only plans: it holds futures, a few scalars per partition or block, and
never a row of data or an id map. The pipeline, every step a task on the workers:

1. **read + validate** each partition (Parquet file or dask DataFrame partition):
   rows with a missing id or an invalid, non-finite, negative (or, except for
   ``explicit``, zero) value are dropped, and a per-rule count returned;
2. **distinct ids** per partition, reduced pairwise (a tree on the workers) into the
   sorted id arrays of everything that survived validation;
3. **shuffle to user blocks**: each partition encodes its ids against those arrays and
   splits its rows by user block (contiguous ranges of user codes);
4. **per user block**: duplicates merged (summed), users above ``max_user_interactions``
   and below ``min_user_interactions`` removed; item counts reduced across blocks
   decide the items below ``min_item_interactions``; then the final codes: sorted
   ids of what is left, users numbered block by block;
5. **shuffle to item blocks**: each user block sends every item block its entries,
   which become that block's rows of Rᵀ.

The rules are :mod:`timbral.cleaning`'s own functions, applied in
``load_interactions``'s order (one pass of the minimum counts; the item half of that
rule is reduced across blocks), so a dataset gives the same matrix and id maps either
way; the automatic cap of ``max_value`` (``"auto"``) needs a global median and is not
offered here.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral.cleaning import (
    MAX_USER_ITEMS,
    ValidationReport,
    drop_bad_ratings,
    drop_implausible_users,
    drop_implausible_values,
    drop_missing_ids,
    merge_duplicates,
)
from timbral.exceptions import DataError, ValidationError
from timbral.ids import MAX_ID_BYTES, first_overlong

if TYPE_CHECKING:
    from distributed import Client, Future

__all__ = ["Blocks", "CleaningRules", "read_blocks"]

_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
#: Report fields summed over partitions and blocks.
_COUNTS = (
    "rows_read", "dropped_missing_id", "dropped_invalid_rating", "dropped_nonfinite_rating",
    "dropped_negative_rating", "dropped_zero_rating", "dropped_implausible_value", "duplicates_merged",
    "outlier_users", "outlier_user_interactions", "sparse_users_removed", "sparse_items_removed",
)


@dataclass(frozen=True)
class CleaningRules:
    """The cleaning options of :func:`timbral.data.load_interactions` that work block by block."""

    feedback: str = "implicit"
    min_user_interactions: int = 5
    min_item_interactions: int = 1
    max_value: float | None = None
    max_user_interactions: int | None = MAX_USER_ITEMS

    def __post_init__(self) -> None:
        if self.feedback not in ("implicit", "explicit", "frobenius"):
            raise ValidationError(
                f"feedback must be one of ('implicit', 'explicit', 'frobenius'), got {self.feedback!r}"
            )
        for name in ("min_user_interactions", "min_item_interactions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValidationError(f"{name} must be a non-negative integer, got {value!r}")
        for name in ("max_value", "max_user_interactions"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not value > 0
            ):
                hint = (
                    "; 'auto' needs a global median, which a distributed read does not compute: "
                    "pass the cap a single-machine load reported (ValidationReport." + name + ")"
                    if value == "auto" else ""
                )
                raise ValidationError(f"{name} must be None or a positive number, got {value!r}{hint}")


@dataclass
class Blocks:
    """Interactions living on the workers as row blocks of R and of Rᵀ.

    Attributes
    ----------
    user_blocks, item_blocks : list of Future
        Block ``b`` of R (users ``user_bounds[b]:user_bounds[b + 1]`` × all items) and
        of Rᵀ (items × all users), each a ``scipy.sparse.csr_matrix`` of float32 values
        with global column codes.
    user_bounds, item_bounds : ndarray of int64
        Block boundaries in final codes (``len(blocks) + 1`` entries).
    user_ids, item_ids : Future
        The sorted external ids of the final rows and columns (the model's id maps).
    report : ValidationReport
        Counts summed over partitions and blocks.
    user_block_nnz : list of int
        Interactions in each user block.
    """

    user_blocks: list[Future]
    item_blocks: list[Future]
    user_bounds: NDArray[np.int64]
    item_bounds: NDArray[np.int64]
    user_ids: Future
    item_ids: Future
    report: ValidationReport
    user_block_nnz: list[int]

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.user_bounds[-1]), int(self.item_bounds[-1])


# -- sources -------------------------------------------------------------------------


def parquet_files(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> tuple[Any, list[str]]:
    """The filesystem and sorted Parquet files of a directory, glob, file or list (local or fsspec URL)."""
    import fsspec

    paths = [os.fspath(p) for p in ([source] if isinstance(source, (str, os.PathLike)) else source)]
    if not paths:
        raise ValidationError("source is an empty list of files; pass at least one Parquet file or a directory")
    fs, _, expanded = fsspec.get_fs_token_paths(paths)
    files: list[str] = []
    for path in expanded:
        if fs.isdir(path):
            files += sorted(
                p for p in fs.find(path)
                if p.endswith(_PARQUET_SUFFIXES) and not os.path.basename(p).startswith((".", "_"))
            )
        elif fs.isfile(path):
            files.append(path)
    if not files:
        raise DataError(
            f"no Parquet files found at {paths!r}: pass a directory of .parquet files, a glob such as "
            "'data/*.parquet', a list of files, or a dask DataFrame"
        )
    return fs, files


# -- step 1: read and validate (on the workers) --------------------------------------------


def _ids(column: pa.ChunkedArray | pa.Array, name: str) -> tuple[NDArray[Any], NDArray[np.bool_]]:
    """Ids as int64 or str numpy values, and which are present."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_integer(column.type):
        return column.fill_null(0).to_numpy().astype(np.int64, copy=False), valid
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        overlong = first_overlong(column, MAX_ID_BYTES)  # the loader's limit on one id
        if overlong is not None:
            row, longest = overlong
            raise DataError(
                f"the id in column {name!r}, row {row + 1:,} of its partition, is {longest:,} bytes long; "
                f"ids are at most {MAX_ID_BYTES} bytes: fix or drop that row"
            )
        # Python str objects, as the loader keeps them (a fixed-width numpy str would drop trailing NULs).
        return column.fill_null("").to_numpy(zero_copy_only=False).astype(object), valid
    raise DataError(
        f"column {name!r} has type {column.type}; ids must be integers or strings (cast the column)"
    )


Columns = tuple[str, str, str | None]
#: A partition after validation: (users, items, values) arrays and the per-rule counts.
Part = tuple[tuple[NDArray[Any], NDArray[Any], NDArray[np.float64]], dict[str, int]]


def _validate(table: pa.Table, columns: Columns, rules: CleaningRules) -> Part:
    """Rows that pass the per-row rules as (users, items, values), and the count dropped by each rule."""
    user_col, item_col, rating_col = columns
    missing = [c for c in columns if c is not None and c not in table.column_names]
    if missing:
        raise DataError(
            f"column(s) {missing} not found among {table.column_names}; pass user_col=, item_col=, rating_col="
        )
    report = ValidationReport(rows_read=table.num_rows)
    users, user_ok = _ids(table.column(user_col), user_col)
    items, item_ok = _ids(table.column(item_col), item_col)
    keep = np.ones(table.num_rows, bool)
    drop_missing_ids(keep, user_ok, item_ok, report)
    if rating_col is None:
        values = np.ones(table.num_rows)
    else:
        column = pc.cast(table.column(rating_col), pa.float64(), safe=False)
        ok = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        values = column.fill_null(0.0).to_numpy()
        drop_bad_ratings(keep, values, ok, rules.feedback, report)
    users, items, values = users[keep], items[keep], values[keep]
    below_cap = drop_implausible_values(values, rules.max_value, report)  # a number or None: one cap everywhere
    if below_cap is not None:
        users, items, values = users[below_cap], items[below_cap], values[below_cap]
    return (users, items, values), _counts_of(report)


def _counts_of(report: ValidationReport) -> dict[str, int]:
    """The additive counts of a partition's or a block's report."""
    return {name: getattr(report, name) for name in _COUNTS}


def _read_parquet(fs: Any, path: str, columns: Columns, rules: CleaningRules) -> Part:
    wanted = [c for c in columns if c is not None]
    with fs.open(path, "rb") as f:
        try:
            parquet = pq.ParquetFile(f)
        except pa.ArrowInvalid as exc:
            raise DataError(f"cannot read {path!r} as Parquet ({exc}); pass only Parquet files") from None
        names = parquet.schema_arrow.names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise DataError(
                f"column(s) {missing} not found among {names} in {path!r}; pass user_col=, item_col=, rating_col="
            )
        return _validate(parquet.read(columns=wanted), columns, rules)


def _read_frame(frame: Any, columns: Columns, rules: CleaningRules) -> Part:
    return _validate(pa.Table.from_pandas(frame, preserve_index=False), columns, rules)


# -- step 2: distinct ids ------------------------------------------------------------------


def _distinct(part: Part, which: int) -> NDArray[Any]:
    return np.unique(part[0][which])


def _union(a: NDArray[Any], b: NDArray[Any]) -> NDArray[Any]:
    if a.dtype.kind != b.dtype.kind and a.size and b.size:
        raise DataError(
            f"ids mix integers and strings across partitions ({a.dtype} and {b.dtype}); "
            "give the id column one type in every file"
        )
    return np.union1d(a, b) if a.size and b.size else (a if a.size else b)


def tree_reduce(client: Client, futures: list[Future], combine: Callable[[Any, Any], Any]) -> Future:
    """Combine futures pairwise on the workers (log₂ n rounds); the client sees only the last future."""
    while len(futures) > 1:
        futures = [
            client.submit(combine, futures[i], futures[i + 1]) if i + 1 < len(futures) else futures[i]
            for i in range(0, len(futures), 2)
        ]
    return futures[0]


# -- step 3: shuffle to user blocks --------------------------------------------------------


def _encode_split(
    part: Part, user_map: NDArray[Any], item_map: NDArray[Any], bounds: NDArray[np.int64]
) -> list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]]:
    """The partition's rows as codes, cut by user block."""
    users, items, values = part[0]
    u = np.searchsorted(user_map, users)
    i = np.searchsorted(item_map, items)
    order = np.argsort(u, kind="stable")
    u, i, values = u[order], i[order], values[order]
    cuts = np.searchsorted(u, bounds)
    return [(u[a:b], i[a:b], values[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


# -- step 4: per user block ----------------------------------------------------------------


def _user_block(
    lo: int, hi: int, n_items: int, rules: CleaningRules, *pieces: Any
) -> tuple[sp.csr_matrix, dict[str, int]]:
    """Merge duplicates and apply the per-user rules; rows are users ``lo:hi`` (pre-filter codes)."""
    u = np.concatenate([p[0] for p in pieces]) - lo
    i = np.concatenate([p[1] for p in pieces])
    v = np.concatenate([p[2] for p in pieces])
    report = ValidationReport()
    rows, cols, values, _ = merge_duplicates(u, i, v, None, hi - lo, n_items, rules.feedback == "explicit")
    report.duplicates_merged = int(u.size - rows.size)
    keep = drop_implausible_users(rows, hi - lo, rules.max_user_interactions, report)
    # The user half of the minimum-count rule; the item half needs every block's counts (read_blocks).
    per_user = np.bincount(rows, minlength=hi - lo)
    sparse = keep & (per_user < rules.min_user_interactions)
    report.sparse_users_removed = int(sparse.sum())
    keep &= ~sparse
    block = sp.csr_matrix((values, cols, np.r_[0, np.cumsum(per_user)]), shape=(hi - lo, n_items))
    return _keep_rows(block, keep), _counts_of(report)


def _keep_rows(block: sp.csr_matrix, keep: NDArray[np.bool_]) -> sp.csr_matrix:
    """``block`` with the entries of the rows not kept removed (the rows stay, empty)."""
    lengths = np.diff(block.indptr) * keep
    mask = np.repeat(keep, np.diff(block.indptr))
    return sp.csr_matrix((block.data[mask], block.indices[mask], np.r_[0, np.cumsum(lengths)]), shape=block.shape)


def _item_counts(block: tuple[sp.csr_matrix, dict[str, int]]) -> NDArray[np.int64]:
    return np.bincount(block[0].indices, minlength=block[0].shape[1])


def _item_codes(
    counts: NDArray[np.int64], item_map: NDArray[Any], min_item: int
) -> tuple[NDArray[np.int64], NDArray[Any], int]:
    """New code of each item (-1: removed), the final item ids, and how many items ``min_item`` removed."""
    keep = counts >= max(min_item, 1)
    return np.where(keep, np.cumsum(keep) - 1, -1), item_map[keep], int((~keep & (counts > 0)).sum())


def _final_user_block(
    block: tuple[sp.csr_matrix, dict[str, int]], codes: tuple[NDArray[np.int64], NDArray[Any], int], n_items: int
) -> tuple[sp.csr_matrix, NDArray[np.bool_]]:
    """Removed items dropped, final item codes, and only the users with interactions left as rows."""
    csr = block[0]
    new = codes[0][csr.indices]
    keep = new >= 0
    rows = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))[keep]
    per_user = np.bincount(rows, minlength=csr.shape[0])
    alive = per_user > 0
    index = np.int32 if n_items < 2**31 else np.int64
    result = sp.csr_matrix(
        (csr.data[keep].astype(np.float32), new[keep].astype(index), np.r_[0, np.cumsum(per_user[alive])]),
        shape=(int(alive.sum()), n_items),
    )
    result.has_sorted_indices = True  # kept entries keep their sorted order
    return result, alive


def _n_rows(block: tuple[sp.csr_matrix, Any]) -> int:
    return int(block[0].shape[0])


def _block_user_ids(
    user_map: NDArray[Any], lo: int, hi: int, block: tuple[sp.csr_matrix, NDArray[np.bool_]]
) -> NDArray[Any]:
    return user_map[lo:hi][block[1]]


# -- step 5: shuffle to item blocks --------------------------------------------------------


def _split_items(
    block: tuple[sp.csr_matrix, NDArray[np.bool_]], offset: int, bounds: NDArray[np.int64]
) -> list[tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]]:
    """The block's entries as (item, global user, value), cut by item block."""
    csr = block[0]
    users = np.repeat(np.arange(offset, offset + csr.shape[0]), np.diff(csr.indptr))
    order = np.argsort(csr.indices, kind="stable")  # stable: users stay ascending within an item
    items, users, values = csr.indices[order], users[order], csr.data[order]
    cuts = np.searchsorted(items, bounds)
    return [(items[a:b], users[a:b], values[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _item_block(lo: int, hi: int, n_users: int, *pieces: Any) -> sp.csr_matrix:
    """Rows ``lo:hi`` of Rᵀ (items × users) from every user block's share."""
    items = np.concatenate([p[0] for p in pieces]) - lo
    users = np.concatenate([p[1] for p in pieces])
    values = np.concatenate([p[2] for p in pieces])
    index = np.int32 if n_users < 2**31 else np.int64
    block = sp.csr_matrix((values, (items.astype(index), users.astype(index))), shape=(hi - lo, n_users))
    block.sort_indices()
    return block


def _first(pair: tuple[Any, Any]) -> Any:
    return pair[0]


def _counts(part: Part) -> dict[str, int]:
    return part[1]


# -- the plan -------------------------------------------------------------------------------


def even_bounds(n: int, n_blocks: int) -> NDArray[np.int64]:
    """``n_blocks + 1`` boundaries cutting ``range(n)`` into nearly equal contiguous blocks."""
    return np.linspace(0, n, max(1, min(n_blocks, n)) + 1).round().astype(np.int64)


def read_blocks(
    source: Any,
    client: Client,
    *,
    n_blocks: int,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str | None = None,
    rules: CleaningRules = CleaningRules(),
) -> Blocks:
    """Read ``source`` on ``client``'s workers into user and item blocks (module docstring).

    Parameters
    ----------
    source : path, glob, fsspec URL, list of them, or dask.dataframe.DataFrame
        A Parquet dataset (one task per file) or a dask DataFrame (one task per partition).
    client : distributed.Client
    n_blocks : int
        Blocks per side (users and items).
    user_col, item_col, rating_col : str
        Column names; without ``rating_col`` every row counts 1.
    rules : CleaningRules
    """
    columns = (user_col, item_col, rating_col)
    if _is_dask_frame(source):
        parts = [client.submit(_read_frame, f, columns, rules) for f in client.compute(source.to_delayed())]
        source_name = "dask DataFrame"
    else:
        fs, files = parquet_files(source)
        parts = [client.submit(_read_parquet, fs, f, columns, rules, pure=False) for f in files]
        source_name = str(source) if isinstance(source, (str, os.PathLike)) else f"{len(files)} Parquet files"

    user_map = tree_reduce(client, [client.submit(_distinct, p, 0) for p in parts], _union)
    item_map = tree_reduce(client, [client.submit(_distinct, p, 1) for p in parts], _union)
    n_users0, n_items0 = client.gather([client.submit(len, user_map), client.submit(len, item_map)])
    report = ValidationReport(source=source_name, format="parquet", feedback=rules.feedback,
                              columns={"user": user_col, "item": item_col, "rating": rating_col})
    _add(report, client.gather([client.submit(_counts, p) for p in parts]))
    if n_users0 == 0:
        raise DataError(
            f"every one of the {report.rows_read} rows of {source_name} was dropped while validating rows "
            f"({_reasons(report)}); check the columns user_col={user_col!r}, item_col={item_col!r}, "
            f"rating_col={rating_col!r}"
        )

    bounds0 = even_bounds(n_users0, n_blocks)
    splits = [client.submit(_encode_split, p, user_map, item_map, bounds0) for p in parts]
    raw_blocks = [
        client.submit(_user_block, int(lo), int(hi), n_items0, rules,
                      *[client.submit(operator.getitem, s, b) for s in splits])
        for b, (lo, hi) in enumerate(zip(bounds0[:-1], bounds0[1:], strict=True))
    ]
    del parts, splits  # the blocks keep what they need; lineage stays with the scheduler
    _add(report, client.gather([client.submit(_counts, b) for b in raw_blocks]))

    totals = tree_reduce(client, [client.submit(_item_counts, b) for b in raw_blocks], operator.add)
    codes = client.submit(_item_codes, totals, item_map, rules.min_item_interactions)
    n_items, report.sparse_items_removed = client.gather(
        [client.submit(_n_final_items, codes), client.submit(operator.itemgetter(2), codes)]
    )
    finals = [client.submit(_final_user_block, b, codes, n_items) for b in raw_blocks]
    sizes = np.asarray(client.gather([client.submit(_n_rows, f) for f in finals]), dtype=np.int64)
    user_bounds = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    if user_bounds[-1] == 0:
        raise DataError(
            f"no interactions left in {source_name}: min_user_interactions={rules.min_user_interactions} and "
            f"min_item_interactions={rules.min_item_interactions} removed every user and item; lower them"
        )
    user_ids = tree_reduce(
        client,
        [client.submit(_block_user_ids, user_map, int(lo), int(hi), f)
         for f, lo, hi in zip(finals, bounds0[:-1], bounds0[1:], strict=True)],
        _concat,
    )
    item_ids = client.submit(operator.itemgetter(1), codes)

    item_bounds = even_bounds(n_items, n_blocks)
    item_splits = [
        client.submit(_split_items, f, int(off), item_bounds)
        for f, off in zip(finals, user_bounds[:-1], strict=True)
    ]
    item_blocks = [
        client.submit(_item_block, int(lo), int(hi), int(user_bounds[-1]),
                      *[client.submit(operator.getitem, s, j) for s in item_splits])
        for j, (lo, hi) in enumerate(zip(item_bounds[:-1], item_bounds[1:], strict=True))
    ]
    user_blocks = [client.submit(_first, f) for f in finals]
    report.n_users, report.n_items = int(user_bounds[-1]), int(n_items)
    block_nnz = [int(n) for n in client.gather([client.submit(_nnz, b) for b in user_blocks])]
    report.nnz = sum(block_nnz)
    return Blocks(user_blocks, item_blocks, user_bounds, item_bounds, user_ids, item_ids, report, block_nnz)


def _n_final_items(codes: tuple[Any, NDArray[Any], int]) -> int:
    return int(codes[1].size)


def _nnz(block: sp.csr_matrix) -> int:
    return int(block.nnz)


def _concat(a: NDArray[Any], b: NDArray[Any]) -> NDArray[Any]:
    return np.concatenate([a, b])


def _is_dask_frame(source: Any) -> bool:
    try:
        import dask.dataframe as dd
    except ImportError:
        return False
    return isinstance(source, dd.DataFrame)


def _add(report: ValidationReport, parts: list[dict[str, int]]) -> None:
    for part in parts:
        for name, value in part.items():
            setattr(report, name, getattr(report, name) + value)


def _reasons(report: ValidationReport) -> str:
    return ", ".join(f"{f.name[8:]}: {getattr(report, f.name)}" for f in fields(report)
                     if f.name.startswith("dropped_") and getattr(report, f.name))
