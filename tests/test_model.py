"""NMFModel's public contract: validation, recommendation semantics, threads, persistence."""

import json
import re
import sys
import threading
import time
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

from timbral import NMFModel, Recommender, load_interactions
from timbral._reference import top_k as reference_top_k
from timbral.exceptions import ArtifactError, ConvergenceWarning, NotFittedError, ValidationError
from timbral.nmf import FittedState

# Most fits here run a fixed number of epochs on purpose (tol=0).
pytestmark = pytest.mark.filterwarnings("ignore::timbral.exceptions.ConvergenceWarning")


def play_counts(n_users=80, n_items=50, density=0.15, seed=0):
    rng = np.random.default_rng(seed)
    matrix = sp.random(n_users, n_items, density=density, random_state=rng, format="csr", dtype=np.float32)
    matrix.data = np.ceil(matrix.data * 20).astype(np.float32)
    return matrix


@pytest.fixture(scope="module")
def fitted():
    return NMFModel(n_components=8, max_iter=20, tol=0, random_state=3).fit(play_counts())


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_components": 0}, r"`n_components` must be an integer in \[1, inf\] or one of 'auto'; got 0"),
        ({"n_components": -3}, r"`n_components` .* got -3"),
        ({"feedback": "stars"}, r"`feedback` must be one of 'implicit', 'explicit', 'frobenius'; got 'stars'"),
        ({"alpha": -1.0}, r"`alpha` .* got -1.0"),
        ({"regularization": float("nan")}, r"`regularization` .* got nan"),
        ({"l1_ratio": 1.5}, r"`l1_ratio` must be a number in \[0, 1\]; got 1.5"),
        ({"max_iter": 2.5}, r"`max_iter` .* got 2.5"),
        ({"init": "svd"}, r"`init` must be one of 'random', 'nndsvd'; got 'svd'"),
        ({"confidence": "sqrt"}, r"`confidence` .* got 'sqrt'"),
        ({"random_state": "seed"}, r"`random_state` .* got 'seed'"),
    ],
)
def test_bad_parameters_name_the_argument_and_value(params, message):
    with pytest.raises(ValueError, match=message):
        NMFModel(**params).fit(play_counts())


def test_constructor_is_keyword_only_and_stores_without_checking():
    with pytest.raises(TypeError):
        NMFModel(10)  # type: ignore[misc]
    model = NMFModel(n_components=-1)  # checked at fit, as in scikit-learn
    assert model.get_params()["n_components"] == -1
    assert model.set_params(n_components=4).n_components == 4
    with pytest.raises(ValidationError, match="no parameter 'components'"):
        model.set_params(components=4)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (sp.csr_matrix(np.array([[1.0, np.nan], [0, 1]])), r"1 NaN or infinite value"),
        (sp.csr_matrix(np.array([[1.0, np.inf], [0, 1]])), r"NaN or infinite"),
        (sp.csr_matrix(np.array([[1.0, -2.0], [0, 1]])), r"negative values \(min -2\)"),
        (np.ones(5), r"2-D users × items matrix; got an array of shape \(5,\)"),
        (sp.csr_matrix((0, 4)), r"has shape \(0, 4\)"),
        (sp.csr_matrix((3, 4)), r"no stored interactions"),
        ("ratings.csv", r"must be a scipy.sparse matrix .* got str"),
    ],
)
def test_bad_matrices_are_refused(matrix, message):
    with pytest.raises(ValueError, match=message):
        NMFModel(n_components=2, max_iter=2).fit(matrix)


def test_interactions_object_is_refused_with_the_attribute_to_pass(tmp_path):
    """What load_interactions returns carries ids; the model takes its matrix, and says so."""
    path = tmp_path / "plays.csv"
    path.write_text("user,item,plays\n" + "".join(f"u{u},i{i},{u + i + 1}\n" for u in range(6) for i in range(5)))
    data = load_interactions(path)
    with pytest.raises(ValueError, match=r"got Interactions: pass its matrix, `user_items.user_items`"):
        NMFModel(n_components=2, max_iter=2).fit(data)
    NMFModel(n_components=2, max_iter=2, regularization=0.1, confidence="log",
             frequency_scale=0.0).fit(data.user_items)


def test_unfitted_model_says_what_to_do():
    with pytest.raises(NotFittedError, match=r"not fitted yet; call fit\(user_items\)"):
        NMFModel().recommend(0)


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_k(fitted, k):
    with pytest.raises(ValueError, match=r"`k` must be a positive integer; got"):
        fitted.recommend(0, k=k)


