"""Frequency-scaled regularisation (issue 9): λ_row = l2 · (m_row / m̄)^ν through fit, fold-in and files."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from timbral import _reference
from timbral.artifact import read_model_dir, write_model_dir
from timbral.exceptions import ArtifactError, ValidationError
from timbral.nmf import NMFModel
from timbral.nmf.fit import LocalBackend, fit_nmf
from timbral.nmf.objective import LOG_EPSILON, RowPenalty, row_masses, weights_of


def plays(n_users: int = 50, n_items: int = 30, seed: int = 0) -> sp.csr_matrix:
    """Play counts with rows and columns of very different lengths (so masses differ)."""
    rng = np.random.default_rng(seed)
    activity = rng.pareto(1.0, n_users)[:, None] + 0.05
    popularity = np.linspace(1.0, 0.05, n_items)[None, :]
    mask = rng.random((n_users, n_items)) < np.clip(activity * popularity, 0.0, 0.9)
    mask[:, 0] = True  # every user has an interaction
    counts = np.floor(rng.pareto(1.5, (n_users, n_items)) * 4) + 1
    return sp.csr_matrix(np.where(mask, counts, 0.0))


def dense_masses(R: sp.csr_matrix, conf: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """m of every user and item from the dense confidence matrix (0 where unobserved)."""
    observed = R.toarray() > 0
    C = np.where(observed, conf, beta)  # c on observed entries, β elsewhere
    return C.sum(axis=1), C.sum(axis=0)


def test_row_masses_are_the_total_entry_weights():
    R = plays()
    w = weights_of("implicit", 2.0)
    scaled = np.log1p(R.data / LOG_EPSILON)
    users, items = row_masses(R.indptr, R.indices, scaled, R.shape, w)
    conf = sp.csr_matrix((1.0 + 2.0 * scaled, R.indices, R.indptr), R.shape).toarray()
    expected_users, expected_items = dense_masses(R, conf, 1.0)
    np.testing.assert_allclose(users, expected_users, rtol=1e-12)
    np.testing.assert_allclose(items, expected_items, rtol=1e-12)
    # Explicit feedback (β = 0, c = 1): ALS-WR's counts.
    users, items = row_masses(R.indptr, R.indices, R.data, R.shape, weights_of("explicit", 1.0))
    np.testing.assert_array_equal(users, np.diff(R.indptr))
    np.testing.assert_array_equal(items, np.bincount(R.indices, minlength=R.shape[1]))


def test_row_penalty_by_hand():
    assert RowPenalty(3.0).of(np.array([1.0, 50.0])).tolist() == [3.0, 3.0]  # ν = 0: the plain ridge
    np.testing.assert_allclose(RowPenalty(3.0, 1.0, 10.0).of(np.array([5.0, 40.0])), [1.5, 12.0])
    np.testing.assert_allclose(RowPenalty(2.0, 0.5, 4.0).of(16.0), 4.0)


@pytest.mark.parametrize("feedback", ["implicit", "explicit"])
def test_fit_minimises_the_frequency_scaled_objective(feedback):
    """The loss history never increases and its last value is the objective, computed here
    from dense matrices with each row's λ = l2 (m / m̄)^ν."""
    R = plays()
    l2, nu, alpha = 0.8, 1.0, 2.0
    result = fit_nmf(R, n_components=4, feedback=feedback, alpha=alpha, confidence="log", l2=l2,
                     frequency_scale=nu, max_iter=25, tol=0.0, rng=np.random.default_rng(0), dtype=np.float64,
                     n_threads=1)
    history = np.array(result.loss_history)
    assert np.all(np.diff(history) <= 1e-9 * np.abs(history[:-1]))
    W, H = result.user_factors, result.item_factors
    assert W.min() >= 0 and H.min() >= 0
    w = weights_of(feedback, alpha)
    if feedback == "implicit":
        conf = 1.0 + alpha * np.log1p(R.toarray())
        users, items = dense_masses(R, conf, w.beta)
        scaled = R.copy()
        scaled.data = np.log1p(scaled.data)
        data_term = _reference.objective(scaled, W, H, conf_offset=1.0, conf_scale=alpha, target_one=True,
                                         beta=1.0, l2=0.0, l1=0.0)
    else:
        users, items = np.diff(R.indptr).astype(float), np.bincount(R.indices, minlength=R.shape[1]).astype(float)
        residual = R.copy()
        coo = R.tocoo()
        residual.data = R.data - result.global_mean - result.user_bias[coo.row] - result.item_bias[coo.col]
        data_term = _reference.objective(residual, W, H, conf_offset=1.0, conf_scale=0.0, target_one=False,
                                         beta=0.0, l2=0.0, l1=0.0)
        data_term += l2 * (np.sum(result.user_bias**2) + np.sum(result.item_bias**2))
    reference = (users.sum() + items.sum()) / (users.size + items.size)
    assert result.reference_mass == pytest.approx(reference, rel=1e-12)
    ridge = l2 * ((users / reference) ** nu @ np.sum(W * W, axis=1) + (items / reference) ** nu @ np.sum(H * H, axis=1))
    assert history[-1] == pytest.approx(data_term + ridge, rel=1e-9)


