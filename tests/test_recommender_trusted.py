"""The checked-once scoring path (``NMFModel.recommend_trusted``, ``Recommender.rank_batch``)
gives exactly what the fully checked ``scoring.top_k`` gives on the same factors, and the
public entry points still refuse bad input with the same messages."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_array_equal

from timbral.exceptions import ValidationError
from timbral.model import NMFModel
from timbral.nmf.estimator import FittedState
from timbral.recommender import Recommender
from timbral.scoring import item_mask, top_k

N_USERS, N_ITEMS, N_FACTORS = 40, 300, 8


def random_model(feedback: str, dtype: type, seed: int) -> NMFModel:
    """A model with random factors (and biases for explicit feedback): no fit, exact state."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.2) * rng.integers(1, 6, (N_USERS, N_ITEMS))
    dense[3] = 0  # a user with nothing seen
    dense[5] = 1  # and one who has seen everything: a row of padding
    seen = sp.csr_matrix(dense.astype(np.float32))
    explicit = feedback == "explicit"
    bias = (lambda n: rng.normal(size=n).astype(dtype)) if explicit else (lambda n: np.zeros(n, dtype))
    return NMFModel.from_fitted(
        NMFModel(n_components=N_FACTORS, feedback=feedback, confidence="log", n_threads=1).get_params(),
        FittedState(
            user_factors=rng.random((N_USERS, N_FACTORS)).astype(dtype),
            item_factors=rng.random((N_ITEMS, N_FACTORS)).astype(dtype),
            user_bias=bias(N_USERS),
            item_bias=bias(N_ITEMS),
            global_mean=3.5 if explicit else 0.0,
            regularization=0.1,
            n_iter=1,
            loss_history=[1.0],
            user_items=seen,
        ),
    )


def checked_top_k(model: NMFModel, users, k, *, seen, deny=None, allow=None):
    """What ``recommend_batch`` computed before the trusted path: everything through the
    checked ``top_k`` (explicit feedback: w·h + b_i by an extra column, then μ + b_u)."""
    users = np.asarray(users, dtype=np.int64)
    query, items = model.user_factors_[users], model.item_factors_
    if model.feedback == "explicit":
        query = np.hstack([query, np.ones((users.size, 1), query.dtype)])
        items = np.hstack([items, model.item_bias_[:, None]])
    exclude = None if seen is None else sp.csr_matrix(seen[users])
    mask = item_mask(model.n_items_, allow=allow, deny=deny)
    ids, scores = top_k(query, items, k, exclude=exclude, item_mask=mask, n_threads=1)
    if model.feedback == "explicit":
        scores = scores + (model.global_mean_ + model.user_bias_[users]).astype(scores.dtype)[:, None]
    return ids, scores


FEEDBACKS = ["implicit", "explicit"]
DTYPES = [np.float32, np.float64]
BATCHES = {"one": [7], "one-empty-history": [3], "several": [0, 5, 12, 3, 12, 39], "all": list(range(N_USERS))}
LISTS = {"none": (None, None), "deny": (np.array([1, 2, 50, 299]), None), "allow": (None, np.arange(0, 300, 3)),
         "both": (np.array([0, 3, 6]), np.arange(0, 300, 3))}