def test_out_of_range_indices(fitted):
    with pytest.raises(ValueError, match=r"`user` must be in \[0, 80\); got 80"):
        fitted.recommend(80)
    with pytest.raises(ValueError, match=r"`users` must hold indices in \[0, 80\); got -1"):
        fitted.recommend_batch([0, -1])
    with pytest.raises(ValueError, match=r"`items` must hold indices in \[0, 50\); got 99"):
        fitted.recommend(0, items=[1, 99])
    with pytest.raises(ValueError, match=r"`item` must be in \[0, 50\); got 50"):
        fitted.similar_items(50)


# -- fitting -----------------------------------------------------------------------------


def test_fit_records_state_and_accepts_other_formats():
    dense = play_counts().toarray()
    model = NMFModel(n_components=3, max_iter=4, tol=0).fit(sp.coo_matrix(dense))
    assert model.user_factors_.shape == (80, 3) and model.item_factors_.shape == (50, 3)
    assert model.user_factors_.dtype == np.float32
    assert model.n_iter_ == 4 and len(model.loss_history_) == 4
    assert (model.user_factors_ >= 0).all() and (model.item_factors_ >= 0).all()
    assert model.user_items_.nnz == np.count_nonzero(dense)


@pytest.mark.filterwarnings("error::timbral.exceptions.ConvergenceWarning")
def test_max_iter_warns_with_a_fix():
    with pytest.warns(ConvergenceWarning, match=r"max_iter=3 .* Raise max_iter"):
        NMFModel(n_components=3, max_iter=3, tol=1e-12).fit(play_counts())


def test_callback_sees_every_epoch():
    seen = []
    NMFModel(n_components=3, max_iter=5, tol=0).fit(play_counts(), callback=lambda i, loss: seen.append((i, loss)))
    assert [i for i, _ in seen] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(loss) for _, loss in seen)


def test_same_seed_same_factors():
    a = NMFModel(n_components=4, max_iter=5, random_state=7, n_threads=2).fit(play_counts())
    b = NMFModel(n_components=4, max_iter=5, random_state=7, n_threads=2).fit(play_counts())
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)
    np.testing.assert_array_equal(a.item_factors_, b.item_factors_)


# -- recommendation semantics ----------------------------------------------------------


def test_recommend_matches_the_reference(fitted):
    seen = fitted.user_items_
    ids, scores = fitted.recommend_batch(np.arange(80), k=7)
    ref_ids, ref_scores = reference_top_k(fitted.user_factors_, fitted.item_factors_, 7, exclude=seen)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)
    for user in range(0, 80, 9):
        one_ids, one_scores = fitted.recommend(user, k=7)
        np.testing.assert_array_equal(one_ids, ids[user][ids[user] >= 0])
        np.testing.assert_allclose(one_scores, scores[user][ids[user] >= 0], rtol=1e-6)
        assert not set(one_ids) & set(seen[user].indices)


def test_allow_and_deny_lists(fitted):
    ids, _ = fitted.recommend(5, k=50, exclude_seen=False, items=[3, 4, 5, 6], exclude_items=[4])
    assert sorted(ids.tolist()) == [3, 5, 6]
    ids, _ = fitted.recommend(5, k=50, exclude_seen=False, exclude_items=range(50))
    assert ids.size == 0


def test_recommend_trims_and_batch_pads():
    matrix = sp.csr_matrix(np.array([[1, 1, 1, 0], [0, 0, 0, 1]], dtype=np.float32))
    model = NMFModel(n_components=2, max_iter=3).fit(matrix)
    ids, scores = model.recommend(0, k=3)
    assert ids.tolist() == [3] and scores.shape == (1,)
    batch_ids, batch_scores = model.recommend_batch([0, 1], k=3)
    assert batch_ids[0].tolist() == [3, -1, -1] and np.isneginf(batch_scores[0, 1:]).all()
    assert sorted(batch_ids[1].tolist()) == [0, 1, 2]


def test_similar_items_is_cosine_and_skips_the_item(fitted):
    ids, scores = fitted.similar_items(4, k=5)
    normalized = fitted.item_factors_ / np.linalg.norm(fitted.item_factors_, axis=1, keepdims=True)
    cosine = normalized @ normalized[4]
    cosine[4] = -np.inf
    np.testing.assert_array_equal(ids, np.argsort(-cosine, kind="stable")[:5])
    np.testing.assert_allclose(scores, cosine[ids], rtol=1e-5)


def test_predict_broadcasts_and_matches_factors(fitted):
    got = fitted.predict(3, [0, 1, 2])
    np.testing.assert_allclose(got, fitted.item_factors_[:3] @ fitted.user_factors_[3], rtol=1e-5)
    with pytest.raises(ValidationError, match=r"`users` \(length 2\) and `items` \(length 3\)"):
        fitted.predict([1, 2], [0, 1, 2])