def test_fold_in_solves_the_row_with_its_own_lambda():
    """A new user's factors meet the KKT conditions of their row problem with λ_u = l2 (m_u / m̄)^ν."""
    R = plays()
    model = NMFModel(n_components=4, regularization=2.0, frequency_scale=1.0, max_iter=40, n_threads=1).fit(R)
    assert model.frequency_scale_ == 1.0
    items, counts = np.array([0, 3, 7, 8]), np.array([12.0, 1.0, 3.0, 40.0])
    x = model.fold_in(items, counts).astype(np.float64)
    H = model.item_factors_.astype(np.float64)
    c = 1.0 + np.log1p(counts)
    train_conf = 1.0 + np.log1p(R.toarray())
    users, item_masses = dense_masses(R, train_conf, 1.0)
    reference = (users.sum() + item_masses.sum()) / (users.size + item_masses.size)
    lam = 2.0 * (c.sum() + (R.shape[1] - items.size)) / reference
    A = H.T @ H + (H[items] * (c - 1.0)[:, None]).T @ H[items] + lam * np.eye(4)
    grad = A @ x - H[items].T @ c
    np.testing.assert_allclose(grad[x > 0], 0.0, atol=1e-3)
    assert np.all(grad[x == 0] >= -1e-3)
    # A training user's history gives back (about) the factors the fit learnt for them.
    row = R[5]
    np.testing.assert_allclose(model.fold_in(row.indices, row.data), model.user_factors_[5], atol=0.05)
    explanation = model.explain(5, 2)
    assert np.isfinite(explanation.score) and explanation.items


def test_nu_zero_is_the_plain_ridge():
    R = plays()
    plain = NMFModel(n_components=4, regularization=1.5, max_iter=10, n_threads=1).fit(R)
    zero = NMFModel(n_components=4, regularization=1.5, frequency_scale=0.0, max_iter=10, n_threads=1).fit(R)
    np.testing.assert_array_equal(plain.user_factors_, zero.user_factors_)
    scaled = NMFModel(n_components=4, regularization=1.5, frequency_scale=1.0, max_iter=10, n_threads=1).fit(R)
    assert not np.allclose(plain.item_factors_, scaled.item_factors_)


class _NoRowRidge(LocalBackend):
    supports_row_l2 = False


def test_a_backend_without_row_ridges_is_refused():
    with pytest.raises(ValidationError, match=r"_NoRowRidge backend cannot fit frequency_scale=0.5 .*"
                                              r"pass frequency_scale=0"):
        fit_nmf(plays(), n_components=2, frequency_scale=0.5, rng=np.random.default_rng(0), backend=_NoRowRidge())


def test_auto_nu_keeps_the_plain_ridge_on_a_backend_without_row_ridges(monkeypatch):
    """frequency_scale="auto" is the default: where the search would choose ν = 1 (here made the
    protected value, so it wins), a backend that cannot fit it gets ν = 0 and no ν search, not an error."""
    from timbral import tuning

    monkeypatch.setitem(tuning.DEFAULTS, "frequency_scale", 1.0)
    R = plays(120, 60)
    local = NMFModel(n_components=3, confidence="log", max_iter=20, n_threads=1).fit(R)
    assert local.frequency_scale_ == 1.0
    remote = NMFModel(n_components=3, confidence="log", max_iter=20, n_threads=1).fit(R, backend=_NoRowRidge())
    assert remote.frequency_scale_ == 0.0 and {row["frequency_scale"] for row in remote.search_results_} == {0.0}
    assert remote.get_params()["frequency_scale"] == "auto"


@pytest.mark.parametrize("value", [-0.5, 2.5, "AUTO", float("nan"), True])
def test_bad_frequency_scales_are_refused(value):
    with pytest.raises(ValidationError, match=r"`frequency_scale` must be"):
        NMFModel(frequency_scale=value).fit(plays())


def test_frequency_scale_round_trips_and_hostile_values_are_refused(tmp_path):
    R = plays()
    model = NMFModel(n_components=3, regularization=1.0, frequency_scale=0.5, max_iter=10, n_threads=1).fit(R)
    path = model.save(tmp_path / "m")
    loaded = NMFModel.load(path)
    assert loaded.frequency_scale_ == 0.5
    np.testing.assert_allclose(loaded.fold_in([1, 2], [3.0, 1.0]), model.fold_in([1, 2], [3.0, 1.0]))
    artifact = read_model_dir(path)
    # A directory written before the frequency-scaled ridge: the plain one.
    del artifact.metadata["fit"]["frequency_scale"]
    for params in (artifact.metadata["fit"]["params"], artifact.metadata["params"]):
        del params["frequency_scale"]
    write_model_dir(path, artifact)
    assert NMFModel.load(path).frequency_scale_ == 0.0
    for hostile in (1e308, -1.0, "0.5; rm -rf /", [1.0]):
        artifact.metadata["fit"]["frequency_scale"] = hostile
        write_model_dir(path, artifact)
        with pytest.raises(ArtifactError, match=r"`frequency_scale` must be a number in \[0, 2\]"):
            NMFModel.load(path)
