# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True, binding=True
"""Top-K selection of ``query @ items.T`` rows, fully GIL-free.

Work is cut into units of (a block of queries) × (a segment of the items). A unit
scores its items a chunk at a time with one BLAS call into per-thread scratch
(chunk × block), drops excluded items and keeps each query's best ``k`` in a
bounded min-heap whose root is the worst item kept. Ranking: score descending, ties
to the lower item index. The full n × m score matrix is never formed.

When there are fewer query blocks than threads (one user, say) the items are split
into segments too, each segment with its own heaps, and the heaps are merged
afterwards, so a single query still uses every thread.
"""

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport NAN
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport free, malloc
from scipy.linalg.cython_blas cimport dgemm, dgemv, sgemm, sgemv


include "_topk_heap.pxi"


cdef inline void _score(
    const floating* items, const floating* query, int n_factors, int n_chunk, int n_block,
    floating* out
) noexcept nogil:
    # out[c * n_block + q] = query[q] · items[c]: for each item, the block's scores side
    # by side. Row-major items (n_chunk × f) are a column-major f × n_chunk matrix Y and
    # row-major queries a column-major f × n_block matrix Q, so out (column-major
    # n_block × n_chunk) = Qᵀ Y. With the queries as BLAS's small "A" operand, a block
    # of a few users scores 2-2.5x faster than with the item chunk in that role (whose
    # repacking on every call then dominates).
    cdef int ld = n_factors if n_factors > 0 else 1
    cdef int inc = 1
    cdef floating one = 1.0
    cdef floating zero = 0.0
    if n_block == 1:
        if floating is float:
            sgemv(b"T", &n_factors, &n_chunk, &one, <float*> items, &ld,
                  <float*> query, &inc, &zero, out, &inc)
        else:
            dgemv(b"T", &n_factors, &n_chunk, &one, <double*> items, &ld,
                  <double*> query, &inc, &zero, out, &inc)
    else:
        if floating is float:
            sgemm(b"T", b"N", &n_block, &n_chunk, &n_factors, &one, <float*> query, &ld,
                  <float*> items, &ld, &zero, out, &n_block)
        else:
            dgemm(b"T", b"N", &n_block, &n_chunk, &n_factors, &one, <double*> query, &ld,
                  <double*> items, &ld, &zero, out, &n_block)


cdef inline void _drop_excluded(
    floating* col, Py_ssize_t stride, int32_t c0, int32_t c1, const int32_t* excl,
    Py_ssize_t n_excl
) noexcept nogil:
    # col[(i - c0) * stride] = NaN for every excluded i in [c0, c1); NaN never enters a heap
    cdef Py_ssize_t lo = 0, hi = n_excl, mid
    while lo < hi:  # lo = first position with excl[lo] >= c0 (excl is sorted)
        mid = (lo + hi) >> 1
        if excl[mid] < c0:
            lo = mid + 1
        else:
            hi = mid
    while lo < n_excl and excl[lo] < c1:
        col[(excl[lo] - c0) * stride] = NAN
        lo += 1


cdef inline void _select(
    const floating* col, Py_ssize_t stride, int32_t c0, int32_t n_chunk, const uint8_t* mask,
    floating* hs, int32_t* hi, Py_ssize_t k
) noexcept nogil:
    # offer items c0 .. c0+n_chunk-1 with scores col[c * stride] to the heap (hs, hi)
    cdef floating s, thr = hs[0]
    cdef int32_t c, item
    for c in range(n_chunk):
        s = col[c * stride]
        if not s >= thr:  # below the worst kept, or NaN (excluded)
            continue
        item = c0 + c
        if s == thr and item > hi[0]:  # a tie goes to the lower index already kept
            continue
        if mask != NULL and mask[item]:
            continue
        hs[0] = s
        hi[0] = item
        _sift_down(hs, hi, k, 0)
        thr = hs[0]


