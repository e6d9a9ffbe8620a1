"""One contract, three ways to get a fitted model (issue 8).

``NMFModel.fit``, ``fit_distributed`` on a LocalCluster and a model loaded back from
its directory must give the same answers from ``recommend``, ``recommend_batch``,
``similar_items``, ``explain`` and ``fold_in``, and keep the same invariants.
The data is float64, so the sharded fit differs from the local one only in
summation order, far below what could reorder a top-K.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal

from timbral import NMFModel
from timbral.nmf import Explanation

distributed = pytest.importorskip("distributed")

from timbral.distributed import fit_distributed  # noqa: E402

SETTINGS = dict(n_components=5, max_iter=8, tol=0, random_state=4, n_threads=1, regularization=0.2)
USERS = np.array([0, 3, 17, 40, 59])


def plays() -> sp.csr_matrix:
    rng = np.random.default_rng(11)
    matrix = sp.random(60, 45, density=0.12, random_state=rng, format="csr", dtype=np.float64)
    matrix.data = np.ceil(matrix.data * 20)
    return matrix


@pytest.fixture(scope="module")
def reference() -> NMFModel:
    return NMFModel(**SETTINGS).fit(plays())


@pytest.fixture(scope="module", params=["fit", "fit_distributed", "loaded"])
def fitted(request, reference, tmp_path_factory) -> NMFModel:
    if request.param == "fit":
        return NMFModel(**SETTINGS).fit(plays())
    if request.param == "loaded":
        return NMFModel.load(reference.save(tmp_path_factory.mktemp("contract") / "model"))
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:
        return fit_distributed(NMFModel(**SETTINGS), plays(), client, n_shards=3)


def test_recommend(fitted, reference):
    for user in USERS:
        ids, scores = fitted.recommend(user, k=7)
        expected_ids, expected_scores = reference.recommend(user, k=7)
        assert_array_equal(ids, expected_ids)
        assert_allclose(scores, expected_scores, rtol=1e-9)
        assert not set(ids.tolist()) & set(plays()[user].indices.tolist())


def test_recommend_batch(fitted, reference):
    ids, scores = fitted.recommend_batch(USERS, k=7, exclude_items=[1, 2], items=np.arange(30))
    expected_ids, expected_scores = reference.recommend_batch(USERS, k=7, exclude_items=[1, 2], items=np.arange(30))
    assert_array_equal(ids, expected_ids)
    assert_allclose(scores, expected_scores, rtol=1e-9)
    for row, user in enumerate(USERS):  # batch equals single-user
        single_ids, _ = fitted.recommend(user, k=7, exclude_items=[1, 2], items=np.arange(30))
        assert_array_equal(ids[row][ids[row] >= 0], single_ids)


def test_similar_items(fitted, reference):
    for item in (0, 9, 44):
        ids, scores = fitted.similar_items(item, k=6)
        expected_ids, expected_scores = reference.similar_items(item, k=6)
        assert item not in ids
        assert_array_equal(ids, expected_ids)
        assert_allclose(scores, expected_scores, rtol=1e-9)


def test_explain(fitted, reference):
    for user, item in [(0, 5), (17, 30), (59, 44)]:
        why = fitted.explain(user, item, n_factors=3, n_items=4)
        expected = reference.explain(user, item, n_factors=3, n_items=4)
        assert isinstance(why, Explanation)
        assert why.score == pytest.approx(float(fitted.predict([user], [item])[0]), rel=1e-9)
        assert why.score == pytest.approx(expected.score, rel=1e-9)
        assert [f for f, _ in why.factors] == [f for f, _ in expected.factors]
        assert [j for j, _ in why.items] == [j for j, _ in expected.items]
        assert_allclose([c for _, c in why.items], [c for _, c in expected.items], rtol=1e-7, atol=1e-12)


def test_fold_in(fitted, reference):
    row = plays()[17]
    got = fitted.fold_in(row.indices, row.data)
    assert_allclose(got, reference.fold_in(row.indices, row.data), rtol=1e-9, atol=1e-12)
