"""Top-K recommendation scoring: validate and coerce, then one GIL-free kernel call.

``top_k`` has exactly the semantics of ``timbral._reference.top_k`` (score
descending, ties to the lower item index, padding with id -1 / score -inf) but
scores items in bounded chunks, in parallel, with the GIL released. It is the one
place that checks ``k`` for top-K (positive, clamped to the number of items).

``TopK`` is the same call prepared for one item matrix, for callers that score many
small batches against it (the service): the items are checked and coerced once, and
each call only allocates the results and runs the kernel, trusting its inputs.

Non-negative float32 items (implicit models) take a faster kernel on CPUs with AVX2, FMA
and F16C (``timbral._core.topk_half``): a pass over a float16 copy of the items
(``half_items``) that can only over-select, then the candidates rescored exactly in
float32. Same lists as the exact kernel, scores the float32 dot products; a query it
cannot bound (a negative value) is ranked by an exact scan. ``TopK`` keeps the copy, half
the float32 items' size more per model; ``top_k`` builds it per call for batches of at
least ``HALF_MIN_QUERIES``. Either takes it only where it pays (``_half_pays``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral._core import topk_half as _topk_half
from timbral._core._topk import top_k as _top_k_kernel
from timbral._threads import effective_n_threads, single_threaded_blas
from timbral._validation import check_k
from timbral.exceptions import ValidationError

# Queries per work unit, and items scored per BLAS call at most: a unit's scratch holds
# chunk × (queries in its block) scores, the chunk set per call by ``chunk_items``.
CHUNK_ITEMS = 4096
BLOCK_QUERIES = 64
# Scores of scratch a unit fills per BLAS call (128 KiB in float32): with the chunk's item
# factors beside it (512 × 64 float32, another 128 KiB) it stays in a 512 KiB L2. Measured
# (benchmarks/compare_topk.py --scratch, benchmarks/README.md): blocks of 64 users at 512 items
# a call take about 0.8× the time of 4096 (Last.fm's 1,877 validation users over 17,617 items,
# 64 users over 10K and 100K items); batches of 1 to 8 users use little scratch and keep 4096.
SCRATCH_SCORES = 32_768

# Below this many multiply-adds per thread, waking a second thread costs more than it
# saves: one user over 10K items × 64 factors runs on one thread, over 100K on two.
MIN_WORK_PER_THREAD = 2_000_000

# The float16 pre-pass (``TIMBRAL_TOPK=exact`` at import turns it off, copies and all)
# pays when the candidates (about k·ln(m/k)) are few against the items it streams...
HALF_MIN_ITEMS_PER_K = 16
# ...and when a block of queries is memory-bound: with many queries per item the exact kernel's
# GEMM computes as fast as the pre-pass and reads the items from cache. Measured at 64 factors
# (benchmarks/compare_topk.py --prepass, exact kernel's time / pre-pass's): 64 users over 10K
# items (156 items per query) 0.81x, Last.fm's search blocks (275) 0.97x, 64 users over 100K
# (1,562) 1.05x, 8 users over 10K (1,250) 1.33x; 1 and 8 users over 100K 2.77x and 1.73x.
HALF_MIN_ITEMS_PER_QUERY = 512
# ...and, for ``top_k``, which builds the copy per call (one pass over the float32 items, then
# one writing the copy: 0.9 ms for Last.fm's 17,617 items, 5.5 ms for 100K), when the batch is
# large enough to amortize it. Last.fm's search blocks stay on the exact kernel by the rule above.
HALF_MIN_QUERIES = 64
# Scaled item values reach [2**14, 2**15): well inside float16's range (max 65504), so the
# smallest values stay normal (>= 2**-14) as far below the largest as possible.
_HALF_TOP_EXPONENT = 15

_MAX_ITEMS = int(np.iinfo(np.int32).max) - 1  # item ids are int32, -1 is padding; np.iinfo costs ~1 µs a call
_NO_EXCLUDE_INDPTR = np.empty(0, dtype=np.int64)
_NO_EXCLUDE_INDICES = np.empty(0, dtype=np.int32)
_NO_MASK = np.empty(0, dtype=np.uint8)


def _scoring_dtype(*dtypes: np.dtype) -> np.dtype:
    """The float dtype scores are computed in: the inputs' common one, float32 at least
    (float16 and integers are scored in float32 and float64)."""
    dtype = np.result_type(*dtypes, np.float32)
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _check_n_items(n_items: int) -> None:
    if n_items > _MAX_ITEMS:
        raise ValidationError(
            f"`items` has {n_items} rows; item ids are int32, so at most 2**31 - 2 items."
        )


def _as_factors(name: str, array: NDArray[np.floating], dtype: np.dtype) -> NDArray:
    """``array`` as a C-contiguous 2-D array of ``dtype`` (a copy only when needed)."""
    out = np.asarray(array)
    if out.ndim != 2:
        raise ValidationError(
            f"`{name}` must be a 2-D array of factors, got shape {out.shape}; "
            f"reshape a single factor vector with `{name}.reshape(1, -1)`."
        )
    return np.ascontiguousarray(out, dtype=dtype)


@dataclass(frozen=True)
class HalfItems:
    """Item factors as the pre-pass reads them (``timbral._core._topk_half``).

    ``tiles`` of shape (2 ceil(n_items / 16), n_factors, 8), float16 bits: item ``8t + l``'s
    factors times ``scale`` at ``tiles[t, :, l]``, zeros past the last item (the kernel
    scores tiles in pairs). ``scale`` is the power of two that brings the largest value
    into [2**14, 2**15) (at most 2**±120, so that it and the kernel's bounds stay finite in
    float32); values more than 2**28 below it land in float16's subnormal range (absolute
    rounding, 2**-25 at most, which the kernel's bound carries) or flush to zero. ``score_bound`` is the largest row
    sum times max(scale, 1): the kernel ranks a query exactly when its scores could
    approach float32's range.
    """

    tiles: NDArray[np.uint16]
    scale: float
    score_bound: float


def half_items(items: NDArray[np.floating]) -> HalfItems | None:
    """``items`` (2-D, C-contiguous) for the pre-pass, or ``None`` when it does not apply:
    no pre-pass kernel on this CPU, items not float32, no factors, or a value that is
    negative or not finite (explicit models' bias column, say)."""
    if _topk_half is None or items.dtype != np.float32 or items.size == 0:
        return None
    bounds = np.empty(2, dtype=np.float32)
    if not _topk_half.item_bounds(items, bounds):
        return None
    high, row_sum = bounds.tolist()
    scale = 1.0 if high == 0.0 else math.ldexp(1.0, max(-120, min(120, _HALF_TOP_EXPONENT - math.frexp(high)[1])))
    tiles = np.empty((2 * -(-items.shape[0] // 16), items.shape[1], 8), dtype=np.uint16)  # pairs of tiles
    _topk_half.half_tiles(items, scale, tiles)
    return HalfItems(tiles, scale, row_sum * max(scale, 1.0))


def _half_pays(k: int, n_items: int, n_queries: int) -> bool:
    """Whether the pre-pass is expected to beat the exact kernel on this call's shape."""
    return (k * HALF_MIN_ITEMS_PER_K <= n_items
            and n_items >= HALF_MIN_ITEMS_PER_QUERY * min(n_queries, BLOCK_QUERIES))


def item_mask(
    n_items: int, *, allow: NDArray[np.integer] | None = None, deny: NDArray[np.integer] | None = None
) -> NDArray[np.bool_] | None:
    """``top_k``'s ``item_mask`` (True = never recommend) from an allow list and a deny list.

    Both hold item indices already checked to be in range; ``None`` for neither.
    """
    if allow is None and deny is None:
        return None
    mask = np.zeros(n_items, dtype=bool)
    if allow is not None:
        mask[:] = True
        mask[allow] = False
    if deny is not None:
        mask[deny] = True
    return mask


def exclude_rows(
    matrix: sp.csr_matrix, rows: NDArray[np.integer]
) -> tuple[NDArray[np.int64], NDArray[np.int32]]:
    """The ``exclude`` pair for ``matrix[rows]`` without building a scipy matrix.

    ``matrix`` must have sorted indices. Slicing a CSR row through scipy costs tens
    of microseconds, more than scoring a user against 10K items.
    """
    rows = np.asarray(rows)
    if rows.size == 1:  # one user, the service's usual batch: two scalars, a view of the row
        row = rows.item()
        start, stop = matrix.indptr[row : row + 2].tolist()
        indptr = np.array((0, stop - start), dtype=np.int64)
        return indptr, matrix.indices[start:stop].astype(np.int32, copy=False)
    # Ufunc and array methods rather than np.cumsum and np.repeat, whose Python
    # wrappers cost more than the work for a batch of a few users.
    starts, stops = matrix.indptr[rows], matrix.indptr[rows + 1]
    lengths = (stops - starts).astype(np.int64, copy=False)
    indptr = np.zeros(lengths.size + 1, dtype=np.int64)
    np.add.accumulate(lengths, out=indptr[1:])
    positions = (starts - indptr[:-1]).repeat(lengths) + np.arange(indptr[-1])
    return indptr, matrix.indices[positions].astype(np.int32, copy=False)


def _exclude_arrays(
    exclude: sp.csr_matrix | sp.csr_array | tuple[NDArray[np.int64], NDArray[np.int32]],
    n_queries: int,
    n_items: int,
) -> tuple[NDArray[np.int64], NDArray[np.int32]]:
    """``(indptr int64, indices int32 sorted per row)`` of ``exclude``."""
    if isinstance(exclude, tuple) and len(exclude) == 2:  # from exclude_rows
        indptr, indices = exclude
        if indptr.shape != (n_queries + 1,) or indices.shape != (indptr[-1],):
            raise ValidationError(
                f"`exclude` as (indptr, indices) needs {n_queries + 1} row pointers and "
                f"indptr[-1] indices; got shapes {indptr.shape} and {indices.shape}."
            )
        return (
            np.ascontiguousarray(indptr, dtype=np.int64),
            np.ascontiguousarray(indices, dtype=np.int32),
        )
    if not sp.issparse(exclude) or exclude.format != "csr":
        raise ValidationError(
            f"`exclude` must be a scipy.sparse CSR matrix, got {type(exclude).__name__}; "
            "convert it with `scipy.sparse.csr_matrix(exclude)`."
        )
    if exclude.shape != (n_queries, n_items):
        raise ValidationError(
            f"`exclude` must have shape (n_queries, n_items) = ({n_queries}, {n_items}), "
            f"got {exclude.shape}; pass one row per query row and one column per item."
        )
    if not exclude.has_sorted_indices:
        exclude = exclude.sorted_indices()  # a sorted copy; the caller's matrix is untouched
    return (
        np.ascontiguousarray(exclude.indptr, dtype=np.int64),
        np.ascontiguousarray(exclude.indices, dtype=np.int32),
    )


def top_k(
    query: NDArray[np.floating],
    items: NDArray[np.floating],
    k: int,
    *,
    exclude: sp.csr_matrix | sp.csr_array | None = None,
    item_mask: NDArray[np.bool_] | None = None,
    n_threads: int = 0,
) -> tuple[NDArray[np.int32], NDArray[np.floating]]:
    """The ``k`` best items for each query row, by score ``query @ items.T``.

    Parameters
    ----------
    query : ndarray of shape (n_queries, n_factors)
        Query factors (user factors, or item factors for similar items).
    items : ndarray of shape (n_items, n_factors)
        Item factors. Both are scored in their common float dtype (float32 stays
        float32); C-contiguous inputs of that dtype are not copied.
    k : int
        Number of items to return per query, ``k >= 1``; more than ``n_items`` is
        clamped to ``n_items`` (results are never wider than the catalogue).
    exclude : scipy.sparse CSR of shape (n_queries, n_items), or (indptr, indices), optional
        Items to drop per query row (e.g. the user's seen items); values are ignored.
        The pair form (from ``exclude_rows``, indices sorted per row) skips scipy.
    item_mask : bool ndarray of shape (n_items,), optional
        ``True`` drops the item for every query (a deny list, or the complement of
        an allow list).
    n_threads : int, default 0
        Threads for the kernel at most; 0 means every available core. Small problems
        use fewer (``MIN_WORK_PER_THREAD``).

    Returns
    -------
    ids : int32 ndarray of shape (n_queries, min(k, n_items))
        Item indices, best first; ties go to the lower index; -1 pads rows with
        fewer than ``k`` candidates.
    scores : ndarray of shape (n_queries, min(k, n_items))
        Their scores, ``-inf`` where ``ids`` is -1. Items whose score is NaN are
        never returned.
    """
    dtype = _scoring_dtype(np.asarray(query).dtype, np.asarray(items).dtype)
    query = _as_factors("query", query, dtype)
    items = _as_factors("items", items, dtype)
    n_queries, n_items = query.shape[0], items.shape[0]
    if query.shape[1] != items.shape[1]:
        raise ValidationError(
            f"`query` has {query.shape[1]} factors per row but `items` has {items.shape[1]} "
            f"(shapes {query.shape} and {items.shape}); both must come from the same model."
        )
    _check_n_items(n_items)
    k = check_k(k, limit=n_items)
    indptr, indices = _NO_EXCLUDE_INDPTR, _NO_EXCLUDE_INDICES
    if exclude is not None:
        indptr, indices = _exclude_arrays(exclude, n_queries, n_items)
    mask = _NO_MASK
    if item_mask is not None:
        mask = np.ascontiguousarray(item_mask, dtype=np.bool_)
        if mask.shape != (n_items,):
            raise ValidationError(
                f"`item_mask` must have shape (n_items,) = ({n_items},), got {mask.shape}; "
                "pass one boolean per item (True = never recommend)."
            )
        mask = mask.view(np.uint8)
    half = half_items(items) if n_queries >= HALF_MIN_QUERIES and _half_pays(k, n_items, n_queries) else None
    return _select(query, items, k, indptr, indices, mask, effective_n_threads(n_threads), half)


def chunk_items(n_queries: int) -> int:
    """Items per BLAS call for ``n_queries`` query rows: ``SCRATCH_SCORES`` over the width of a
    block of queries, at most ``CHUNK_ITEMS``. The lists do not depend on it; the scores only by
    the rounding of BLAS's blocking (a few float32 ulps)."""
    return max(1, min(CHUNK_ITEMS, SCRATCH_SCORES // max(1, min(n_queries, BLOCK_QUERIES))))


def _select(
    query: NDArray[np.floating],
    items: NDArray[np.floating],
    k: int,
    indptr: NDArray[np.int64],
    indices: NDArray[np.int32],
    mask: NDArray[np.uint8],
    n_threads: int,
    half: HalfItems | None = None,
) -> tuple[NDArray[np.int32], NDArray[np.floating]]:
    """The kernel call behind ``top_k`` and ``TopK``, on inputs that meet its preconditions.

    ``query`` and ``items`` C-contiguous of one float dtype and width, ``1 <= k <= n_items``,
    the exclusion pair in int64/int32 (empty for none), ``mask`` uint8 (empty for none),
    ``n_threads`` resolved (≥ 1); small problems use fewer threads (``MIN_WORK_PER_THREAD``).
    ``half``, ``half_items(items)``, takes the pre-pass when it pays (``_half_pays``).
    """
    n_queries = query.shape[0]
    ids = np.empty((n_queries, k), dtype=np.int32)
    scores = np.empty((n_queries, k), dtype=items.dtype)
    work = n_queries * items.shape[0] * max(1, items.shape[1])
    threads = max(1, min(n_threads, work // MIN_WORK_PER_THREAD))
    if half is not None and _half_pays(k, items.shape[0], n_queries):
        # one block of queries per thread at most: each block streams the tiles once
        threads = min(threads, -(-n_queries // BLOCK_QUERIES))
        if _topk_half.top_k_half(query, items, half.tiles, half.scale, half.score_bound, indptr, indices,
                                 mask, ids, scores, BLOCK_QUERIES, threads) < 0:
            raise MemoryError(
                f"top_k: a thread could not allocate the pre-pass's candidates for {BLOCK_QUERIES} "
                f"queries at k={k}; lower `n_threads` (got {n_threads}) or `k`."
            )
        return ids, scores
    chunk = chunk_items(n_queries)
    with single_threaded_blas():
        failed = _top_k_kernel(
            query, items, indptr, indices, mask, ids, scores, chunk, BLOCK_QUERIES, threads
        )
    if failed:
        raise MemoryError(
            f"top_k: {failed} thread(s) could not allocate {chunk * BLOCK_QUERIES} "
            f"scores of scratch; lower `n_threads` (got {n_threads})."
        )
    return ids, scores


class TopK:
    """``top_k`` against one item matrix, checked once and then trusted.

    Parameters
    ----------
    items : ndarray of shape (n_items, n_factors)
        Item factors, checked and coerced as ``top_k`` does (``dtype`` is their float
        dtype, float16 and integers scored in float32 and float64).

    Notes
    -----
    A call does no validation: it is for callers whose inputs are already checked
    (``NMFModel.recommend_trusted``); the extents the kernel reads are still guarded.
    Safe to share between threads. Non-negative float32 items also keep ``half``, their
    float16 copy for the pre-pass (``half_items``): half the items' float32 size again.
    """

    def __init__(self, items: NDArray[np.floating]) -> None:
        self.dtype = _scoring_dtype(np.asarray(items).dtype)
        self.items = _as_factors("items", items, self.dtype)
        self.n_items = self.items.shape[0]
        _check_n_items(self.n_items)
        self.half = half_items(self.items)

    def __call__(
        self,
        query: NDArray[np.floating],
        k: int,
        *,
        exclude: tuple[NDArray[np.int64], NDArray[np.int32]] | None = None,
        item_mask: NDArray[np.bool_] | None = None,
        n_threads: int = 0,
    ) -> tuple[NDArray[np.int32], NDArray[np.floating]]:
        """``top_k(query, items, k, ...)`` for trusted inputs.

        ``query`` is 2-D with the items' width (cast to ``dtype`` if needed), ``k`` in
        ``[1, n_items]``, ``exclude`` an ``exclude_rows`` pair with one row per query
        row, ``item_mask`` bool of shape (n_items,). Returns as ``top_k``.
        """
        indptr, indices = (_NO_EXCLUDE_INDPTR, _NO_EXCLUDE_INDICES) if exclude is None else exclude
        mask = _NO_MASK if item_mask is None else item_mask.view(np.uint8)
        query = np.ascontiguousarray(query, dtype=self.dtype)
        # Trusted means not re-validated, not unguarded: the kernel reads these extents
        # without the GIL and without bounds checks, so a caller's slip must not become
        # a read past an array. A few integer comparisons, next to the checks' 60 µs.
        if (query.ndim != 2 or query.shape[1] != self.items.shape[1] or not 1 <= k <= self.n_items
                or mask.size not in (0, self.n_items)
                or (exclude is not None and (indptr.size != query.shape[0] + 1
                                             or indices.size < indptr[-1]))):
            raise ValidationError(
                f"TopK: inputs outside its contract (query shape {query.shape}, items "
                f"{self.items.shape}, k={k}, item_mask size {mask.size}, exclude "
                f"{indptr.size} row pointers and {indices.size} indices); use top_k, which checks them."
            )
        return _select(query, self.items, k, indptr, indices, mask, effective_n_threads(n_threads), self.half)