def test_fold_in_reproduces_a_training_row():
    matrix = play_counts(seed=4)
    model = NMFModel(n_components=5, max_iter=30, tol=0, random_state=1).fit(matrix)
    row = matrix[10]
    folded = model.fold_in(row.indices, row.data)
    assert folded.shape == (5,) and (folded >= 0).all()
    # the folded-in user ranks items like the trained one: the same half-step problem
    np.testing.assert_allclose(folded, model.user_factors_[10], rtol=0.05, atol=0.02)
    ids, _ = model.recommend_from_factors(folded, k=5, exclude=row.indices)
    assert not set(ids) & set(row.indices)


def test_explain_decomposes_the_score(fitted):
    explanation = fitted.explain(2, 7, n_factors=8, n_items=100)
    assert explanation.score == pytest.approx(float(fitted.predict(2, 7)[0]), rel=1e-5)
    assert sum(c for _, c in explanation.factors) == pytest.approx(explanation.score, rel=1e-5)
    history = set(fitted.user_items_[2].indices.tolist())
    assert {item for item, _ in explanation.items} == history
    contributions = [c for _, c in explanation.items]
    assert contributions == sorted(contributions, reverse=True)


def test_explicit_predictions_include_biases():
    rng = np.random.default_rng(1)
    pairs = np.unique(np.column_stack([rng.integers(0, 40, 600), rng.integers(0, 30, 600)]), axis=0)
    users, items = pairs.T
    ratings = np.clip(3 + (items % 3) - (users % 2) + rng.normal(0, 0.3, users.size), 0.5, 5)
    matrix = sp.csr_matrix((ratings.astype(np.float32), (users, items)), shape=(40, 30))
    model = NMFModel(n_components=3, feedback="explicit", max_iter=30, regularization=0.1).fit(matrix)
    coo = matrix.tocoo()
    rmse = np.sqrt(np.mean((model.predict(coo.row, coo.col) - coo.data) ** 2))
    assert rmse < 0.5
    ids, scores = model.recommend(0, k=3)
    np.testing.assert_allclose(scores, model.predict(0, ids), rtol=1e-5)


# -- threads and the GIL -----------------------------------------------------------------


def _count_while(work):
    """Run ``work`` in a thread; return how often the main thread ran meanwhile, how many
    switch intervals passed, and the result.

    Holding the GIL, ``work`` would let the main thread in about once per switch
    interval; releasing it, the main thread runs freely. The interval is raised to
    0.1 s meanwhile, so the two cases differ by orders of magnitude even when other
    processes take most of the CPU (at 5 ms they did not, on a loaded machine).
    """
    done = threading.Event()
    result = {}

    def run():
        result["value"] = work()
        done.set()

    thread = threading.Thread(target=run)
    count = 0
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.1)
    try:
        start = time.perf_counter()
        thread.start()
        while not done.is_set():
            count += 1
            time.sleep(0)
        thread.join()
        elapsed = time.perf_counter() - start
    finally:
        sys.setswitchinterval(interval)
    return count, max(1.0, elapsed / 0.1), result["value"]


def test_fit_releases_the_gil():
    matrix = play_counts(n_users=3000, n_items=2000, density=0.02)
    # A given λ: the validation search around the fit is Python work, not the kernel's loop.
    model = NMFModel(n_components=32, max_iter=8, tol=0, n_threads=1, regularization=1.0, confidence="log")
    count, switches, _ = _count_while(lambda: model.fit(matrix))
    assert count > 20 * switches, f"the main thread ran {count} times in {switches:.0f} switch intervals"


def test_recommend_batch_releases_the_gil_and_is_thread_safe():
    rng = np.random.default_rng(0)
    fitted = NMFModel(n_components=32, max_iter=1, n_threads=1, confidence="log").fit(
        play_counts(n_users=2000, n_items=3000))
    model = NMFModel.from_fitted(
        fitted.get_params(),
        FittedState(
            user_factors=rng.random((2000, 32), dtype=np.float32),
            item_factors=rng.random((3000, 32), dtype=np.float32),
            user_bias=fitted.user_bias_,
            item_bias=fitted.item_bias_,
            global_mean=0.0,
            regularization=fitted.regularization_,
            n_iter=1,
            loss_history=fitted.loss_history_,
            user_items=fitted.user_items_,
        ),
    )
    expected = model.recommend_batch(np.arange(2000), k=10)
    count, switches, got = _count_while(lambda: [model.recommend_batch(np.arange(2000), k=10) for _ in range(5)])
    assert count > 20 * switches, f"the main thread ran {count} times in {switches:.0f} switch intervals"
    for ids, _ in got:
        np.testing.assert_array_equal(ids, expected[0])

    results = [None, None]

    def worker(slot):
        results[slot] = model.recommend_batch(np.arange(2000), k=10)

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for ids, scores in results:
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_allclose(scores, expected[1], rtol=1e-6)  # BLAS may block differently


