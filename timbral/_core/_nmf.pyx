# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True, binding=True
"""Projected coordinate-descent row solver for weighted NMF.

One row ``u`` of ``X`` (a user against item factors ``Y``, or an item against
user factors) with observed columns ``i`` and values ``r_i`` solves

    min_{x >= 0}  ½ xᵀ A x − bᵀ x + l1 · Σ x
    A = gram + Σ_i (c_i − beta) y_i y_iᵀ        (gram = beta · YᵀY + l2 · I, symmetric)
        (+ row_l2[u] · I: an optional ridge of the row's own, e.g. frequency-scaled)
    b = Σ_i c_i p_i y_i
    c_i = conf_offset + conf_scale · r_i,   p_i = 1 if target_one else r_i

``A`` is never formed. The solver keeps ``s_i = x · y_i`` for the observed
items and ``Gx = gram · x`` up to date, so ``(A x)_f = Gx_f + Σ_i (c_i − beta) y_if s_i``
and a sweep costs O(n_u · k + k²). ``Gx`` starts as one small GEMM per block of
rows (scipy's BLAS) and is kept in the factors' dtype; x, b, s and A_ff are double.
A weighted row longer than ``LONG_ROW_ENTRIES`` (a popular item's listeners) would
need O(k · n_u) scratch for that, so it forms M = Σ_i (c_i − beta) y_i y_iᵀ instead,
a chunk of entries at a time (BLAS SYRK), and keeps ``Mx``: scratch per thread stays
O(k · LONG_ROW_ENTRIES + k²) whatever the data.
``timbral._reference.solve_rows`` is the NumPy statement of the same computation.
"""

include "_nmf_impl.pxi"
