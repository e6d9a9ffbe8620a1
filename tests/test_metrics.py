"""Ranking and rating metrics (timbral.metrics) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from timbral.exceptions import ValidationError
from timbral.metrics import (
    capped_recall_at_k,
    catalog_coverage,
    hit_rate_at_k,
    map_at_k,
    ndcg_at_k,
    ndcg_by_user,
    popularity_top_k,
    precision_at_k,
    ranking_metrics,
    ranking_scores,
    rating_metrics,
    recall_at_k,
)


def matrix(rows: list[list[int]], n_items: int = 6, values: list[list[float]] | None = None) -> sp.csr_matrix:
    r = np.repeat(np.arange(len(rows)), [len(x) for x in rows])
    c = np.concatenate([np.asarray(x, dtype=np.int64) for x in rows])
    v = np.concatenate([np.asarray(x, dtype=np.float32) for x in values]) if values else np.ones(len(c), np.float32)
    return sp.csr_matrix((v, (r, c)), shape=(len(rows), n_items))


TEST = matrix([[1, 3], [0], []])  # user 2 has no test item: ignored
REC = np.array([[3, 2, 1], [5, -1, -1], [0, 1, 2]])


def test_hand_computed_example():
    # user 0: hits [1, 0, 1]; user 1: no hit.
    ndcg0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ap0 = (1 / 1 + 2 / 3) / 2
    expected = dict(precision=(2 / 3) / 2, recall=1 / 2, recall_capped=1 / 2, ndcg=ndcg0 / 2, map=ap0 / 2,
                    hit_rate=1 / 2, coverage=4 / 6, k=3, n_users=2)
    got = ranking_scores(REC, TEST)
    assert got == pytest.approx(expected)
    assert precision_at_k(REC, TEST) == pytest.approx(expected["precision"])
    assert recall_at_k(REC, TEST) == pytest.approx(expected["recall"])
    assert capped_recall_at_k(REC, TEST) == pytest.approx(expected["recall_capped"])
    assert ndcg_at_k(REC, TEST) == pytest.approx(expected["ndcg"])
    assert map_at_k(REC, TEST) == pytest.approx(expected["map"])
    assert hit_rate_at_k(REC, TEST) == pytest.approx(expected["hit_rate"])
    assert catalog_coverage(REC, TEST) == pytest.approx(expected["coverage"])


def test_second_hand_example_with_later_hits():
    test = matrix([[0, 1, 2]])
    rec = np.array([[5, 0, 4, 2]])  # hits at ranks 1 and 3 (0-based)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    got = ranking_scores(rec, test)
    assert got["precision"] == pytest.approx(2 / 4)
    assert got["recall"] == pytest.approx(2 / 3)
    assert got["ndcg"] == pytest.approx(dcg / idcg)
    assert got["map"] == pytest.approx((1 / 2 + 2 / 4) / 3)


def test_perfect_recommendations():
    test = matrix([[1, 3], [0], [2, 4, 5]])
    rec = np.array([[3, 1, -1], [0, -1, -1], [5, 2, 4]])
    got = ranking_scores(rec, test)
    assert got["recall"] == got["ndcg"] == got["map"] == got["hit_rate"] == pytest.approx(1.0)
    assert got["precision"] == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)  # padding counts as a miss


def test_more_relevant_items_than_k_ranking_metrics_still_score_one():
    test = matrix([[0, 1, 2, 3, 4]])
    got = ranking_scores(np.array([[4, 0]]), test)
    assert got["precision"] == got["recall_capped"] == got["ndcg"] == got["map"] == pytest.approx(1.0)
    assert got["recall"] == pytest.approx(2 / 5)  # 2 of the 5 relevant items were found


def test_recall_is_hits_over_relevant_not_over_k():
    # Issue 9: 10 hits of 20 relevant items is recall 0.5; only the capped variant says 1.0.
    test = matrix([list(range(20))], n_items=40)
    rec = np.array([list(range(10))])
    assert recall_at_k(rec, test) == pytest.approx(10 / 20)
    assert capped_recall_at_k(rec, test) == pytest.approx(1.0)
    # Two users: 1 of 4 found (k=2) and 2 of 2 found: mean of 1/4 and 1, capped mean of 1/2 and 1.
    test = matrix([[0, 1, 2, 3], [4, 5]])
    rec = np.array([[0, 5], [5, 4]])
    assert recall_at_k(rec, test) == pytest.approx((1 / 4 + 1) / 2)
    assert capped_recall_at_k(rec, test) == pytest.approx((1 / 2 + 1) / 2)


def test_empty_recommendations_and_empty_test():
    got = ranking_scores(np.full((3, 4), -1), TEST)
    assert got == dict(precision=0.0, recall=0.0, recall_capped=0.0, ndcg=0.0, map=0.0, hit_rate=0.0,
                       coverage=0.0, k=4, n_users=2)
    nobody = ranking_scores(REC, matrix([[], [], []]))
    assert nobody["n_users"] == 0 and nobody["ndcg"] == 0.0
    assert ranking_scores(np.zeros((3, 0), dtype=np.int64), TEST)["precision"] == 0.0


def test_users_argument_selects_test_rows():
    got = ranking_scores(REC[:2][::-1], TEST, users=[1, 0])
    assert got == pytest.approx(ranking_scores(REC, TEST))


def test_metric_input_errors():
    with pytest.raises(ValidationError, match="recommended must be a 2-D int array"):
        ranking_scores(np.array([1, 2]), TEST)
    with pytest.raises(ValidationError, match=r"expected 0..5 or -1 for padding"):
        ranking_scores(np.array([[6]] * 3), TEST)
    with pytest.raises(ValidationError, match="pass users="):
        ranking_scores(REC[:2], TEST)
    with pytest.raises(ValidationError, match="test must be a scipy.sparse matrix, got ndarray"):
        ranking_scores(REC, TEST.toarray())


def test_ndcg_by_user_hand_computed():
    # user 0: hits [1, 0, 1] of 2 relevant; user 1: no hit; user 2: no test item (NaN, not 0).
    got = ndcg_by_user(REC, TEST)
    expected = [(1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)), 0.0]
    np.testing.assert_allclose(got[:2], expected, rtol=1e-15)
    assert np.isnan(got[2])
    # hits at ranks 1 and 3 of 3 relevant; rows follow users=, any order, repeats allowed.
    test = matrix([[0, 1, 2], [4]])
    rec = np.array([[4, 1, 3, 5], [5, 0, 4, 2], [4, -1, -1, -1]])
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    np.testing.assert_allclose(ndcg_by_user(rec, test, users=[1, 0, 1]), [1.0, dcg / idcg, 1.0], rtol=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_ndcg_by_user_gives_ranking_scores_ndcg_for_every_subset(seed):
    """Means of the per-user values are ranking_scores' NDCG over the same users (1e-12),
    whole and in groups, as the validation search takes them; users without test items are NaN."""
    rng = np.random.default_rng(seed)
    n_users, n_items, k = 300, 80, 10
    test = sp.random(n_users, n_items, density=0.05, format="csr", random_state=rng)
    users = rng.permutation(n_users)[:250]
    rec = np.stack([rng.permutation(n_items)[:k] for _ in users])
    rec[rng.random(rec.shape) < 0.1] = -1  # padding counts as a miss wherever it sits
    per_user = ndcg_by_user(rec, test, users)
    evaluated = np.diff(test.indptr)[users] > 0
    assert not evaluated.all() and np.array_equal(np.isnan(per_user), ~evaluated)
    assert np.mean(per_user[evaluated]) == pytest.approx(ndcg_at_k(rec, test, users), abs=1e-12)
    for group in np.array_split(np.flatnonzero(evaluated), 7):
        assert np.mean(per_user[group]) == pytest.approx(
            ranking_scores(rec[group], test, users[group])["ndcg"], abs=1e-12)
    for row in rng.choice(np.flatnonzero(evaluated), 20, replace=False):
        assert per_user[row] == pytest.approx(ndcg_at_k(rec[row : row + 1], test, users[row : row + 1]), abs=1e-12)


def test_ndcg_by_user_empty_and_bad_input():
    assert ndcg_by_user(np.zeros((0, 10), dtype=np.int64), TEST, users=[]).shape == (0,)
    assert np.isnan(ndcg_by_user(REC, matrix([[], [], []]))).all()
    with pytest.raises(ValidationError, match="recommended must be a 2-D int array"):
        ndcg_by_user(np.array([1.5, 2.0]), TEST)
    with pytest.raises(ValidationError, match=r"expected 0..5 or -1 for padding"):
        ndcg_by_user(np.array([[-7]] * 3), TEST)
    with pytest.raises(ValidationError, match=r"users must hold one row index of test \(0..2\)"):
        ndcg_by_user(REC, TEST, users=[0, 1, 3])
    with pytest.raises(ValidationError, match="test must be a scipy.sparse matrix, got list"):
        ndcg_by_user(REC, [[1, 0]])


class TableModel:
    """Recommends from a fixed table; records how it was called."""

    def __init__(self, table: np.ndarray, user_items: sp.csr_matrix) -> None:
        self.table = table
        self.user_items_ = user_items
        self.calls: list[tuple[list[int], int, bool]] = []

    def recommend_batch(self, users, k, exclude_seen=True):
        self.calls.append((list(users), k, exclude_seen))
        return self.table[users, :k], np.zeros((len(users), k), np.float32)

    def predict(self, users, items):
        return np.full(len(users), 3.0)


def test_ranking_metrics_calls_the_model_per_batch():
    train = matrix([[0], [1], [2]])
    model = TableModel(REC, train)
    got = ranking_metrics(model, train, TEST, k=3, batch_size=1)
    assert model.calls == [([0], 3, True), ([1], 3, True)]  # only users with test items
    assert got == pytest.approx(ranking_scores(REC, TEST))
    short = ranking_metrics(TableModel(REC[:, :2], train), train, TEST, k=3)  # fewer than k: padded
    assert short["k"] == 3 and short["precision"] == pytest.approx(0.5 / 3)


def test_ranking_metrics_guards():
    train = matrix([[0], [1], [2]])
    with pytest.raises(ValidationError, match="fit it on train"):
        ranking_metrics(TableModel(REC, matrix([[0, 1], [1], [2]])), train, TEST)
    with pytest.raises(ValidationError, match="`k` must be a positive integer; got 0"):
        ranking_metrics(TableModel(REC, train), train, TEST, k=0)
    with pytest.raises(ValidationError, match=r"train has shape \(2, 6\) but test \(3, 6\)"):
        ranking_metrics(TableModel(REC, None), matrix([[0], [1]]), TEST)


def test_rating_metrics_hand_computed():
    test = matrix([[0, 2], [], [1]], values=[[4.0, 2.0], [], [5.0]])
    got = rating_metrics(TableModel(REC, None), test)  # predicts 3 everywhere: errors -1, 1, -2
    assert got == pytest.approx({"rmse": math.sqrt(6 / 3), "mae": 4 / 3, "n_ratings": 3})
    perfect = type("Perfect", (), {"predict": lambda self, u, i: test.toarray()[u, i]})()
    assert rating_metrics(perfect, test) == pytest.approx({"rmse": 0.0, "mae": 0.0, "n_ratings": 3})
    assert rating_metrics(perfect, matrix([[], []]))["n_ratings"] == 0


def test_popularity_top_k_ranks_by_listeners_skips_what_each_user_played_and_pads():
    # items played by 3, 2, 2, 1 and 0 users; ties by item index
    train = sp.csr_matrix(np.array([[1, 1, 0, 0, 0],
                                    [9, 0, 1, 0, 0],
                                    [1, 1, 1, 1, 0]], dtype=np.float32))
    got = popularity_top_k(train, [0, 1, 2], 3)
    np.testing.assert_array_equal(got, [[2, 3, 4], [1, 3, 4], [4, -1, -1]])
    assert popularity_top_k(train, [], 2).shape == (0, 2)
    with pytest.raises(ValidationError, match="train must be a scipy.sparse matrix, got ndarray"):
        popularity_top_k(train.toarray(), [0], 2)