def top_k(
    const floating[:, ::1] query,
    const floating[:, ::1] items,
    const int64_t[::1] exclude_indptr,
    const int32_t[::1] exclude_indices,
    const uint8_t[::1] item_mask,
    int32_t[:, ::1] ids,
    floating[:, ::1] scores,
    Py_ssize_t chunk_items,
    Py_ssize_t block_queries,
    int n_threads,
):
    """Write the ``k = ids.shape[1]`` best items of each query row into ``ids``/``scores``.

    ``score[q, i] = query[q] · items[i]``. Items ``exclude_indices[exclude_indptr[q]:
    exclude_indptr[q + 1]]`` (sorted) are dropped for query ``q``; an empty
    ``exclude_indptr`` means no exclusions. ``item_mask[i] != 0`` drops item ``i`` for
    every query; an empty mask means none. Rows are ordered by score descending, ties
    to the lower index, padded with id -1 / score -inf. NaN scores are never kept.

    Returns the number of threads that could not allocate their scratch (0 on success;
    the outputs are then incomplete).
    """
    cdef Py_ssize_t n = query.shape[0], m = items.shape[0], k = ids.shape[1]
    cdef int n_factors = <int> query.shape[1]
    if n == 0 or k == 0:
        return 0
    cdef Py_ssize_t n_blocks = (n + block_queries - 1) // block_queries
    # with fewer query blocks than threads, split the items into about 4 units per
    # thread, so a thread descheduled on a busy machine leaves work for the others
    cdef Py_ssize_t n_segments = 1
    if n_blocks < n_threads:
        n_segments = (4 * n_threads + n_blocks - 1) // n_blocks
    cdef Py_ssize_t n_units = n_blocks * n_segments
    cdef const int64_t* indptr = &exclude_indptr[0] if exclude_indptr.shape[0] > 0 else NULL
    cdef const int32_t* excl = &exclude_indices[0] if exclude_indices.shape[0] > 0 else NULL
    cdef const uint8_t* mask = &item_mask[0] if item_mask.shape[0] > 0 else NULL
    # heaps of (segment s, query q) at offset (s * n + q) * k: the outputs themselves
    # when there is one segment, else a buffer merged into the outputs at the end
    cdef floating* heap_s = &scores[0, 0]
    cdef int32_t* heap_i = &ids[0, 0]
    if n_segments > 1:
        heap_s = <floating*> malloc(n_segments * n * k * sizeof(floating))
        heap_i = <int32_t*> malloc(n_segments * n * k * sizeof(int32_t))
        if heap_s == NULL or heap_i == NULL:
            free(heap_s)
            free(heap_i)
            return n_threads
    cdef Py_ssize_t unit, seg, q, q0, nq, ci, j, off
    cdef int32_t i0, i1, c0, nc
    cdef floating* scratch
    cdef int n_failed = 0
    with nogil, parallel(num_threads=n_threads):
        scratch = <floating*> malloc(chunk_items * block_queries * sizeof(floating))
        try:
            for unit in prange(n_units, schedule="dynamic"):
                if scratch == NULL:
                    n_failed += 1
                    continue
                seg = unit % n_segments
                q0 = (unit // n_segments) * block_queries
                nq = min(block_queries, n - q0)
                i0 = <int32_t> (m * seg // n_segments)  # this segment's items [i0, i1)
                i1 = <int32_t> (m * (seg + 1) // n_segments)
                for q in range(q0, q0 + nq):
                    off = (seg * n + q) * k
                    _heap_init(heap_s + off, heap_i + off, k)
                for ci in range((i1 - i0 + chunk_items - 1) // chunk_items):
                    c0 = <int32_t> (i0 + ci * chunk_items)  # chunk [c0, c0 + nc)
                    nc = <int32_t> min(chunk_items, i1 - c0)
                    _score(&items[c0, 0], &query[q0, 0], n_factors, nc, <int> nq, scratch)
                    for q in range(q0, q0 + nq):  # query q's scores: scratch[q - q0 :: nq]
                        off = (seg * n + q) * k
                        if indptr != NULL:
                            _drop_excluded(scratch + (q - q0), nq, c0, c0 + nc,
                                           excl + indptr[q], indptr[q + 1] - indptr[q])
                        _select(scratch + (q - q0), nq, c0, nc, mask,
                                heap_s + off, heap_i + off, k)
                if n_segments == 1:
                    for q in range(q0, q0 + nq):
                        _sort_heap(heap_s + q * k, heap_i + q * k, k)
        finally:
            free(scratch)
    if n_segments > 1:
        for q in prange(n, nogil=True, num_threads=n_threads, schedule="static"):
            for j in range(k):  # segment 0's heap is a valid heap of the outputs
                scores[q, j] = heap_s[q * k + j]
                ids[q, j] = heap_i[q * k + j]
            for seg in range(1, n_segments):
                off = (seg * n + q) * k
                for j in range(k):
                    _push(&scores[q, 0], &ids[q, 0], k, heap_s[off + j], heap_i[off + j])
            _sort_heap(&scores[q, 0], &ids[q, 0], k)
        free(heap_s)
        free(heap_i)
    return n_failed
