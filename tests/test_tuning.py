"""Hyperparameters chosen by validation (timbral.tuning, NMFModel "auto" values), issue 9."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import scipy.sparse as sp
from cli_support import generated_plays_csv

from timbral import tuning
from timbral.artifact import read_model_dir, write_model_dir
from timbral.cli import main
from timbral.data import Interactions
from timbral.exceptions import ArtifactError, ValidationError
from timbral.metrics import rating_metrics
from timbral.nmf import NMFModel
from timbral.recommender import Recommender
from timbral.split import random_split
from timbral.train import train

FAST = {"n_threads": 1, "max_iter": 30}


def planted_ratings(n_users: int = 240, n_items: int = 160, rank: int = 3, density: float = 0.2,
                    seed: int = 0) -> sp.csr_matrix:
    """Ratings μ + b_u + b_i + taste + noise, taste from a non-negative rank-``rank`` product, in [0.5, 5]."""
    rng = np.random.default_rng(seed)
    W = rng.gamma(1.0, 1.0, (n_users, rank))
    H = rng.gamma(1.0, 1.0, (n_items, rank))
    taste = W @ H.T  # double-centred: what the biases cannot explain
    taste = taste - taste.mean(axis=1, keepdims=True) - taste.mean(axis=0, keepdims=True) + taste.mean()
    taste /= taste.std()
    ratings = 3.4 + rng.normal(0, 0.3, (n_users, 1)) + rng.normal(0, 0.3, (1, n_items)) + 0.8 * taste
    ratings += rng.normal(0, 0.3, ratings.shape)
    mask = rng.random(ratings.shape) < density
    return sp.csr_matrix(np.where(mask, np.clip(ratings, 0.5, 5.0), 0.0).astype(np.float32))


def clustered_plays(n_users: int = 200, n_items: int = 120, seed: int = 1) -> sp.csr_matrix:
    """Play counts from 4 taste clusters with heavy-tailed counts."""
    rng = np.random.default_rng(seed)
    cluster_of_user = rng.integers(0, 4, n_users)
    cluster_of_item = rng.integers(0, 4, n_items)
    likes = np.where(cluster_of_user[:, None] == cluster_of_item[None, :], 0.3, 0.02)
    mask = rng.random((n_users, n_items)) < likes
    counts = np.floor(rng.pareto(1.2, (n_users, n_items)) * 3) + 1
    return sp.csr_matrix(np.where(mask, counts, 0.0).astype(np.float32))


def bias_only_rmse(train_part: sp.csr_matrix, test_part: sp.csr_matrix, reg: float = 5.0) -> float:
    """RMSE of the regularised bias-only model μ + b_u + b_i (alternating closed form)."""
    coo = train_part.tocoo()
    mu = coo.data.mean()
    b_u, b_i = np.zeros(train_part.shape[0]), np.zeros(train_part.shape[1])
    for _ in range(20):
        b_u = np.bincount(coo.row, coo.data - mu - b_i[coo.col], train_part.shape[0]) / (
            np.bincount(coo.row, minlength=train_part.shape[0]) + reg)
        b_i = np.bincount(coo.col, coo.data - mu - b_u[coo.row], train_part.shape[1]) / (
            np.bincount(coo.col, minlength=train_part.shape[1]) + reg)
    test = test_part.tocoo()
    return float(np.sqrt(np.mean((mu + b_u[test.row] + b_i[test.col] - test.data) ** 2)))


def choices(table: list[dict]) -> list[dict]:
    """A search table without its timings."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in table]


@pytest.fixture(scope="module")
def plays() -> sp.csr_matrix:
    return clustered_plays()


@pytest.fixture(scope="module")
def auto_model(plays) -> NMFModel:
    return NMFModel(n_components=8, confidence="auto", **FAST).fit(plays)


