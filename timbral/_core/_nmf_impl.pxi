# The row solver's source, compiled twice: _nmf.pyx (portable) and _nmf_avx2.pyx
# (AVX2 + FMA, chosen at import on CPUs that have them). See the modules' docstrings.
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from cython cimport floating, integral
from cython.parallel cimport parallel, prange
from libc.math cimport fabs, sqrt
from scipy.linalg.cython_blas cimport dgemm, dsyrk, sgemm, ssyrk

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define TIMBRAL_PREFETCH(p) __builtin_prefetch((p))
    #else
    #define TIMBRAL_PREFETCH(p) ((void) (p))
    #endif
    """
    void TIMBRAL_PREFETCH(const void* p) noexcept nogil

cdef enum:
    # Rows per dynamic-schedule chunk: rows are cheap (microseconds), lengths power-law.
    CHUNK = 8
    # Rows per block of solve_rows: Gx = X_block · gram is one small GEMM per block.
    BLOCK = 16
    # Entries of one row held in scratch at once. A longer row (an item with more
    # listeners) is read ROW_CHUNK entries at a time into an explicit k × k matrix, so
    # per-thread scratch is O(k · LONG_ROW + k²) whatever the data. The chunked path
    # costs O(k²) per entry (BLAS SYRK) against O(k) for the other, hence large.
    LONG_ROW = 16384
    # Entries per SYRK of a long row: k × ROW_CHUNK values stay in L2.
    ROW_CHUNK = 1024
    # Entries ahead whose factor rows are prefetched while gathering a row.
    AHEAD = 8

#: Rows with more entries than this are solved chunk by chunk (``solve_rows``).
LONG_ROW_ENTRIES = LONG_ROW


cdef inline void _gram_times(
    const floating* X, const floating* gram, floating* out, int n_rows, int k
) noexcept nogil:
    """out (n_rows × k) = X (n_rows × k) · gram (k × k, symmetric), row-major, by BLAS.

    Column-major BLAS sees row-major ``X`` as Xᵀ, so it computes outᵀ = gram · Xᵀ.
    """
    cdef char no = b"N"
    cdef floating one = 1.0, zero = 0.0
    if floating is float:
        sgemm(&no, &no, &k, &n_rows, &k, &one, <float*> gram, &k, <float*> X, &k,
              &zero, out, &k)
    else:
        dgemm(&no, &no, &k, &n_rows, &k, &one, <double*> gram, &k, <double*> X, &k,
              &zero, out, &k)


cdef inline void _add_gram(
    const floating* Z, int m, int k, double sign, floating* Mc, double* M
) noexcept nogil:
    """M (k × k, double) += sign · Zᵀ Z for row-major Z (m × k): one BLAS SYRK into Mc.

    Column-major BLAS sees Z as its k × m transpose Z', so SYRK forms Z' Z'ᵀ; it fills
    the upper triangle of column-major Mc (Mc[f + g k], f ≤ g), mirrored into M here.
    """
    cdef char up = b"U", no = b"N"
    cdef floating one = 1.0, zero = 0.0
    cdef Py_ssize_t f, g
    cdef double v
    if floating is float:
        ssyrk(&up, &no, &k, &m, &one, <float*> Z, &k, &zero, Mc, &k)
    else:
        dsyrk(&up, &no, &k, &m, &one, <double*> Z, &k, &zero, Mc, &k)
    for g in range(k):
        for f in range(g):
            v = sign * Mc[f + g * k]
            M[f + g * k] += v
            M[g + f * k] += v
        M[g + g * k] += sign * Mc[g + g * k]


cdef inline void _prefetch_row(const floating* row, Py_ssize_t k) noexcept nogil:
    """Ask for the cache lines of a factor row before it is read: rows are gathered by
    column index, in an order the hardware prefetcher cannot guess."""
    cdef Py_ssize_t f = 0
    while f < k:
        TIMBRAL_PREFETCH(row + f)
        f += 64 // sizeof(floating)                   # one 64-byte cache line
    TIMBRAL_PREFETCH(row + k - 1)                     # the last line of an unaligned row


cdef inline void _prefetch_head(
    const integral* cols, Py_ssize_t n, const floating* Y, Py_ssize_t k
) noexcept nogil:
    """Prefetch the factor rows of a row's first AHEAD entries (the gather prefetches
    the rest as it goes): called a row ahead, so short rows do not start on a miss."""
    cdef Py_ssize_t j
    for j in range(min(n, <Py_ssize_t> AHEAD)):
        _prefetch_row(Y + <Py_ssize_t> cols[j] * k, k)


cdef inline double _dot_w(
    const double* w, const floating* y, const double* s, Py_ssize_t n
) noexcept nogil:
    """Σ_j w_j · y_j · s_j in eight independent lanes (the compiler packs them into SIMD)."""
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
    cdef double a4 = 0.0, a5 = 0.0, a6 = 0.0, a7 = 0.0
    cdef Py_ssize_t j = 0
    while j + 8 <= n:
        a0 += w[j] * y[j] * s[j]
        a1 += w[j + 1] * y[j + 1] * s[j + 1]
        a2 += w[j + 2] * y[j + 2] * s[j + 2]
        a3 += w[j + 3] * y[j + 3] * s[j + 3]
        a4 += w[j + 4] * y[j + 4] * s[j + 4]
        a5 += w[j + 5] * y[j + 5] * s[j + 5]
        a6 += w[j + 6] * y[j + 6] * s[j + 6]
        a7 += w[j + 7] * y[j + 7] * s[j + 7]
        j += 8
    while j < n:
        a0 += w[j] * y[j] * s[j]
        j += 1
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


cdef inline double _dot(const double* x, const floating* y, Py_ssize_t n) noexcept nogil:
    """Σ_j x_j · y_j in eight independent lanes."""
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
    cdef double a4 = 0.0, a5 = 0.0, a6 = 0.0, a7 = 0.0
    cdef Py_ssize_t j = 0
    while j + 8 <= n:
        a0 += x[j] * y[j]
        a1 += x[j + 1] * y[j + 1]
        a2 += x[j + 2] * y[j + 2]
        a3 += x[j + 3] * y[j + 3]
        a4 += x[j + 4] * y[j + 4]
        a5 += x[j + 5] * y[j + 5]
        a6 += x[j + 6] * y[j + 6]
        a7 += x[j + 7] * y[j + 7]
        j += 8
    while j < n:
        a0 += x[j] * y[j]
        j += 1
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


cdef double _gather_long(
    const integral* cols,
    const floating* r,
    Py_ssize_t n,
    const floating* Y,
    Py_ssize_t k,
    double conf_offset,
    double conf_scale,
    bint target_one,
    double beta,
    double* b,
    double* M,
    floating* chunk,
) noexcept nogil:
    """b += Σ_j c_j p_j y_j and M = Σ_j w_j y_j y_jᵀ (k × k), w_j = c_j − β, of a long row.

    Reads ROW_CHUNK entries at a time into ``chunk`` ((ROW_CHUNK + k) × k values) as
    z_j = √|w_j| y_j, rows with w_j ≥ 0 from the top and w_j < 0 from the bottom,
    so M = Σ_top z_j z_jᵀ − Σ_bottom z_j z_jᵀ: one or two SYRKs per chunk.
    Returns Σ_j c_j p_j² (the loss needs it).
    """
    cdef floating* Z = chunk
    cdef floating* Mc = chunk + ROW_CHUNK * k
    cdef Py_ssize_t first = 0, m, j, f, n_pos, n_neg
    cdef double c, cp, wj, root, cpp = 0.0
    cdef const floating* yrow
    cdef floating* zrow

    for f in range(k * k):
        M[f] = 0.0
    while first < n:
        m = min(<Py_ssize_t> ROW_CHUNK, n - first)
        n_pos = n_neg = 0
        for j in range(first, first + m):
            if j + AHEAD < n:
                _prefetch_row(Y + <Py_ssize_t> cols[j + AHEAD] * k, k)
            c = conf_offset + conf_scale * r[j]       # c_j
            cp = c if target_one else c * r[j]        # c_j · p_j
            cpp += cp if target_one else cp * r[j]
            wj = c - beta                             # weight of y_j y_jᵀ in A
            yrow = Y + <Py_ssize_t> cols[j] * k
            for f in range(k):
                b[f] += cp * yrow[f]                  # b_f += c_j p_j y_jf
            if wj >= 0.0:
                zrow = Z + n_pos * k
                n_pos += 1
            else:
                n_neg += 1
                zrow = Z + (ROW_CHUNK - n_neg) * k
            root = sqrt(fabs(wj))
            for f in range(k):
                zrow[f] = <floating> (root * yrow[f])  # z_j = √|w_j| y_j
        if n_pos > 0:
            _add_gram(Z, <int> n_pos, <int> k, 1.0, Mc, M)
        if n_neg > 0:
            _add_gram(Z + (ROW_CHUNK - n_neg) * k, <int> n_neg, <int> k, -1.0, Mc, M)
        first += m
    return cpp


cdef double _solve_row(
    const integral* cols,
    const floating* r,
    Py_ssize_t n,
    floating* x_out,
    const floating* Y,
    const floating* gram,
    Py_ssize_t k,
    double conf_offset,
    double conf_scale,
    bint target_one,
    double beta,
    double l1,
    double extra_l2,
    int n_sweeps,
    bint weighted,
    bint with_loss,
    double* x,
    floating* gx,
    double* b,
    double* diag,
    double* w,
    double* s,
    double* M,
    double* mx,
    floating* yt,
) noexcept nogil:
    """Coordinate-descent sweeps on one row; ``gx`` holds gram · x on entry.

    ``extra_l2`` is this row's own ridge on top of ``gram``: A = gram + extra_l2 · I + ….

    A row of at most LONG_ROW entries keeps s_j = x · y_j for its entries (``w``,
    ``s`` of n, scratch ``yt`` k × n with row f contiguous, filled here). A longer
    weighted row keeps Mx instead, M = Σ_j (c_j − β) y_j y_jᵀ formed chunk by chunk
    (``_gather_long``), so its scratch does not grow with n. Returns the row's
    observed loss Σ_j c_j (p_j − s_j)² − β s_j² at the new x when ``with_loss``
    (O(n) from the maintained s_j, O(k²) as Σ c_j p_j² − 2 x · b + x · Mx for a
    long row, from b when unweighted), else 0.
    """
    cdef bint long_row = weighted and n > LONG_ROW
    cdef Py_ssize_t j, f, g
    cdef int sweep
    cdef double c, cp, wj, y, ax, new, delta, loss, cpp = 0.0
    cdef floating step
    cdef const floating* yrow
    cdef const floating* grow
    cdef const double* mcol
    cdef floating* ytf

    for f in range(k):
        x[f] = x_out[f]
        b[f] = 0.0
        diag[f] = gram[f * k + f] + extra_l2          # A_ff starts at gram_ff + λ_row
    if long_row:
        cpp = _gather_long(cols, r, n, Y, k, conf_offset, conf_scale, target_one, beta,
                           b, M, yt)
        for f in range(k):
            diag[f] += M[f * k + f]                   # A_ff += M_ff
            mx[f] = 0.0
        for f in range(k):                            # mx = M x, by columns of M
            mcol = M + f * k
            for g in range(k):
                mx[g] += x[f] * mcol[g]
    else:
        for j in range(n):
            if j + AHEAD < n:
                _prefetch_row(Y + <Py_ssize_t> cols[j + AHEAD] * k, k)
            c = conf_offset + conf_scale * r[j]       # c_j = offset + scale · r_j
            cp = c if target_one else c * r[j]        # c_j · p_j
            yrow = Y + <Py_ssize_t> cols[j] * k
            if weighted:                              # (separate loops vectorize)
                wj = c - beta                         # weight of y_j y_jᵀ in A
                for f in range(k):
                    y = yrow[f]
                    b[f] += cp * y                    # b_f += c_j p_j y_jf
                    diag[f] += wj * y * y             # A_ff += (c_j − β) y_jf²
                for f in range(k):
                    yt[f * n + j] = yrow[f]           # gather: yt[f, j] = y_jf
                w[j] = wj
                s[j] = _dot(x, yrow, k)               # s_j = x · y_j
            else:
                for f in range(k):
                    b[f] += cp * yrow[f]
    for f in range(k):                                # 1 / A_ff: no divide in the sweeps
        diag[f] = 1.0 / diag[f] if diag[f] > 0.0 else 0.0
    for sweep in range(n_sweeps):
        for f in range(k):
            if diag[f] == 0.0:                        # A_ff ≤ 0: leave x_f alone
                continue
            ax = gx[f] + extra_l2 * x[f]              # (A x)_f = Gx_f + λ_row x_f + Σ_j w_j y_jf s_j
            ytf = yt + f * n
            if long_row:
                ax += mx[f]                           #         = Gx_f + (M x)_f
            elif weighted:
                ax += _dot_w(w, ytf, s, n)
            new = x[f] - (ax - b[f] + l1) * diag[f]   # x_f − (A x − b + l1)_f / A_ff
            new = new if new > 0.0 else 0.0
            delta = new - x[f]
            if delta != 0.0:
                x[f] = new
                grow = gram + f * k                   # gram symmetric: row f = column f
                step = <floating> delta
                for g in range(k):
                    gx[g] += step * grow[g]           # Gx += δ · gram[:, f]
                if long_row:
                    mcol = M + f * k
                    for g in range(k):
                        mx[g] += delta * mcol[g]      # Mx += δ · M[:, f]
                elif weighted:
                    for j in range(n):
                        s[j] += delta * ytf[j]        # s_j += δ · y_jf
    for f in range(k):
        x_out[f] = <floating> x[f]
    if not with_loss:
        return 0.0
    loss = 0.0
    if long_row:
        # Σ_j c_j p_j² − 2 Σ_j c_j p_j s_j + Σ_j (c_j − β) s_j² = Σ c p² − 2 x · b + x · Mx
        loss = cpp
        for f in range(k):
            loss += x[f] * (mx[f] - 2.0 * b[f])
        return loss
    if weighted:
        for j in range(n):
            y = 1.0 if target_one else r[j]           # p_j
            c = w[j] + beta
            loss += c * (y - s[j]) * (y - s[j]) - beta * s[j] * s[j]
        return loss
    # c = β for every entry: Σ_j c (p_j − s_j)² − β s_j² = Σ_j c p_j² − 2 x · b, O(n + k).
    for j in range(n):
        y = 1.0 if target_one else r[j]
        loss += conf_offset * y * y
    for f in range(k):
        loss -= 2.0 * x[f] * b[f]
    return loss


cdef Py_ssize_t _max_row_length(const integral[::1] indptr) noexcept nogil:
    cdef Py_ssize_t u, longest = 0
    for u in range(indptr.shape[0] - 1):
        if indptr[u + 1] - indptr[u] > longest:
            longest = indptr[u + 1] - indptr[u]
    return longest


def solve_rows(
    const integral[::1] indptr,
    const integral[::1] indices,
    const floating[::1] data,
    floating[:, ::1] X,
    const floating[:, ::1] Y,
    const floating[:, ::1] gram,
    double conf_offset,
    double conf_scale,
    bint target_one,
    double beta,
    double l1,
    int n_sweeps,
    int n_threads,
    double[::1] row_loss=None,
    const double[::1] row_l2=None,
):
    """Projected coordinate descent on every row of ``X``, in place, in parallel.

    Parameters
    ----------
    indptr, indices, data : CSR triplet of the rows × columns matrix (``X`` rows × ``Y`` rows).
    X : (n_rows, k) factors updated in place; each row's current value is the start.
    Y : (n_cols, k) fixed factors.
    gram : (k, k) symmetric ``beta · YᵀY + l2 · I``.
    conf_offset, conf_scale : c = conf_offset + conf_scale · r.
    target_one : p = 1 if true, else p = r.
    beta : weight of every (also unobserved) entry, already inside ``gram``.
    l1 : L1 penalty per coordinate of the row problem.
    n_sweeps : sweeps over coordinates 0 .. k-1:
        x_f ← max(0, x_f − ((A x)_f − b_f + l1) / A_ff), skipping A_ff ≤ 0.
    n_threads : OpenMP threads. Call under ``threadpool_limits(1, "blas")`` (``fit_nmf``
        does): each block of rows starts with one small BLAS GEMM, Gx = X_block · gram.
    row_loss : optional (n_rows,) output: each row's observed loss at its new x,
        row_loss[u] = Σ_j c_j (p_j − s_j)² − beta · s_j²,  s_j = x_u · y_j.
        With ``beta · Σ (XᵀX ∘ YᵀY)`` it completes the data part of the objective
        without another pass over the entries.
    row_l2 : optional (n_rows,) ridge of each row on top of ``gram``: row u solves with
        A + row_l2[u] · I (a per-row λ, e.g. frequency-scaled; ``gram`` then holds
        ``beta · YᵀY`` alone).

    Scratch per thread is O(k · LONG_ROW_ENTRIES + k²) whatever the longest row: at
    most (3k + 2L + k² + k) doubles and (BLOCK · k + k · L) values of the factors'
    dtype, L = LONG_ROW_ENTRIES (16384), BLOCK = 16, for k ≤ 15360. A weighted row
    longer than L is read in chunks into M = Σ_j (c_j − beta) y_j y_jᵀ (BLAS SYRK,
    O(k²) per entry instead of O(k)), then swept on M.
    """
    cdef Py_ssize_t n_rows = X.shape[0], k = X.shape[1]
    cdef bint weighted = not (conf_scale == 0.0 and conf_offset == beta)
    cdef Py_ssize_t longest = _max_row_length(indptr)
    # Entries of one row in scratch at once, and whether some row is read in chunks.
    cdef Py_ssize_t held = min(longest, <Py_ssize_t> LONG_ROW)
    cdef bint chunked = weighted and longest > LONG_ROW
    cdef Py_ssize_t n_blocks = (n_rows + BLOCK - 1) // BLOCK
    cdef Py_ssize_t block, first, last, u, start
    cdef double* buf = NULL
    cdef floating* fbuf = NULL
    cdef bint with_loss = row_loss is not None
    cdef double* loss_out = &row_loss[0] if with_loss and n_rows > 0 else NULL
    cdef const double* extra = &row_l2[0] if row_l2 is not None and n_rows > 0 else NULL
    cdef double loss

    if n_rows == 0:
        return
    with nogil, parallel(num_threads=n_threads):
        # Per thread, in double: x, b, 1/diag (k each), w, s (held each) and, when a
        # row is chunked, M (k × k) and Mx (k). In the factors' dtype: Gx of a block of
        # rows (BLOCK × k), then the gathered y_j of a row (k × held, when observed
        # entries carry weight), also used for a chunk ((ROW_CHUNK + k) × k).
        buf = <double*> PyMem_RawMalloc(
            (3 * k + 2 * held + (k * k + k if chunked else 0) + 1) * sizeof(double)
        )
        fbuf = <floating*> PyMem_RawMalloc(
            (BLOCK * k + (max(held, ROW_CHUNK + k) * k if chunked else k * held if weighted
                          else 0) + 1) * sizeof(floating)
        )
        try:
            for block in prange(n_blocks, schedule="dynamic", chunksize=1):
                if buf == NULL or fbuf == NULL:
                    with gil:
                        raise MemoryError(
                            f"solve_rows: cannot allocate scratch for rows of {held} entries"
                        )
                first = block * BLOCK
                last = min(first + BLOCK, n_rows)
                _gram_times(&X[first, 0], &gram[0, 0], fbuf, <int> (last - first), <int> k)
                _prefetch_head(&indices[0] + indptr[first], indptr[first + 1] - indptr[first],
                               &Y[0, 0], k)
                for u in range(first, last):
                    if u + 1 < last:                  # the next row's first factor rows
                        _prefetch_head(&indices[0] + indptr[u + 1],
                                       indptr[u + 2] - indptr[u + 1], &Y[0, 0], k)
                    start = indptr[u]
                    loss = _solve_row(
                        &indices[0] + start, &data[0] + start, indptr[u + 1] - start,
                        &X[u, 0], &Y[0, 0], &gram[0, 0], k, conf_offset, conf_scale,
                        target_one, beta, l1, extra[u] if extra != NULL else 0.0,
                        n_sweeps, weighted, with_loss, buf,
                        fbuf + (u - first) * k, buf + k, buf + 2 * k, buf + 3 * k,
                        buf + 3 * k + held, buf + 3 * k + 2 * held,
                        buf + 3 * k + 2 * held + k * k, fbuf + BLOCK * k,
                    )
                    if with_loss:
                        loss_out[u] = loss
        finally:
            PyMem_RawFree(buf)
            PyMem_RawFree(fbuf)


def observed_dot(
    const integral[::1] indptr,
    const integral[::1] indices,
    const floating[:, ::1] X,
    const floating[:, ::1] Y,
    floating[::1] out,
    int n_threads,
):
    """Predictions of the stored entries, into ``out`` (nnz,): out[j] = x_u · y_{indices[j]}."""
    cdef Py_ssize_t n_rows = X.shape[0], k = X.shape[1]
    cdef Py_ssize_t u, j, f
    cdef double s
    cdef const floating* x
    cdef const floating* y
    with nogil:
        for u in prange(n_rows, schedule="dynamic", chunksize=CHUNK, num_threads=n_threads):
            x = &X[u, 0]
            for j in range(indptr[u], indptr[u + 1]):
                y = &Y[indices[j], 0]
                s = 0.0
                for f in range(k):
                    s = s + x[f] * y[f]
                out[j] = <floating> s
