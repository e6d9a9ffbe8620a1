# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True, binding=True
"""Top-K of ``query @ items.T`` for non-negative float32 factors: a float16 pre-pass that
can only over-select, then exact float32 rescoring of what it kept. Fully GIL-free.

Built with AVX2, FMA and F16C; ``timbral._core`` imports it only on a CPU with all three.
The items come twice: float32 rows (the exact scores) and float16 tiles of 8 items,
scaled by a power of two ``scale`` (``timbral.scoring.half_items``). A unit (a block of
queries) streams the tiles once: for each pair of tiles (16 items) and each group of up
to 4 queries, FMA lanes give the items' approximate scores ``a``, and a compare +
movemask finds the items whose upper bound reaches the query's threshold ``L`` (the k-th
best lower bound so far); nearly every pair finds none and costs no scalar work. Those lanes become
candidates and raise ``L``. At the end the candidates still above the final ``L`` are
rescored from the float32 rows and selected with ``_topk``'s rules (score descending,
ties to the lower index, excluded and masked items never, -1 / -inf padding).

The bound. With q, h >= 0, f factors, σ = ``scale``, s = q·h the real score, ŝ its
float32 value (any summation order), h̃ = fp16(σh) and a the float32 FMA sum of q_j h̃_j:
  |h̃_j − σh_j| <= 2⁻¹¹ σh_j + 2⁻²⁵     (half an ulp of a normal float16; half the
                                        subnormal spacing 2⁻²⁴ below 2⁻¹⁴, where values
                                        under 2⁻²⁵ flush to 0: absolute, not relative)
  |a − Σ q_j h̃_j| <= γ_f Σ q_j h̃_j + f·2⁻¹⁴⁹,   |σŝ − σs| <= γ_{f+1} σs + σf·2⁻¹⁴⁹
(non-negative terms: rounding error relative to the sum; γ_n = nu/(1 − nu), u = 2⁻²⁴;
the 2⁻¹⁴⁹ terms are float32 underflow). Together, with Q1 = Σ q_j,
  a(1 − ρ) − e <= σŝ <= a(1 + ρ) + e,   ρ = 2(2⁻¹¹ + (2f + 16) 2⁻²⁴),
                                         e = 2(2⁻²⁵ Q1 + (σ + 1)(f + 2) 2⁻¹⁴⁹)
(ρ and e doubled over the first-order terms: second-order terms and the rounding of
the bounds themselves). If an item's upper bound is below the k-th best lower bound
of other valid items, k items beat it strictly: it cannot be in the top k, ties
included. Valid while no score overflows: a query with q·rowsum·max(σ, 1) above
2¹²⁰ (``score_bound``), or any negative or non-finite value, is ranked by the exact scan.

A query whose candidates outgrow their buffer (items that all score alike) is ranked by
an exact scan of every item too: never a wrong answer, only a slower one.
"""

from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t
from libc.stdlib cimport free, malloc


include "_topk_heap.pxi"


cdef extern from "_topk_half.h" nogil:
    int TH_TILE
    int TH_PAIR
    int TH_MAX_GROUP
    int th_pair(const uint16_t* tile, int f, const float* q, ptrdiff_t ldq, int n, float up,
                const float* add, const float* thr, float* acc_out, int* bits)
    float th_dot(const float* x, const float* y, int f)
    void th_pack(const float* rows, int f, int n_rows, float scale, uint16_t* tile)
    int th_bounds(const float* x, ptrdiff_t n, int f, float* top, float* top_row)


# Candidates a query may hold: 4k + CANDIDATE_SLACK. Random-order scans keep about
# k·ln(m/k) items plus the final band, far below this for the service's k.
cdef enum:
    CANDIDATE_SLACK = 1024
cdef double SCORE_LIMIT = 2.0 ** 120  # scores, bounds and all, stay far from float32's 2**128


cdef inline bint _excluded(
    int32_t item, const int32_t* excl, Py_ssize_t* pos, Py_ssize_t end
) noexcept nogil:
    # excl[*pos:end] is sorted and items arrive in increasing order: advance the cursor
    while pos[0] < end and excl[pos[0]] < item:
        pos[0] += 1
    return pos[0] < end and excl[pos[0]] == item


cdef inline bint _offer(
    float a, int32_t item, float up, float down, float add, float* thr,
    float* heap_lo, int32_t* heap_id, Py_ssize_t k,
    float* cand_hi, int32_t* cand_id, Py_ssize_t* n_cand, Py_ssize_t cap
) noexcept nogil:
    # a valid item whose upper bound reached thr: raise the k-th best lower bound with
    # its lower bound and keep it as a candidate. False when the buffer stays full after
    # dropping the candidates the risen threshold excludes: rank this query exactly.
    cdef float hi = a * up + add
    cdef Py_ssize_t c, kept
    _push(heap_lo, heap_id, k, a * down - add, item)
    thr[0] = heap_lo[0]
    if n_cand[0] == cap:
        kept = 0
        for c in range(cap):
            if cand_hi[c] >= thr[0]:
                cand_hi[kept] = cand_hi[c]
                cand_id[kept] = cand_id[c]
                kept += 1
        n_cand[0] = kept
        if kept > cap // 2:
            return False
    cand_hi[n_cand[0]] = hi
    cand_id[n_cand[0]] = item
    n_cand[0] += 1
    return True