def test_default_fit_chooses_lambda_on_a_path_and_records_the_table(auto_model):
    table = auto_model.search_results_
    assert table and [row["chosen"] for row in table].count(True) == 1
    chosen = next(row for row in table if row["chosen"])
    assert auto_model.regularization_ == chosen["regularization"]
    assert auto_model.confidence_ == chosen["confidence"]
    # The best row, or the best at the default confidence when the best beats it by less than the noise.
    best = max(table, key=lambda row: row["ndcg@10"])
    plain = max((row for row in table if row["confidence"] == "log"), key=lambda row: row["ndcg@10"])
    assert chosen is best or (chosen is plain and best["confidence"] != "log")
    *rows, refinement = table
    paths = [row for row in rows if not row["screen"]]
    for setting in {(row["confidence"], row["frequency_scale"]) for row in paths}:
        path = [row["regularization"] for row in paths if (row["confidence"], row["frequency_scale"]) == setting]
        assert path == sorted(path, reverse=True) and len(path) >= tuning.PATIENCE + 1  # strong to weak
        np.testing.assert_allclose(np.divide(path[:-1], path[1:]), 2.0)  # a log grid
    # The default scaling walks a whole path; each other one is first screened by a few short fits.
    assert "log" in {row["confidence"] for row in paths} and not chosen["screen"]
    for confidence in set(tuning.CONFIDENCE_GRID) - {"log"}:
        screen = [row for row in rows if row["screen"] and row["confidence"] == confidence]
        assert len(screen) == 1 and screen[0]["n_iter"] <= tuning.SCREEN_MAX_ITER
    # The last row refines the best path: halfway (geometrically) between two of its points.
    best_path = [row["regularization"] for row in paths if (row["confidence"], row["frequency_scale"]) ==
                 (refinement["confidence"], refinement["frequency_scale"])]
    assert any(np.isclose(refinement["regularization"] ** 2, a * b) for a, b in itertools.pairwise(best_path))
    assert {row["confidence"] for row in table} == set(tuning.CONFIDENCE_GRID)
    assert auto_model.get_params()["confidence"] == "auto"  # the parameter itself stays as given


def test_an_explicit_number_turns_its_search_off(plays):
    fixed = NMFModel(n_components=8, regularization=3.0, confidence="log", **FAST).fit(plays)
    assert fixed.search_results_ is None and fixed.regularization_ == 3.0 and fixed.confidence_ == "log"
    only_confidence = NMFModel(n_components=8, regularization=3.0, confidence="auto", **FAST).fit(plays)
    assert {row["regularization"] for row in only_confidence.search_results_} == {3.0}
    assert len(only_confidence.search_results_) == len(tuning.CONFIDENCE_GRID)
    # ν ("auto", the default) is searched with λ only: a fixed λ keeps the plain ridge.
    assert {row["frequency_scale"] for row in only_confidence.search_results_} == {0.0}
    assert fixed.frequency_scale_ == only_confidence.frequency_scale_ == 0.0


def test_search_is_seeded(plays):
    a = NMFModel(n_components=6, random_state=3, **FAST).fit(plays)
    b = NMFModel(n_components=6, random_state=3, **FAST).fit(plays)
    assert a.search_results_ is not None
    assert choices(a.search_results_) == choices(b.search_results_)
    np.testing.assert_array_equal(a.user_factors_, b.user_factors_)


