"""Training on a Dask cluster gives what one machine gives."""

import numpy as np
import pytest
import scipy.sparse as sp

distributed = pytest.importorskip("distributed")

from dask_support import local_client  # noqa: E402

from timbral import NMFModel  # noqa: E402
from timbral.distributed import fit_distributed  # noqa: E402
from timbral.exceptions import ValidationError  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with local_client() as client:
        yield client


def plays(seed=0):
    matrix = sp.random(300, 200, density=0.05, random_state=seed, format="csr", dtype=np.float32)
    matrix.data = np.ceil(matrix.data * 30)
    return matrix


@pytest.mark.parametrize(
    "params",
    [
        {"feedback": "implicit", "alpha": 2.0},
        {"feedback": "implicit", "confidence": "bm25"},
        {"feedback": "frobenius", "l1_ratio": 0.5},
    ],
)
def test_sharded_fit_equals_the_single_machine_fit(client, params):
    matrix = plays()
    settings = dict(n_components=6, max_iter=6, tol=0, random_state=3, n_threads=1, regularization=0.1)
    local = NMFModel(**settings, **params).fit(matrix)
    sharded = fit_distributed(NMFModel(**settings, **params), matrix, client, n_shards=3)
    np.testing.assert_allclose(sharded.loss_history_, local.loss_history_, rtol=1e-4)
    np.testing.assert_allclose(sharded.user_factors_, local.user_factors_, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(sharded.item_factors_, local.item_factors_, rtol=1e-3, atol=1e-4)
    assert np.all(np.diff(sharded.loss_history_) <= 1e-5 * abs(sharded.loss_history_[0]))
    ids, _ = sharded.recommend(0, k=5)
    assert not set(ids) & set(matrix[0].indices)


def test_auto_values_are_settled_by_the_same_search(client):
    """A sharded fit of "auto" parameters chooses what the local fit chooses, and then fits the same."""
    matrix = plays()
    settings = dict(n_components=4, max_iter=6, tol=0, random_state=3, n_threads=1, confidence="auto")
    local = NMFModel(**settings, frequency_scale=0).fit(matrix)  # "auto" ν keeps the plain ridge on shards
    sharded = fit_distributed(NMFModel(**settings), matrix, client, n_shards=3)
    assert sharded.frequency_scale_ == 0.0 and sharded.get_params()["frequency_scale"] == "auto"
    assert local.search_results_ and [row["regularization"] for row in sharded.search_results_] == [
        row["regularization"] for row in local.search_results_
    ]
    assert (sharded.regularization_, sharded.confidence_) == (local.regularization_, local.confidence_)
    np.testing.assert_allclose(sharded.loss_history_, local.loss_history_, rtol=1e-4)
    np.testing.assert_allclose(sharded.item_factors_, local.item_factors_, rtol=1e-3, atol=1e-4)


def test_explicit_is_refused_with_advice(client):
    with pytest.raises(ValidationError, match=r"supports feedback .* got 'explicit'. Fit explicit"):
        fit_distributed(NMFModel(feedback="explicit"), plays(), client)


def test_bad_shard_count(client):
    with pytest.raises(ValidationError, match=r"`n_shards` must be a positive integer; got 0"):
        fit_distributed(NMFModel(n_components=2), plays(), client, n_shards=0)


def test_worker_processes_get_the_same_answer():
    """Shards and factors cross process boundaries (pickled), as on a real cluster."""
    matrix = plays(seed=1)
    settings = dict(n_components=5, max_iter=4, tol=0, random_state=2, n_threads=1)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:
        sharded = fit_distributed(NMFModel(**settings), matrix, client, n_shards=4)
    local = NMFModel(**settings).fit(matrix)
    np.testing.assert_allclose(sharded.user_factors_, local.user_factors_, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(sharded.loss_history_, local.loss_history_, rtol=1e-4)