cdef inline void _exact_scan(
    const float* q, const float* items, Py_ssize_t m, int f, const uint8_t* mask,
    const int32_t* excl, Py_ssize_t pos, Py_ssize_t end, float* hs, int32_t* hi, Py_ssize_t k
) noexcept nogil:
    # every valid item scored in float32, into the heap (hs, hi): the fallback
    cdef int32_t i
    for i in range(<int32_t> m):
        if (mask != NULL and mask[i]) or (excl != NULL and _excluded(i, excl, &pos, end)):
            continue
        _push(hs, hi, k, th_dot(q, items + <Py_ssize_t> i * f, f), i)


def item_bounds(const float[:, ::1] items, float[::1] out):
    """Whether every value of ``items`` is finite and >= 0; then ``out[0]`` = the largest
    value and ``out[1]`` = the largest row sum (summed in float32): what ``half_tiles``'
    scale and ``top_k_half``'s ``score_bound`` are made of. One pass, GIL-free."""
    cdef bint ok
    with nogil:
        ok = th_bounds(&items[0, 0], items.shape[0], <int> items.shape[1], &out[0], &out[1])
    return ok


def half_tiles(const float[:, ::1] items, float scale, uint16_t[:, :, ::1] tiles):
    """``tiles[t, j, l]`` = fp16(``scale`` · ``items[8t + l, j]``) (float16 bits, rounded to
    nearest even), zeros past the last item; ``tiles`` of shape (2 ceil(m / 16), f, 8)."""
    cdef Py_ssize_t t, m = items.shape[0]
    cdef int f = <int> items.shape[1]
    with nogil:
        for t in range(tiles.shape[0]):
            th_pack(&items[min(t * TH_TILE, m - 1), 0], f, <int> max(0, min(TH_TILE, m - t * TH_TILE)),
                    scale, &tiles[t, 0, 0])