def test_search_never_reads_the_test_split():
    """Poison the held-out ratings of `train`'s split: what the search chose must not move."""
    ratings = planted_ratings(seed=4)
    _, test_part = random_split(ratings, test_fraction=0.2, seed=0)
    n_items = ratings.shape[1]
    keys = np.repeat(np.arange(ratings.shape[0]), np.diff(ratings.indptr)) * n_items + ratings.indices
    test_keys = np.repeat(np.arange(test_part.shape[0]), np.diff(test_part.indptr)) * n_items + test_part.indices
    at = np.searchsorted(keys, test_keys)
    poisoned = ratings.copy()
    poisoned.data[at] = 5.5 - poisoned.data[at]  # high ratings become low: the opposite of what is learnt
    is_test = sp.csr_matrix((np.ones(test_part.nnz), test_part.indices, test_part.indptr), test_part.shape)

    def run(matrix: sp.csr_matrix):
        ids = np.arange(matrix.shape[0]), np.arange(matrix.shape[1])
        model = NMFModel(feedback="explicit", n_components=6, max_iter=30, n_threads=1)
        return train(Interactions(matrix, *ids), model=model, seed=0, refit=False)

    clean, dirty = run(ratings), run(poisoned)
    assert dirty.metrics["rmse"] > clean.metrics["rmse"] + 0.3  # the poison is in the test split
    assert choices(clean.recommender.model.search_results_) == choices(dirty.recommender.model.search_results_)
    assert any(row["frequency_scale"] == 1.0 for row in clean.recommender.model.search_results_)  # ν's screen too
    assert clean.recommender.model.regularization_ == dirty.recommender.model.regularization_
    # ... and it would have moved the choice had it been read: on the poisoned test, another λ wins.
    train_part, _ = random_split(poisoned, test_fraction=0.2, seed=0)
    poisoned_test = poisoned.multiply(is_test).tocsr().astype(np.float32)
    lambdas = [row["regularization"] for row in clean.recommender.model.search_results_]
    on_poison = [rating_metrics(NMFModel(feedback="explicit", n_components=6, regularization=lam, **FAST)
                                .fit(train_part), poisoned_test)["rmse"] for lam in lambdas]
    assert lambdas[int(np.argmin(on_poison))] != clean.recommender.model.regularization_


def test_explicit_feedback_keeps_its_factors():
    """Planted low-rank ratings: the chosen λ leaves the factors real signal (no bias-only collapse)."""
    ratings = planted_ratings()
    train_part, test_part = random_split(ratings, test_fraction=0.2, seed=0)
    model = NMFModel(feedback="explicit", n_components=8, **FAST).fit(train_part)
    rmse = rating_metrics(model, test_part)["rmse"]
    baseline = bias_only_rmse(train_part, test_part)
    assert rmse < 0.8 * baseline, (rmse, baseline, model.regularization_)
    assert model.search_results_[0]["rmse"] > rmse  # the strongest λ of the path was not the answer
    # The fixed rule it replaces, λ = Σc / (n_users + n_items), collapses to the biases here.
    old_rule = NMFModel(feedback="explicit", n_components=8, regularization=train_part.nnz / sum(train_part.shape),
                        **FAST).fit(train_part)
    assert rating_metrics(old_rule, test_part)["rmse"] > 0.95 * baseline


def test_chosen_parameters_round_trip_through_the_model_directory(auto_model, plays, tmp_path):
    ids = np.arange(plays.shape[0]), np.arange(plays.shape[1])
    Recommender(auto_model, *ids, plays).save(tmp_path / "model")
    loaded = Recommender.load(tmp_path / "model").model
    assert loaded.regularization_ == auto_model.regularization_
    assert loaded.confidence_ == auto_model.confidence_ and loaded.alpha_ == auto_model.alpha_
    assert loaded.frequency_scale_ == auto_model.frequency_scale_ and loaded.get_params()["frequency_scale"] == "auto"
    assert loaded.search_results_ == auto_model.search_results_
    users = np.arange(5)
    np.testing.assert_allclose(loaded.recommend_batch(users, 5)[1], auto_model.recommend_batch(users, 5)[1])


