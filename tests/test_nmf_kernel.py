"""The compiled row solver and loss kernels against the NumPy reference."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp

from timbral import _reference
from timbral._core import _cpu_has, _nmf

# Every build of the row solver this machine can run: the portable one, and the
# AVX2 + FMA one that timbral._core picks on CPUs that have them.
KERNELS = [pytest.param(_nmf, id="portable")]
try:
    from timbral._core import _nmf_avx2
except ImportError:  # the compiler could not build it
    pass
else:
    if _cpu_has("AVX2", "FMA3"):
        KERNELS.append(pytest.param(_nmf_avx2, id="avx2"))


@pytest.fixture(params=KERNELS)
def kernels(request):
    return request.param

# (conf_offset, conf_scale, target_one, beta) for implicit, explicit and frobenius.
FEEDBACK = {
    "implicit": (1.0, 2.0, True, 1.0),
    "explicit": (1.0, 0.0, False, 0.0),
    "frobenius": (1.0, 0.0, False, 1.0),
}
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}


def _problem(dtype, n_rows=40, n_cols=30, k=6, density=0.2, seed=0, empty_rows=(3, 17)):
    rng = np.random.default_rng(seed)
    R = sp.random(n_rows, n_cols, density=density, format="csr", random_state=seed, dtype=dtype)
    R.data[:] = rng.integers(1, 6, R.nnz)
    R = R.tolil()
    for u in empty_rows:
        R[u, :] = 0
    R = R.tocsr()
    R.eliminate_zeros()
    R.sort_indices()
    X = rng.random((n_rows, k)).astype(dtype)
    Y = rng.random((n_cols, k)).astype(dtype)
    return R, X, Y


def _gram(Y, beta, l2):
    return (beta * (Y.T @ Y) + l2 * np.eye(Y.shape[1])).astype(Y.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("feedback", sorted(FEEDBACK))
@pytest.mark.parametrize("l1", [0.0, 0.3])
@pytest.mark.parametrize("n_sweeps", [1, 4])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_solve_rows_matches_reference(kernels, dtype, feedback, l1, n_sweeps, n_threads):
    offset, scale, target_one, beta = FEEDBACK[feedback]
    R, X, Y = _problem(dtype)
    gram = _gram(Y, beta, l2=0.1)
    expected = X.copy()
    _reference.solve_rows(
        R, expected, Y, gram, conf_offset=offset, conf_scale=scale,
        target_one=target_one, beta=beta, l1=l1, n_sweeps=n_sweeps,
    )
    got = X.copy()
    kernels.solve_rows(
        R.indptr, R.indices, R.data, got, Y, gram, offset, scale, target_one, beta, l1,
        n_sweeps, n_threads,
    )
    assert got.dtype == dtype
    assert np.all(got >= 0)
    np.testing.assert_allclose(got, expected, **TOL[dtype])


def test_empty_rows_get_the_gram_only_solve(kernels):
    R, X, Y = _problem(np.float64)
    gram = _gram(Y, 1.0, 0.1)
    got = X.copy()
    kernels.solve_rows(R.indptr, R.indices, R.data, got, Y, gram, 1.0, 2.0, True, 1.0, 0.0, 3, 2)
    # b = 0 and gram ≥ 0 elementwise: projected CD drives an empty row to zero (to rounding).
    np.testing.assert_allclose(got[[3, 17]], 0.0, atol=1e-12)
    # With beta = 0 and l2 = 0 the row problem is empty: A_ff = 0, the row is left alone.
    kept = X.copy()
    zero = np.zeros_like(gram)
    kernels.solve_rows(R.indptr, R.indices, R.data, kept, Y, zero, 1.0, 0.0, False, 0.0, 0.0, 3, 2)
    np.testing.assert_array_equal(kept[[3, 17]], X[[3, 17]])


def test_int64_indices_and_more_threads_than_rows(kernels):
    R, X, Y = _problem(np.float64, n_rows=3, empty_rows=())
    gram = _gram(Y, 1.0, 0.1)
    expected = X.copy()
    _reference.solve_rows(R, expected, Y, gram, conf_offset=1.0, conf_scale=1.0,
                          target_one=True, beta=1.0, l1=0.0, n_sweeps=2)
    got = X.copy()
    kernels.solve_rows(R.indptr.astype(np.int64), R.indices.astype(np.int64), R.data, got, Y,
                    gram, 1.0, 1.0, True, 1.0, 0.0, 2, 8)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("feedback", sorted(FEEDBACK))
def test_row_loss_completes_the_reference_objective(kernels, dtype, feedback):
    offset, scale, target_one, beta = FEEDBACK[feedback]
    R, W, H = _problem(dtype)
    gram = _gram(H, beta, l2=0.1)
    row_loss = np.full(R.shape[0], np.nan)
    kernels.solve_rows(R.indptr, R.indices, R.data, W, H, gram, offset, scale, target_one, beta,
                    0.0, 2, 2, row_loss)
    W64, H64 = W.astype(np.float64), H.astype(np.float64)
    total = beta * np.sum((W64.T @ W64) * (H64.T @ H64)) + row_loss.sum()
    expected = _reference.objective(R, W, H, conf_offset=offset, conf_scale=scale,
                                    target_one=target_one, beta=beta, l2=0.0, l1=0.0)
    np.testing.assert_allclose(total, expected, rtol=1e-5 if dtype == np.float32 else 1e-10)


def test_observed_dot_is_the_score_of_each_stored_entry(kernels):
    R, W, H = _problem(np.float32)
    out = np.empty(R.nnz, np.float32)
    kernels.observed_dot(R.indptr, R.indices, W, H, out, 2)
    coo = R.tocoo()
    np.testing.assert_allclose(out, np.sum(W[coo.row] * H[coo.col], axis=1), rtol=1e-6)


def _rows_of_length(lengths, n_cols, dtype, k, seed=0):
    """CSR with rows of the given lengths (distinct random columns, values 1..5), X and Y."""
    rng = np.random.default_rng(seed)
    cols = [np.sort(rng.choice(n_cols, n, replace=False)) for n in lengths]
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    indices = np.concatenate(cols).astype(np.int32)
    data = rng.integers(1, 6, indices.size).astype(dtype)
    R = sp.csr_matrix((data, indices, indptr), shape=(len(lengths), n_cols))
    X = rng.random((len(lengths), k)).astype(dtype)
    Y = rng.random((n_cols, k)).astype(dtype)
    return R, X, Y


def _observed_loss(R, X, Y, offset, scale, target_one, beta):
    """Σ_j c_j (p_j − s_j)² − beta · s_j² of each row, s = X Yᵀ, from the reference."""
    coo = R.tocoo()
    c, p = _reference.confidence_and_target(coo.data, conf_offset=offset, conf_scale=scale,
                                            target_one=target_one)
    s = np.sum(X.astype(np.float64)[coo.row] * Y.astype(np.float64)[coo.col], axis=1)
    return np.bincount(coo.row, c * (p - s) ** 2 - beta * s * s, minlength=R.shape[0])


# Every feedback kind, and weights c − beta of both signs (the chunked path splits them).
LONG_ROW_CASES = {**FEEDBACK, "mixed_sign_weights": (1.0, 1.0, True, 3.0)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(LONG_ROW_CASES))
@pytest.mark.parametrize("n_sweeps", [1, 3])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_rows_longer_than_a_chunk_match_the_reference(kernels, dtype, case, n_sweeps, n_threads):
    """Issue 10.14: a row longer than the scratch is read in chunks, with the same result."""
    long = kernels.LONG_ROW_ENTRIES
    offset, scale, target_one, beta = LONG_ROW_CASES[case]
    # Twice the limit and a bit, one entry over, exactly at the limit, empty, short.
    R, X, Y = _rows_of_length([2 * long + 500, long + 1, long, 0, 7], 2 * long + 600, dtype, k=6)
    gram = _gram(Y, beta, l2=0.1)
    expected = X.copy()
    _reference.solve_rows(R, expected, Y, gram, conf_offset=offset, conf_scale=scale,
                          target_one=target_one, beta=beta, l1=0.2, n_sweeps=n_sweeps)
    got = X.copy()
    row_loss = np.full(R.shape[0], np.nan)
    kernels.solve_rows(R.indptr, R.indices, R.data, got, Y, gram, offset, scale, target_one,
                       beta, 0.2, n_sweeps, n_threads, row_loss)
    np.testing.assert_allclose(got, expected, **TOL[dtype])
    np.testing.assert_allclose(
        row_loss, _observed_loss(R, got, Y, offset, scale, target_one, beta),
        rtol=1e-4 if dtype == np.float32 else 1e-9, atol=1e-6,
    )


@pytest.mark.parametrize("n_threads", [1, 2])
def test_scratch_is_bounded_whatever_the_longest_row(kernels, n_threads):
    """Issue 10.14: per-thread scratch is O(k · LONG_ROW_ENTRIES + k²), not O(k · longest).

    The kernel allocates through ``PyMem_RawMalloc``, which tracemalloc traces, so the
    peak is exact (no RSS noise). Before chunking this row needed k · n values per thread.
    """
    long, k = kernels.LONG_ROW_ENTRIES, 16
    R, X, Y = _rows_of_length([16 * long, 3, long // 2], 16 * long, np.float64, k)
    gram = _gram(Y, 1.0, 0.1)
    expected = X.copy()
    _reference.solve_rows(R, expected, Y, gram, conf_offset=1.0, conf_scale=2.0,
                          target_one=True, beta=1.0, l1=0.0)
    tracemalloc.start()
    try:
        kernels.solve_rows(R.indptr, R.indices, R.data, X, Y, gram, 1.0, 2.0, True, 1.0, 0.0,
                           1, n_threads)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The documented bound: (3k + 2L + k² + k) doubles and (16k + k·L) values per thread.
    bound = n_threads * 8 * ((4 * k + 2 * long + k * k) + (16 * k + k * long))
    assert peak <= bound + 16_384  # + Python's own small allocations during the call
    assert 8 * k * R.indptr[1] > 10 * bound / n_threads  # what the unchunked row needed
    np.testing.assert_allclose(X, expected, **TOL[np.float64])


# -- per-row ridge (frequency-scaled regularisation) -------------------------------------


def test_row_l2_is_each_rows_own_ridge_by_hand(kernels):
    """k = 1, one entry per row: x_u = b / (β Σ_i y_i² + (c − β) y_j² + λ_u), computed by hand.

    Y = [2, 1]; row 0 observes item 0 with r = 3 (c = 1 + 2·3 = 7), row 1 item 1 with
    r = 1 (c = 3); β = 1, so β YᵀY = 5. Row 0: 14 / (5 + 6·4 + 6) = 0.4; row 1:
    3 / (5 + 2·1 + 3) = 0.3.
    """
    R = sp.csr_matrix(np.array([[3.0, 0.0], [0.0, 1.0]]))
    Y = np.array([[2.0], [1.0]])
    X = np.ones((2, 1))
    kernels.solve_rows(R.indptr, R.indices, R.data, X, Y, Y.T @ Y, 1.0, 2.0, True, 1.0, 0.0, 1, 1,
                       None, np.array([6.0, 3.0]))
    np.testing.assert_allclose(X[:, 0], [0.4, 0.3], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("feedback", sorted(FEEDBACK))
@pytest.mark.parametrize("n_threads", [1, 2])
def test_row_l2_matches_the_reference(kernels, dtype, feedback, n_threads):
    offset, scale, target_one, beta = FEEDBACK[feedback]
    R, X, Y = _problem(dtype)
    gram = _gram(Y, beta, l2=0.0)
    row_l2 = np.random.default_rng(1).uniform(0.0, 5.0, R.shape[0])
    expected = X.copy()
    _reference.solve_rows(R, expected, Y, gram, conf_offset=offset, conf_scale=scale, target_one=target_one,
                          beta=beta, l1=0.1, n_sweeps=3, row_l2=row_l2)
    got = X.copy()
    kernels.solve_rows(R.indptr, R.indices, R.data, got, Y, gram, offset, scale, target_one, beta, 0.1, 3,
                       n_threads, None, row_l2)
    np.testing.assert_allclose(got, expected, **TOL[dtype])


def test_row_l2_converges_to_the_exact_nonnegative_solve(kernels):
    """Many sweeps reach the KKT point of min_{x ≥ 0} ½ xᵀ(A + λ_u I)x − bᵀx, with A and b
    formed densely here: the gradient vanishes where x > 0 and is ≥ 0 where x = 0."""
    offset, scale, target_one, beta = FEEDBACK["implicit"]
    R, X, Y = _problem(np.float64, empty_rows=())
    row_l2 = np.linspace(0.5, 20.0, R.shape[0])
    kernels.solve_rows(R.indptr, R.indices, R.data, X, Y, _gram(Y, beta, 0.0), offset, scale, target_one,
                       beta, 0.0, 500, 2, None, row_l2)
    for u in range(R.shape[0]):
        cols, r = R.indices[R.indptr[u]:R.indptr[u + 1]], R.data[R.indptr[u]:R.indptr[u + 1]]
        c = offset + scale * r
        A = beta * Y.T @ Y + (Y[cols] * (c - beta)[:, None]).T @ Y[cols] + row_l2[u] * np.eye(Y.shape[1])
        grad = A @ X[u] - Y[cols].T @ c
        np.testing.assert_allclose(grad[X[u] > 0], 0.0, atol=1e-9)
        assert np.all(grad[X[u] == 0] >= -1e-9)


def test_a_constant_row_l2_equals_the_ridge_in_the_gram(kernels):
    R, X, Y = _problem(np.float64)
    in_gram, per_row = X.copy(), X.copy()
    kernels.solve_rows(R.indptr, R.indices, R.data, in_gram, Y, _gram(Y, 1.0, 2.5), 1.0, 2.0, True, 1.0,
                       0.0, 2, 2)
    kernels.solve_rows(R.indptr, R.indices, R.data, per_row, Y, _gram(Y, 1.0, 0.0), 1.0, 2.0, True, 1.0,
                       0.0, 2, 2, None, np.full(R.shape[0], 2.5))
    np.testing.assert_allclose(per_row, in_gram, rtol=1e-10, atol=1e-12)
