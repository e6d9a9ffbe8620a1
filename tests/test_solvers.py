"""fit_nmf and fold_in: invariants, references (NumPy, scipy NNLS, scikit-learn)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import nnls

from timbral import _reference
from timbral.exceptions import ConvergenceWarning, ValidationError
from timbral.nmf.fit import SolveSettings, fit_nmf, fold_in, half_step, triplet
from timbral.nmf.init import init_factors
from timbral.nmf.objective import bm25_stats, confidence_data, weights_of


def _counts(n_users=40, n_items=30, density=0.25, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    R = sp.random(n_users, n_items, density=density, format="csr", random_state=seed, dtype=dtype)
    R.data[:] = rng.integers(1, 20, R.nnz)
    R.sort_indices()
    return R


def _fit(R, **kw):
    """A float64 fit; one thread unless asked (many tiny iterations: no fork/join waits)."""
    params = dict(n_components=4, feedback="implicit", alpha=2.0, confidence="linear", l2=0.1,
                  l1=0.0, max_iter=30, tol=1e-12, rng=np.random.default_rng(0), init="random",
                  n_threads=1, dtype=np.float64)
    params.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit_nmf(R, **params)


def _reference_objective(R, res, feedback, alpha, confidence, l2, l1):
    """The full objective from _reference.objective on the kernel's (r', p) data."""
    w = weights_of(feedback, alpha)
    if feedback == "implicit":
        data = confidence_data(R, confidence, R.dtype, bm25_stats(R))
    elif feedback == "explicit":
        rows = np.repeat(np.arange(R.shape[0]), np.diff(R.indptr))
        data = R.data - res.global_mean - res.user_bias[rows] - res.item_bias[R.indices]
    else:
        data = R.data
    P = sp.csr_matrix((data, R.indices, R.indptr), R.shape)
    loss = _reference.objective(P, res.user_factors, res.item_factors,
                                conf_offset=w.conf_offset, conf_scale=w.conf_scale,
                                target_one=w.target_one, beta=w.beta, l2=l2, l1=l1)
    return loss + l2 * (res.user_bias @ res.user_bias + res.item_bias @ res.item_bias)


@pytest.mark.parametrize(
    "feedback, confidence, l1",
    [("implicit", "linear", 0.0), ("implicit", "log", 0.5), ("implicit", "bm25", 0.0),
     ("explicit", "linear", 0.0), ("explicit", "linear", 0.5), ("frobenius", "linear", 0.0)],
)
def test_objective_never_increases_and_matches_the_reference(feedback, confidence, l1):
    R = _counts()
    history = []
    res = _fit(R, feedback=feedback, confidence=confidence, l1=l1,
               callback=lambda it, loss: history.append((it, loss)))
    assert history == list(enumerate(res.loss_history, start=1))
    losses = np.array(res.loss_history)
    assert np.all(np.diff(losses) <= 1e-10 * np.abs(losses[:-1]))
    expected = _reference_objective(R, res, feedback, 2.0, confidence, 0.1, l1)
    np.testing.assert_allclose(losses[-1], expected, rtol=1e-9)
    assert np.all(res.user_factors >= 0) and np.all(res.item_factors >= 0)


def test_explicit_biases_follow_the_ratings():
    R = _counts()
    rows = np.repeat(np.arange(R.shape[0]), np.diff(R.indptr))
    R.data += 3.0 * (rows % 2)  # odd users rate 3 stars higher
    res = _fit(R, feedback="explicit")
    assert res.global_mean == pytest.approx(R.data.mean())
    assert res.user_bias[1::2].mean() - res.user_bias[::2].mean() > 2.0
    assert res.item_bias.shape == (R.shape[1],)


def test_sparse_arrays_fit_like_sparse_matrices():
    R = _counts()
    a, b = _fit(R, max_iter=3), _fit(sp.csr_array(R), max_iter=3)
    np.testing.assert_array_equal(a.user_factors, b.user_factors)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)


def test_float32_by_default_and_float64_on_request():
    R = _counts(dtype=np.float64)
    res = _fit(R, dtype=np.float32, max_iter=3)
    for F in (res.user_factors, res.item_factors):
        assert F.dtype == np.float32 and F.flags.c_contiguous
    res64 = _fit(R, max_iter=3)
    assert res64.user_factors.dtype == np.float64
    np.testing.assert_allclose(res.user_factors, res64.user_factors, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("feedback", ["implicit", "frobenius"])
def test_kkt_conditions_hold_at_convergence(feedback):
    R = _counts(n_users=25, n_items=20, density=0.3)
    l2 = 1.0
    res = _fit(R, feedback=feedback, n_components=3, max_iter=3000, tol=1e-12, n_sweeps=5, l2=l2)
    assert res.converged
    W, H = res.user_factors, res.item_factors
    weight = np.ones(R.shape)
    target = np.zeros(R.shape)
    coo = R.tocoo()
    if feedback == "implicit":
        weight[coo.row, coo.col] = 1.0 + 2.0 * coo.data
        target[coo.row, coo.col] = 1.0
    else:
        target[coo.row, coo.col] = coo.data
    E = weight * (target - W @ H.T)
    B = weight * target  # 2 B H is the gradient's data term at W = 0
    for X, grad, scale in ((W, -2 * E @ H + 2 * l2 * W, np.abs(2 * B @ H).max()),
                           (H, -2 * E.T @ W + 2 * l2 * H, np.abs(2 * B.T @ W).max())):
        assert np.all(grad[X == 0] >= -1e-4 * scale)
        assert np.all(np.abs(grad[X > 0]) <= 1e-4 * scale)


def test_same_seed_same_factors_and_threads_do_not_matter():
    R = _counts(n_users=200, n_items=80, density=0.1)
    a, b = _fit(R, max_iter=5, n_threads=2), _fit(R, max_iter=5, n_threads=2)
    np.testing.assert_array_equal(a.user_factors, b.user_factors)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    assert a.loss_history == b.loss_history
    one = _fit(R, max_iter=5, n_threads=1)
    np.testing.assert_allclose(one.user_factors, a.user_factors, rtol=1e-12)
    c = _fit(R, max_iter=5, rng=np.random.default_rng(1))
    assert not np.allclose(c.user_factors, a.user_factors)


@pytest.mark.parametrize("init", ["random", "nndsvd"])
def test_frobenius_fits_at_least_as_well_as_scikit_learn_cd(init):
    NMF = pytest.importorskip("sklearn.decomposition").NMF
    R = _counts(n_users=60, n_items=45, density=0.2)
    k, n_iter = 5, 25
    W0, H0 = init_factors(R, k, init, np.random.default_rng(3), np.dtype(np.float64))
    res = _fit(R, feedback="frobenius", n_components=k, max_iter=n_iter, l2=0.0, init=init,
               rng=np.random.default_rng(3), n_sweeps=1)
    sk = NMF(n_components=k, solver="cd", init="custom", max_iter=n_iter, tol=0.0,
             shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's own ConvergenceWarning
        W_sk = sk.fit_transform(R, W=W0.copy(), H=H0.T.copy())
    ours = np.linalg.norm(R.toarray() - res.user_factors @ res.item_factors.T)
    assert ours <= sk.reconstruction_err_ * (1 + 1e-6)
    # Same init, same coordinate order, one sweep: the very same iterates.
    np.testing.assert_allclose(res.user_factors, W_sk, rtol=1e-6, atol=1e-8)


def test_explicit_half_step_solves_each_row_by_nnls():
    rng = np.random.default_rng(5)
    R = _counts(n_users=12, n_items=15, density=0.4)
    R.data[:] = rng.normal(size=R.nnz)  # residual targets: either sign
    Y = rng.random((15, 4))
    l2 = 0.3
    X = np.zeros((12, 4))
    half_step(triplet(R, R.data), X, Y, l2 * np.eye(4), SolveSettings(weights_of("explicit", 1.0), 0.0, 400), 2)
    for u in range(12):
        cols = R.indices[R.indptr[u]:R.indptr[u + 1]]
        p = R.data[R.indptr[u]:R.indptr[u + 1]]
        A = np.vstack([Y[cols], np.sqrt(l2) * np.eye(4)])
        x, _ = nnls(A, np.concatenate([p, np.zeros(4)]))
        np.testing.assert_allclose(X[u], x, atol=1e-8)


@pytest.mark.parametrize(
    "feedback, confidence",
    [("implicit", "linear"), ("implicit", "log"), ("implicit", "bm25"), ("explicit", "linear"),
     ("frobenius", "linear")],
)
def test_fold_in_equals_one_row_of_a_half_step(feedback, confidence):
    R = _counts()
    rng = np.random.default_rng(1)
    H = rng.random((R.shape[1], 4))
    item_bias = rng.normal(size=R.shape[1])
    mu, l2, l1 = 2.5, 0.2, 0.1
    w = weights_of(feedback, 3.0)
    stats = bm25_stats(R)
    if feedback == "implicit":
        data = confidence_data(R, confidence, R.dtype, stats)
    elif feedback == "explicit":
        data = R.data - mu - item_bias[R.indices]
    else:
        data = R.data
    X = np.zeros((R.shape[0], 4))
    gram = w.beta * H.T @ H + l2 * np.eye(4)
    half_step(triplet(R, data), X, H, gram, SolveSettings(w, l1, 30), 2)
    for u in (0, 7, 21):
        row = R[u]
        x = fold_in(H, row.indices, row.data, feedback=feedback, alpha=3.0, confidence=confidence,
                    l2=l2, l1=l1, global_mean=mu, item_bias=item_bias, n_sweeps=30, bm25=stats)
        np.testing.assert_allclose(x, X[u], rtol=1e-12, atol=1e-14)


def test_fold_in_sums_repeated_items_and_defaults_weights_to_one():
    H = np.random.default_rng(0).random((10, 3)).astype(np.float32)
    once = fold_in(H, [2, 5, 5], None, l2=0.1)
    twice = fold_in(H, [2, 5], [1.0, 2.0], l2=0.1)
    assert once.dtype == np.float32 and once.shape == (3,)
    np.testing.assert_array_equal(once, twice)


def test_fold_in_bm25_needs_the_fit_statistics():
    H = np.ones((5, 2))
    with pytest.raises(ValidationError, match="bm25=FitResult.bm25"):
        fold_in(H, [1], [3.0], confidence="bm25")


def test_convergence_warning_at_max_iter_and_none_once_converged():
    R = _counts()
    with pytest.warns(ConvergenceWarning, match="Raise max_iter"):
        fit_nmf(R, n_components=3, max_iter=2, tol=1e-12, rng=np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fit_nmf(R, n_components=3, max_iter=500, tol=1e-3, rng=np.random.default_rng(0))
    assert res.converged and res.n_iter < 500


def test_non_finite_loss_raises_with_a_fix():
    R = _counts()
    R.data[0] = np.inf
    with pytest.raises(ValidationError, match="diverged.*Lower alpha"):
        fit_nmf(R, n_components=3, max_iter=3, rng=np.random.default_rng(0))


@pytest.mark.parametrize(
    "kw, match",
    [({"feedback": "ratings"}, "`feedback` must be one of 'implicit', 'explicit', 'frobenius'; got 'ratings'"),
     ({"confidence": "sqrt"}, "`confidence` must be one of 'linear', 'log', 'bm25'; got 'sqrt'"),
     ({"init": "svd"}, "`init` must be one of 'random', 'nndsvd'; got 'svd'"),
     ({"init": "nndsvd", "n_components": 40}, "n_components < min")],
)
def test_bad_arguments_name_the_argument(kw, match):
    params = dict(n_components=3, rng=np.random.default_rng(0)) | kw
    with pytest.raises(ValidationError, match=match):
        fit_nmf(_counts(), **params)