def test_directories_without_the_chosen_values_still_load(tmp_path):
    """Directories written before the search recorded confidence, alpha and its table: the parameters'."""
    model = NMFModel(n_components=3, confidence="linear", alpha=2.0, regularization=1.0, **FAST)
    path = model.fit(clustered_plays(60, 40)).save(tmp_path / "model")
    artifact = read_model_dir(path)
    for name in ("confidence", "alpha", "search_results"):
        del artifact.metadata["fit"][name]
    write_model_dir(path, artifact)
    loaded = NMFModel.load(path)
    assert (loaded.confidence_, loaded.alpha_, loaded.search_results_) == ("linear", 2.0, None)
    np.testing.assert_allclose(loaded.fold_in([1, 2], [3, 1]), model.fold_in([1, 2], [3, 1]))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"confidence": "sqrt"}, r"`confidence` must be one of 'linear', 'log', 'bm25' .*got 'sqrt'"),
        ({"alpha": -2.0}, r"`alpha` must be a finite number ≥ 0 .*got -2.0"),
        ({"alpha": "auto"}, r"`alpha` must be a finite number ≥ 0 .*got 'auto'"),
        ({"alpha": None, "params": "auto"}, r"'auto' needs the state to record its choice\); got 'auto'"),
    ],
)
def test_recorded_values_that_cannot_describe_the_model_are_refused(tmp_path, edit, message):
    path = NMFModel(n_components=3, regularization=1.0, **FAST).fit(clustered_plays(60, 40)).save(tmp_path / "m")
    artifact = read_model_dir(path)
    fit = artifact.metadata["fit"]
    if edit.pop("params", None):  # an 'auto' parameter whose choice is missing
        fit["params"]["alpha"] = artifact.metadata["params"]["alpha"] = "auto"
    fit.update(edit)
    write_model_dir(path, artifact)
    with pytest.raises(ArtifactError, match=message):
        NMFModel.load(path)


@pytest.fixture(scope="module")
def plays_file(tmp_path_factory):
    return generated_plays_csv(tmp_path_factory.mktemp("tune"))


