# The bounded heaps both top-K kernels keep (_topk and _topk_half include this file).
# A heap holds a query's best k as (score, item) pairs, the worst kept at the root.
# Ranking: score descending, ties to the lower item index.

from cython cimport floating
from libc.math cimport INFINITY
from libc.stdint cimport INT32_MAX, int32_t


cdef inline bint _worse(floating a, int32_t ia, floating b, int32_t ib) noexcept nogil:
    # (a, ia) ranks below (b, ib)  <=>  a < b  or  (a == b and ia > ib)
    return a < b or (a == b and ia > ib)


cdef inline void _sift_down(
    floating* hs, int32_t* hi, Py_ssize_t size, Py_ssize_t pos
) noexcept nogil:
    # restore "every parent ranks at or below its children" beneath pos
    cdef floating s = hs[pos]
    cdef int32_t i = hi[pos]
    cdef Py_ssize_t child
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        if child + 1 < size and _worse(hs[child + 1], hi[child + 1], hs[child], hi[child]):
            child += 1  # the worse child must rise
        if not _worse(hs[child], hi[child], s, i):
            break
        hs[pos] = hs[child]
        hi[pos] = hi[child]
        pos = child
    hs[pos] = s
    hi[pos] = i


cdef inline void _heap_init(floating* hs, int32_t* hi, Py_ssize_t k) noexcept nogil:
    # sentinels (-inf, INT32_MAX) lose to every real item, even one scoring -inf
    cdef Py_ssize_t j
    for j in range(k):
        hs[j] = -INFINITY
        hi[j] = INT32_MAX


cdef inline void _push(
    floating* hs, int32_t* hi, Py_ssize_t k, floating s, int32_t i
) noexcept nogil:
    # keep (s, i) when it beats the worst kept: it replaces the root
    if _worse(hs[0], hi[0], s, i):
        hs[0] = s
        hi[0] = i
        _sift_down(hs, hi, k, 0)


cdef inline void _sort_heap(floating* hs, int32_t* hi, Py_ssize_t k) noexcept nogil:
    # heapsort: swap the worst kept to the end, k-1 times -> best first; sentinel id -> -1
    cdef Py_ssize_t end
    cdef floating s
    cdef int32_t i
    for end in range(k - 1, 0, -1):
        s = hs[0]
        i = hi[0]
        hs[0] = hs[end]
        hi[0] = hi[end]
        hs[end] = s
        hi[end] = i
        _sift_down(hs, hi, end, 0)
    for end in range(k):
        if hi[end] == INT32_MAX:
            hi[end] = -1