# -- persistence -------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, fitted):
    path = fitted.save(tmp_path / "model")
    assert path == tmp_path / "model" and (path / "metadata.json").is_file()
    loaded = NMFModel.load(path)
    for name in ("user_factors_", "item_factors_", "user_bias_", "item_bias_"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fitted, name))
    assert loaded.get_params() == fitted.get_params()
    assert loaded.loss_history_ == fitted.loss_history_
    assert (loaded.user_items_ != fitted.user_items_).nnz == 0
    np.testing.assert_array_equal(loaded.recommend(3)[0], fitted.recommend(3)[0])
    assert Recommender.load(path).recommend(3).items[0][0] == int(fitted.recommend(3)[0][0])  # ids 0..n-1


def test_save_records_the_metadata_every_model_directory_has(tmp_path, fitted):
    """NMFModel.save and Recommender.save write the same metadata, model version included,
    so replicas loading one directory agree on its version (and on cache keys)."""
    bare = json.loads((fitted.save(tmp_path / "bare") / "metadata.json").read_text())
    n_users, n_items = fitted.user_factors_.shape[0], fitted.item_factors_.shape[0]
    full = Recommender(fitted, np.arange(n_users), np.arange(n_items)).save(tmp_path / "full")
    assert set(bare) == set(json.loads((full / "metadata.json").read_text()))
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", bare["model_version"])
    assert bare["created_at"].endswith("Z")
    assert bare["model_version"].split("-")[1] == Recommender.load(full).model_version.split("-")[1]  # same factors
    first, again = Recommender.load(tmp_path / "bare"), Recommender.load(tmp_path / "bare")
    assert first.model_version == again.model_version == bare["model_version"]


def test_truncated_file_is_refused(tmp_path, fitted):
    path = fitted.save(tmp_path / "model")
    data = (path / "arrays.npz").read_bytes()
    (path / "arrays.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"arrays.npz' does not match its sha256 checksum"):
        NMFModel.load(path)


def test_tampered_array_is_refused(tmp_path, fitted):
    path = fitted.save(tmp_path / "model")
    with np.load(path / "arrays.npz") as npz:
        arrays = {name: npz[name] for name in npz.files}
    arrays["item_factors"] = arrays["item_factors"] * 1.01
    np.savez(path / "arrays.npz", **arrays)
    with pytest.raises(ArtifactError, match=r"arrays.npz' does not match its sha256 checksum"):
        NMFModel.load(path)


def test_missing_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(ArtifactError, match=r"nothing' does not exist or is not a directory"):
        NMFModel.load(tmp_path / "nothing")
    np.savez(tmp_path / "other.npz", x=np.arange(3))
    with pytest.raises(ArtifactError, match=r"format version unknown\) written by timbral 0.1"):
        NMFModel.load(tmp_path / "other.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ArtifactError, match=r"text.npz' does not exist or is not a directory"):
        NMFModel.load(tmp_path / "text.npz")
    assert not zipfile.is_zipfile(tmp_path / "text.npz")


def test_auto_regularization_is_chosen_on_a_validation_path():
    matrix = play_counts()
    for params in ({"alpha": 2.0, "confidence": "log"}, {"confidence": "linear"}, {"feedback": "explicit"}):
        model = NMFModel(n_components=2, max_iter=2, **params).fit(matrix)
        chosen = [row for row in model.search_results_ if row["chosen"]]
        assert len(chosen) == 1 and model.regularization_ == chosen[0]["regularization"]
        # The last row refines; screens (ν = 1's, by default) are not path points.
        path = [row["regularization"] for row in model.search_results_[:-1] if not row["screen"]]
        np.testing.assert_allclose(np.divide(path[:-1], path[1:]), 2.0)  # a log grid, strong to weak
    assert NMFModel(n_components=2, max_iter=2, feedback="frobenius").fit(matrix).regularization_ == 0.01
    assert NMFModel(n_components=2, max_iter=2, regularization=3).fit(matrix).regularization_ == 3.0
    with pytest.raises(ValidationError, match=r"`regularization` must be a number in \[0, inf\] or one of 'auto'"):
        NMFModel(regularization="high").fit(matrix)