def top_k_half(
    const float[:, ::1] query,
    const float[:, ::1] items,
    const uint16_t[:, :, ::1] tiles,
    float scale,
    double score_bound,
    const int64_t[::1] exclude_indptr,
    const int32_t[::1] exclude_indices,
    const uint8_t[::1] item_mask,
    int32_t[:, ::1] ids,
    float[:, ::1] scores,
    Py_ssize_t block_queries,
    int n_threads,
):
    """``_topk.top_k``'s answer for float32 ``query`` and ``items``, through the pre-pass.

    ``tiles`` (shape ``(2 ceil(m / 16), f, 8)``, float16 bits) holds ``scale · items`` with
    item ``8t + l`` at ``tiles[t, :, l]``, zeros past ``m``; ``scale`` is a power of two
    and every item value is finite and >= 0. ``score_bound`` = max row sum of ``items`` ×
    max(``scale``, 1). Other arguments as ``_topk.top_k``; blocks of ``block_queries``
    queries run in parallel, each streaming the tiles once.

    Returns the number of queries ranked by the exact scan instead (negative or
    non-finite values, scores near float32's range, a candidate buffer overflow), or -1
    when a thread could not allocate its scratch (the outputs are then incomplete).
    """
    cdef Py_ssize_t n = query.shape[0], m = items.shape[0], k = ids.shape[1]
    cdef int f = <int> query.shape[1]
    if n == 0 or k == 0:
        return 0
    cdef Py_ssize_t n_tiles = tiles.shape[0]
    cdef Py_ssize_t n_blocks = (n + block_queries - 1) // block_queries
    cdef Py_ssize_t cap = 4 * k + CANDIDATE_SLACK
    # a block's scratch, for as many queries as a block holds: one user's call then
    # allocates ~9 KB, not a 64-user block's ~0.5 MB (an mmap, and page faults, per call)
    cdef Py_ssize_t width = min(block_queries, n)
    cdef float rho = 2.0 * (2.0 ** -11 + (2.0 * f + 16.0) * 2.0 ** -24)
    cdef float up = 1.0 + rho, down = 1.0 - rho
    cdef double underflow = 2.0 * (scale + 1.0) * (f + 2.0) * 2.0 ** -149
    cdef const int64_t* indptr = &exclude_indptr[0] if exclude_indptr.shape[0] > 0 else NULL
    cdef const int32_t* excl = &exclude_indices[0] if exclude_indices.shape[0] > 0 else NULL
    cdef const uint8_t* mask = &item_mask[0] if item_mask.shape[0] > 0 else NULL
    cdef Py_ssize_t blk, q, q0, nq, r, gi, g, t, j, c, end
    cdef int32_t item
    cdef int lane, b
    cdef double q1, qmax, v
    cdef bint ok
    cdef float* add
    cdef float* thr
    cdef float* heap_lo
    cdef int32_t* heap_id
    cdef float* cand_hi
    cdef int32_t* cand_id
    cdef Py_ssize_t* n_cand
    cdef Py_ssize_t* pos
    cdef float* acc
    cdef int* bits
    cdef int n_failed = 0, n_exact = 0
    with nogil, parallel(num_threads=n_threads):
        add = <float*> malloc(width * sizeof(float))
        thr = <float*> malloc(width * sizeof(float))
        heap_lo = <float*> malloc(width * k * sizeof(float))
        heap_id = <int32_t*> malloc(width * k * sizeof(int32_t))
        cand_hi = <float*> malloc(width * cap * sizeof(float))
        cand_id = <int32_t*> malloc(width * cap * sizeof(int32_t))
        n_cand = <Py_ssize_t*> malloc(width * sizeof(Py_ssize_t))
        pos = <Py_ssize_t*> malloc(width * sizeof(Py_ssize_t))
        acc = <float*> malloc(TH_MAX_GROUP * TH_PAIR * sizeof(float))
        bits = <int*> malloc(TH_MAX_GROUP * sizeof(int))
        try:
            for blk in prange(n_blocks, schedule="dynamic"):
                if (add == NULL or thr == NULL or heap_lo == NULL or heap_id == NULL or cand_hi == NULL
                        or cand_id == NULL or n_cand == NULL or pos == NULL or acc == NULL or bits == NULL):
                    n_failed += 1
                    continue
                q0 = blk * block_queries
                nq = min(block_queries, n - q0)
                for r in range(nq):  # each query's bound terms, or the exact scan
                    q = q0 + r
                    q1 = 0.0
                    qmax = 0.0
                    ok = True
                    for j in range(f):
                        v = query[q, j]
                        ok = ok and v >= 0.0 and v <= 3.4028234663852886e38
                        q1 = q1 + v
                        qmax = max(qmax, v)
                    ok = ok and qmax * score_bound <= SCORE_LIMIT
                    _heap_init(heap_lo + r * k, heap_id + r * k, k)
                    add[r] = <float> (2.0 * 2.0 ** -25 * q1 + underflow) if ok else 0.0
                    thr[r] = -INFINITY if ok else INFINITY  # +inf: no lane ever reaches it
                    n_cand[r] = 0 if ok else -1
                    pos[r] = indptr[q] if indptr != NULL else 0
                for t in range(0, n_tiles, 2):  # a pair of tiles: items 8t .. 8t + 15
                    for gi in range((nq + TH_MAX_GROUP - 1) // TH_MAX_GROUP):
                        g = gi * TH_MAX_GROUP
                        if th_pair(&tiles[t, 0, 0], f, &query[q0 + g, 0], f, min(TH_MAX_GROUP, nq - g),
                                   up, add + g, thr + g, acc, bits) == 0:
                            continue
                        for r in range(g, min(g + TH_MAX_GROUP, nq)):
                            b = bits[r - g]
                            for lane in range(TH_PAIR):
                                item = <int32_t> (t * TH_TILE + lane)
                                if not (b >> lane) & 1 or item >= m or n_cand[r] < 0:  # item >= m: padding
                                    continue
                                if mask != NULL and mask[item]:
                                    continue
                                if indptr != NULL and _excluded(item, excl, &pos[r], indptr[q0 + r + 1]):
                                    continue
                                if not _offer(acc[(r - g) * TH_PAIR + lane], item, up, down, add[r],
                                              &thr[r], heap_lo + r * k, heap_id + r * k, k,
                                              cand_hi + r * cap, cand_id + r * cap, &n_cand[r], cap):
                                    n_cand[r] = -1
                                    thr[r] = INFINITY
                for r in range(nq):  # rescore the candidates still above the final threshold
                    q = q0 + r
                    _heap_init(&scores[q, 0], &ids[q, 0], k)
                    if n_cand[r] < 0:
                        n_exact += 1
                        end = indptr[q + 1] if indptr != NULL else 0
                        _exact_scan(&query[q, 0], &items[0, 0], m, f, mask, excl,
                                    indptr[q] if indptr != NULL else 0, end, &scores[q, 0], &ids[q, 0], k)
                    else:
                        for c in range(n_cand[r]):
                            if cand_hi[r * cap + c] >= thr[r]:
                                item = cand_id[r * cap + c]
                                _push(&scores[q, 0], &ids[q, 0], k,
                                      th_dot(&query[q, 0], &items[item, 0], f), item)
                    _sort_heap(&scores[q, 0], &ids[q, 0], k)
        finally:
            free(add)
            free(thr)
            free(heap_lo)
            free(heap_id)
            free(cand_hi)
            free(cand_id)
            free(n_cand)
            free(pos)
            free(acc)
            free(bits)
    return -1 if n_failed else n_exact