@pytest.mark.parametrize("feedback", FEEDBACKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", BATCHES.values(), ids=BATCHES.keys())
@pytest.mark.parametrize("lists", LISTS.values(), ids=LISTS.keys())
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recommend_batch_is_the_checked_top_k_bit_for_bit(feedback, dtype, batch, lists, exclude_seen):
    model = random_model(feedback, dtype, seed=len(batch))
    deny, allow = lists
    for k in (1, 10, 280, N_ITEMS + 5):  # 280: rows shorter than k (padding); beyond n_items: clamped
        got = model.recommend_batch(batch, k, exclude_seen=exclude_seen, exclude_items=deny, items=allow)
        want = checked_top_k(model, batch, k, seen=model.user_items_ if exclude_seen else None,
                             deny=deny, allow=allow)
        assert got[1].dtype == want[1].dtype == dtype
        assert_array_equal(got[0], want[0])
        assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("feedback", FEEDBACKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_rank_batch_is_the_checked_top_k_for_known_unknown_and_mixed(feedback, dtype, exclude_seen):
    model = random_model(feedback, dtype, seed=1)
    user_ids, item_ids = [f"u{j}" for j in range(N_USERS)], np.arange(N_ITEMS) * 3 + 7
    rec = Recommender(model, user_ids, item_ids)
    deny, allow = [item_ids[1], item_ids[4], "no-such-item"], item_ids[::2].tolist() + [10**30]
    for users in (["u7"], ["u5"], ["u0", "u5", "u12", "u0"], ["ghost"], ["u3", "ghost", "u9", None, 2**70], []):
        for k, lists in ((10, {}), (200, {}), (10, {"exclude_items": deny, "items": allow})):
            batch = rec.rank_batch(users, k, exclude_seen=exclude_seen, **lists)
            rows = [user_ids.index(u) if u in user_ids else -1 for u in users]
            known = [r for r in rows if r >= 0]
            deny_rows = np.array([1, 4]) if lists else None
            allow_rows = np.arange(0, N_ITEMS, 2) if lists else None
            ids, scores = checked_top_k(model, known, min(k, N_ITEMS), deny=deny_rows, allow=allow_rows,
                                        seen=model.user_items_ if exclude_seen else None)
            popular = [(j, s) for j, s in zip(*_popular(rec, k, deny_rows, allow_rows), strict=True)]
            expected_items, expected_scores, lengths = [], [], []
            for row in rows:
                pairs = popular if row < 0 else [
                    (j, s) for j, s in zip(ids[known.index(row)], scores[known.index(row)], strict=True) if j >= 0
                ]
                expected_items += [item_ids[j] for j, _ in pairs]
                expected_scores += [float(s) for _, s in pairs]
                lengths.append(len(pairs))
            assert batch.user_ids == users
            assert batch.strategies == ["nmf" if r >= 0 else "popularity" for r in rows]
            assert batch.item_ids.tolist() == expected_items
            assert batch.scores.dtype == np.float64 and batch.scores.tolist() == expected_scores
            assert batch.offsets.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()


def _popular(rec: Recommender, k: int, deny, allow):
    """Unknown users' rows: the most popular allowed items, in the popularity order."""
    banned = item_mask(rec.n_items, allow=allow, deny=deny)
    order = np.argsort(-rec.item_popularity, kind="stable")
    if banned is not None:
        order = order[~banned[order]]
    return order[:k], rec.item_popularity[order[:k]]


@pytest.mark.filterwarnings("ignore::timbral.exceptions.ConvergenceWarning")
def test_the_cached_scorer_follows_n_threads_and_a_refit():
    model = random_model("implicit", np.float32, seed=2)
    first = model.recommend_batch(np.arange(N_USERS), 5)
    model.n_threads = 2  # the server sets it after loading; the cached scorer must follow
    again = model.recommend_trusted(np.arange(N_USERS), 5, seen=model.user_items_, item_mask=None)
    assert_array_equal(again[0], first[0])
    model.fit(random_model("implicit", np.float32, seed=3).user_items_)
    refit = checked_top_k(model, np.arange(N_USERS), 5, seen=model.user_items_)
    assert_array_equal(model.recommend_batch(np.arange(N_USERS), 5)[1], refit[1])  # not the old factors


# -- the public entry points keep every check ------------------------------------------------


@pytest.fixture(scope="module")
def model():
    return random_model("implicit", np.float32, seed=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"users": [0, 40]}, r"`users` must hold indices in \[0, 40\); got 40"),
    ({"users": [-1]}, r"`users` must hold indices in \[0, 40\); got -1"),
    ({"users": [[0, 1]]}, r"`users` must be 1-D; got shape \(1, 2\)"),
    ({"users": [0.5]}, r"`users` must hold integer indices; got dtype float64"),
    ({"users": ["0"]}, r"`users` must hold integer indices; got dtype <U1"),
    ({"k": 0}, r"`k` must be a positive integer; got 0. Pass e.g. k=10"),
    ({"k": True}, r"`k` must be a positive integer; got True"),
    ({"k": 2.0}, r"`k` must be a positive integer; got 2.0"),
    ({"k": "10"}, r"`k` must be a positive integer; got '10'"),
    ({"items": [0, 300]}, r"`items` must hold indices in \[0, 300\); got 300"),
    ({"exclude_items": [-5]}, r"`exclude_items` must hold indices in \[0, 300\); got -5"),
    ({"exclude_items": ["a"]}, r"`exclude_items` must hold integer indices; got dtype <U1"),
    ({"user_items": sp.csr_matrix((40, 299))}, r"`user_items` must have shape \(40, 300\); got \(40, 299\)"),
])
def test_recommend_batch_refuses_bad_input_as_before(model, kwargs, message):
    args = {"users": [0, 1], "k": 5} | kwargs
    with pytest.raises(ValidationError, match=message):
        model.recommend_batch(args.pop("users"), args.pop("k"), **args)


@pytest.mark.parametrize(("call", "message"), [
    (lambda rec: rec.rank_batch(["u1"], 0), r"`k` must be a positive integer; got 0"),
    (lambda rec: rec.rank_batch(["u1"], -3), r"`k` must be a positive integer; got -3"),
    (lambda rec: rec.rank_batch(["u1"], None), r"`k` must be a positive integer; got None"),
    (lambda rec: rec.rank_batch("u1", 5), r"`user_ids` must be a list of user ids; got 'u1'"),
    (lambda rec: rec.rank_batch(7, 5), r"`user_ids` must be a list of user ids; got 7"),
    (lambda rec: rec.rank_batch(["u1"], 5, items="abc"), r"item id lists must be lists of ids; got 'abc'"),
    (lambda rec: rec.rank_batch(["u1"], 5, exclude_items=3), r"item id lists must be lists of ids; got 3"),
])
def test_rank_batch_refuses_bad_input_as_before(model, call, message):
    rec = Recommender(model, [f"u{j}" for j in range(N_USERS)], np.arange(N_ITEMS))
    with pytest.raises(ValidationError, match=message):
        call(rec)


def test_rank_batch_hostile_ids_are_unknown_users_not_errors(model):
    rec = Recommender(model, np.arange(N_USERS) * 11, np.arange(N_ITEMS))
    hostile = [2**63, -(2**63) - 1, 10**400, "11\x00", "٤٤", 1.0, b"11", None, [11], {"id": 11}, float("nan"), "22"]
    batch = rec.rank_batch(hostile, 3)
    assert batch.strategies == ["popularity"] * (len(hostile) - 1) + ["nmf"]
    assert batch.user_ids[-1] == 22 and batch.offsets.tolist() == list(range(0, 3 * len(hostile) + 1, 3))