def test_tune_writes_what_train_params_uses(plays_file, tmp_path, capsys):
    params = tmp_path / "params.json"
    assert main(["tune", str(plays_file), "-o", str(params), "--components", "6", "--iterations", "20",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "* = chosen" in out and f"--params {params}" in out and "ndcg@10" in out
    written = json.loads(params.read_text())
    chosen = written["params"]
    assert chosen["feedback"] == "implicit" and chosen["n_components"] == 6
    assert chosen["confidence"] in tuning.CONFIDENCE_GRID and isinstance(chosen["regularization"], float)
    assert [row["chosen"] for row in written["search"]["table"]].count(True) == 1
    screens = [row for row in written["search"]["table"] if row["screen"]]
    # The default search screens both other scalings, and ν = 1.
    assert {(row["confidence"], row["frequency_scale"]) for row in screens} == {
        ("linear", 0.0), ("bm25", 0.0), ("log", 1.0)}
    assert [line.split()[2] for line in out.splitlines() if line.startswith("  s ")] == [
        row["confidence"] for row in screens]
    assert main(["train", str(plays_file), "--params", str(params), "-o", str(tmp_path / "m"),
                 "--iterations", "20", "--threads", "1", "--no-eval"]) == 0
    model = Recommender.load(tmp_path / "m").model
    assert model.regularization_ == chosen["regularization"] and model.confidence_ == chosen["confidence"]
    assert model.frequency_scale_ == chosen["frequency_scale"] in tuning.FREQUENCY_SCALE_GRID
    assert model.n_components_ == 6 and model.search_results_ is None  # numbers: nothing left to search
    # An option on the command line wins over the file.
    assert main(["train", str(plays_file), "--params", str(params), "--regularization", "0.5",
                 "-o", str(tmp_path / "m2"), "--iterations", "5", "--threads", "1", "--no-eval"]) == 0
    assert Recommender.load(tmp_path / "m2").model.regularization_ == 0.5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read --params"),
        (b"{not json", "is not JSON"),
        (b"[1, 2]", 'has no "params" object'),
        (b'{"params": {"regularization": 1, "rm -rf /": 2}}', "unknown parameter"),
        (b'{"params": {"regularization": -3}}', "`regularization` must be"),
        (b'{"params": {"n_components": "many"}}', "`n_components` must be"),
        (b'{"params": {"feedback": "explicit", "regularization": 1.0}}', "was tuned for --feedback 'explicit'"),
        (b" " * (1 << 20) + b"{}", "larger than"),
    ],
)
def test_bad_params_files_are_refused_with_a_fix(plays_file, tmp_path, capsys, content, message):
    path = tmp_path / "params.json"
    if content is not None:
        path.write_bytes(content)
    assert main(["train", str(plays_file), "--params", str(path), "-o", str(tmp_path / "m"), "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert "timbral tune" in err or "tune again" in err


def test_large_data_searches_on_a_seeded_user_sample(plays, monkeypatch):
    monkeypatch.setattr(tuning, "SAMPLE_MAX_INTERACTIONS", plays.nnz // 3)
    params = NMFModel(n_components=6, **FAST).get_params()
    found = tuning.search(plays, params)
    assert 0 < found.sample_users < plays.shape[0] and found.n_users == plays.shape[0]
    assert found.table and set(found.params) == {"regularization", "confidence", "frequency_scale"}
    assert choices(tuning.search(plays, params).table) == choices(found.table)  # the sample is seeded


def test_nothing_to_validate_keeps_defaults_and_says_so():
    tiny = sp.csr_matrix(np.eye(6, dtype=np.float32) * 3)  # one interaction per user: nothing to hold out
    model = NMFModel(n_components=2, confidence="auto", alpha="auto", **FAST).fit(tiny)
    assert model.search_results_ == [] and model.confidence_ == "log" and model.alpha_ == 1.0
    assert model.regularization_ == pytest.approx((6 + np.log1p(3.0) * 6) / 12)


def test_warm_start_continues_from_the_previous_factors(plays):
    fixed = {"n_components": 6, "regularization": 2.0, "confidence": "log", "n_threads": 1}
    model = NMFModel(**fixed, max_iter=40, warm_start=True).fit(plays)
    converged = model.loss_history_[-1]
    model.set_params(max_iter=1).fit(plays)
    cold = NMFModel(**fixed, max_iter=1).fit(plays)
    assert model.loss_history_[0] <= converged * 1.001 < cold.loss_history_[0]
    with pytest.raises(ValidationError, match=r"warm_start=True needs the previous fit's shapes"):
        model.fit(plays[:50])
    with pytest.raises(ValidationError, match="`warm_start` must be a builtins.bool; got 1"):
        NMFModel(warm_start=1).fit(plays)


def test_auto_values_are_validated():
    with pytest.raises(ValidationError, match="`n_components`='auto' needs feedback 'implicit' or 'explicit'"):
        NMFModel(n_components="auto", feedback="frobenius").fit(sp.csr_matrix(np.ones((4, 4))))
    with pytest.raises(ValidationError, match=r"`confidence` must be one of .*'auto'; got 'sqrt'"):
        NMFModel(confidence="sqrt").fit(sp.csr_matrix(np.ones((4, 4))))
    with pytest.raises(ValidationError, match=r"`alpha` must be .*; got 'AUTO'"):
        NMFModel(alpha="AUTO").fit(sp.csr_matrix(np.ones((4, 4))))


def test_tune_explicit_feedback_as_json(tmp_path, capsys):
    ratings = planted_ratings(n_users=80, n_items=50, density=0.3)
    coo = ratings.tocoo()
    data = tmp_path / "ratings.csv"
    data.write_text("user,item,rating\n" + "".join(f"{u},{i},{r:.1f}\n" for u, i, r in
                                                   zip(coo.row, coo.col, coo.data, strict=True)))
    out = tmp_path / "p.json"
    assert main(["tune", str(data), "--feedback", "explicit", "--components", "4", "-o", str(out), "--json",
                 "--iterations", "20", "--threads", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["output"] == str(out) and printed["search"]["metric"] == "rmse"
    params = json.loads(out.read_text())["params"]
    assert set(params) == {"feedback", "n_components", "regularization", "frequency_scale"}  # no confidence
    assert params["feedback"] == "explicit" and params["n_components"] == 4


def test_tune_refuses_bad_input(tmp_path, capsys):
    assert main(["tune", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "p.json")]) == 2
    assert "timbral: error:" in capsys.readouterr().err and not (tmp_path / "p.json").exists()
    assert main(["tune", str(tmp_path / "missing.csv"), "--components", "many"]) == 2
    assert "expected a positive integer, got 'many'" in capsys.readouterr().err


def test_frequency_scale_is_searched_by_default_from_a_screen_one_step_weaker(plays):
    """ν = 1 gets one short warm fit at half the best λ at ν = 0 (its best sits about there); it is
    recorded in ``frequency_scale_`` and the table, and a screen row is never the one chosen."""
    model = NMFModel(n_components=6, confidence="log", **FAST).fit(plays)
    assert model.get_params()["frequency_scale"] == "auto"
    table = model.search_results_
    screen = [row for row in table if row["frequency_scale"] == 1.0 and row["screen"]]
    assert len(screen) == 1 and screen[0]["n_iter"] <= tuning.SCREEN_MAX_ITER
    before = table[: table.index(screen[0])]  # the ν = 0 path it was screened from
    assert {row["frequency_scale"] for row in before} == {0.0}
    best_plain = max(before, key=lambda row: row["ndcg@10"])
    assert screen[0]["regularization"] == pytest.approx(best_plain["regularization"] / 2)
    chosen = next(row for row in table if row["chosen"])
    assert not chosen["screen"] and chosen["frequency_scale"] in tuning.FREQUENCY_SCALE_GRID
    assert model.frequency_scale_ == chosen["frequency_scale"] and model.regularization_ == chosen["regularization"]


def test_a_departure_from_the_defaults_must_beat_the_noise():
    """The noise-aware rule: 'linear' is 0.01 better on average, but across user groups the
    difference swings by ±0.2, so the default 'log' is kept; a steady 0.01 gain wins."""
    table = [{"confidence": "log", "alpha": 1.0, "frequency_scale": 0.0, "ndcg@10": 0.30},
             {"confidence": "linear", "alpha": 1.0, "frequency_scale": 0.0, "ndcg@10": 0.31}]

    def loss(row):
        return -row["ndcg@10"]

    searched = ["regularization", "confidence"]
    noisy = [np.array([0.2, 0.4, 0.3, 0.3]), np.array([0.4, 0.22, 0.32, 0.3])]
    assert tuning._select(table, noisy, loss, searched, True) == 0
    steady = [np.array([0.30, 0.29, 0.31, 0.30]), np.array([0.31, 0.30, 0.32, 0.31])]
    assert tuning._select(table, steady, loss, searched, True) == 1
    # A parameter the caller fixed is no departure: the best row wins.
    assert tuning._select(table, noisy, loss, ["regularization"], True) == 1
    # RMSE: lower is better, the same rule.
    rated = [{"confidence": None, "alpha": None, "frequency_scale": nu, "rmse": e}
             for nu, e in ((0.0, 0.9), (1.0, 0.8))]
    steady_rmse = [np.array([0.9, 0.91, 0.89]), np.array([0.8, 0.81, 0.79])]
    assert tuning._select(rated, steady_rmse, lambda row: row["rmse"], ["frequency_scale"], False) == 1
    assert tuning._select(rated, steady_rmse[::-1], lambda row: row["rmse"], ["frequency_scale"], False) == 0


def test_train_runs_the_search_once_and_refits_with_its_choice(plays, monkeypatch):
    """Issue 9 (e): the holdout model and the refit share one search, run on the training part."""
    import timbral.train as pipeline

    calls = []
    original = tuning.search

    def counting(user_items, params, **options):
        calls.append(user_items.nnz)
        return original(user_items, params, **options)

    monkeypatch.setattr(tuning, "search", counting)
    monkeypatch.setattr(pipeline, "search", counting)
    ids = np.arange(plays.shape[0]), np.arange(plays.shape[1])
    result = train(Interactions(plays, *ids), model=NMFModel(n_components=6, **FAST), seed=0)
    assert len(calls) == 1 and calls[0] < plays.nnz  # once, on the training part only
    model = result.recommender.model
    chosen = next(row for row in model.search_results_ if row["chosen"])
    assert model.regularization_ == chosen["regularization"] and model.user_items_.nnz == plays.nnz
    assert model.get_params()["regularization"] == "auto" and "search" in result.timings


def test_a_scaling_that_passes_its_screen_gets_a_whole_path_and_is_chosen(plays, monkeypatch):
    """The screen with a known answer: with bm25 as the protected default and log screened one step
    stronger than bm25's best λ / centre (both set here) and k = 4, bm25's idf weights lose the
    clusters of these plays (0.200 at its best λ against 0.225 for log's screen), so log's screen
    beats it by more than the noise, log walks a whole path from one step above its screen point,
    and a point of that path is chosen."""
    monkeypatch.setitem(tuning.DEFAULTS, "confidence", "bm25")
    monkeypatch.setitem(tuning.SCREEN_STEPS, "log", -1)
    params = NMFModel(n_components=4, frequency_scale=0, **FAST).get_params()
    found = tuning.search(plays, params, confidences=("bm25", "log", "linear"))
    chosen = next(row for row in found.table if row["chosen"])
    assert found.params["confidence"] == chosen["confidence"] == "log" and not chosen["screen"]
    assert [row["confidence"] for row in found.table if row["screen"]] == ["log", "linear"]
    best_bm25 = max(row["ndcg@10"] for row in found.table if row["confidence"] == "bm25")
    assert chosen["ndcg@10"] > best_bm25 + 0.01
    path = [row["regularization"] for row in found.table if row["confidence"] == "log" and not row["screen"]]
    assert len(path) >= tuning.PATIENCE + 1 and chosen["regularization"] in path


def test_keeping_log_costs_only_the_screens(plays):
    """The cost rule of confidence="auto": when log is kept, the search is the log-only search plus
    one short fit of at most SCREEN_MAX_ITER epochs per other scaling (counted in epochs, not
    seconds), and it chooses what the log-only search chooses."""
    only_log = NMFModel(n_components=6, confidence="log", frequency_scale=0, **FAST).fit(plays).search_results_
    auto = NMFModel(n_components=6, frequency_scale=0, **FAST).fit(plays).search_results_
    assert next(row for row in auto if row["chosen"])["confidence"] == "log"
    assert choices([row for row in auto if not row["screen"]]) == choices(only_log)
    screens = [row for row in auto if row["screen"]]
    assert len(screens) == len(tuning.CONFIDENCE_GRID) - 1
    assert sum(row["n_iter"] for row in screens) <= len(screens) * tuning.SCREEN_MAX_ITER


def test_the_default_confidence_is_chosen_by_validation(plays):
    model = NMFModel(n_components=6, **FAST).fit(plays)
    assert model.get_params()["confidence"] == "auto" and model.confidence_ in tuning.CONFIDENCE_GRID
    assert {row["confidence"] for row in model.search_results_} == set(tuning.CONFIDENCE_GRID)


@pytest.mark.parametrize("confidences", [(), ("log", "log"), ("log", "sqrt"), ("log", None), ("log; rm -rf /",)])
def test_bad_confidence_candidates_are_refused(plays, confidences):
    params = NMFModel(n_components=4, **FAST).get_params()
    with pytest.raises(ValidationError, match=r"`confidences` must be distinct scalings among 'log', 'linear', "
                                              r"'bm25', at least one; got .* Pass e.g. \('log', 'linear'\)"):
        tuning.search(plays, params, confidences=confidences)


def test_a_nu_that_passes_its_screen_walks_its_own_path_and_is_chosen(plays, monkeypatch):
    """The ν screen with a known answer: with ν = 1 as the protected default, ν = 0 must beat its
    screen by the noise rule, which it does not on these plays (0.2152 against 0.2148 at k = 4),
    so ν = 1 walks a whole path from one step above its screen point (ν = 0's best λ), and a point
    of that path is chosen."""
    monkeypatch.setitem(tuning.DEFAULTS, "frequency_scale", 1.0)
    found = tuning.search(plays, NMFModel(n_components=4, confidence="log", **FAST).get_params())
    chosen = next(row for row in found.table if row["chosen"])
    assert found.params["frequency_scale"] == chosen["frequency_scale"] == 1.0 and not chosen["screen"]
    screen = next(row for row in found.table if row["screen"])
    path = [row["regularization"] for row in found.table if row["frequency_scale"] == 1.0 and not row["screen"]]
    assert path[0] == pytest.approx(2 * screen["regularization"])  # one step above the screen point
    assert path[:-1] == sorted(path[:-1], reverse=True) and len(path) >= tuning.PATIENCE + 2  # + the midpoint
    assert chosen["regularization"] in path
