"""Regression tests for the model-side points of issue 10 (hardening), one per point,
plus issue 8's seen-items and fold-in Gram fixes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import threading
import tracemalloc

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_array_equal

import timbral.artifact
import timbral.nmf.estimator
from timbral import NMFModel, Recommender
from timbral._validation import check_random_state
from timbral.artifact import _canonical, read_model_dir
from timbral.data import Interactions
from timbral.exceptions import ArtifactError, ValidationError
from timbral.generate import generate_interactions
from timbral.nmf import FittedState
from timbral.train import train


def plays(n_users=50, n_items=40, seed=0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    matrix = sp.random(n_users, n_items, density=0.15, random_state=rng, format="csr", dtype=np.float32)
    matrix.data = np.ceil(matrix.data * 10)
    return matrix


@pytest.fixture(scope="module")
def fitted() -> NMFModel:
    return NMFModel(n_components=4, max_iter=10, tol=0, n_threads=1).fit(plays())


# -- 10.2: explain costs O(|history|·k² + k³), not O(n_items·k²) ------------------------


def test_issue10_2_explain_never_touches_all_item_factors():
    n_items, k = 200_000, 16
    rng = np.random.default_rng(0)
    history = sp.csr_matrix((np.ones(6, np.float32), ([0] * 6, [3, 9, 70, 700, 7000, 70000])), shape=(2, n_items))
    model = NMFModel.from_fitted(
        NMFModel(n_components=k, confidence="log").get_params(),
        FittedState(
            user_factors=rng.random((2, k), dtype=np.float32),
            item_factors=rng.random((n_items, k), dtype=np.float32),
            user_bias=np.zeros(2, np.float32),
            item_bias=np.zeros(n_items, np.float32),
            global_mean=0.0,
            regularization=0.5,
            n_iter=1,
            loss_history=[1.0],
            user_items=history,
        ),
    )
    first = model.explain(0, 5)  # builds the per-model part once
    tracemalloc.start()
    try:
        again = model.explain(0, 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert again == first
    assert peak < n_items * k * 8 / 20  # the old code cast all of H to float64 on every call


# -- 10.8: versioned directories, one atomic flip ----------------------------------------


def test_issue10_8_a_symlinked_model_directory_stays_a_symlink(tmp_path, fitted):
    fitted.save(tmp_path / "v1")
    (tmp_path / "current").symlink_to("v1")
    fitted.save(tmp_path / "current")
    assert (tmp_path / "current").is_symlink()
    assert (tmp_path / "v1" / "metadata.json").is_file()  # the operator's directory is left alone
    assert_array_equal(NMFModel.load(tmp_path / "current").item_factors_, fitted.item_factors_)


def test_issue10_8_a_plain_directory_from_timbral_0_1_is_replaced_by_a_version(tmp_path, fitted):
    saved = fitted.save(tmp_path / "saved")
    plain = tmp_path / "plain"
    shutil.copytree(saved.resolve(), plain)  # the old layout: files directly in the directory
    assert_array_equal(NMFModel.load(plain).user_factors_, fitted.user_factors_)
    fitted.save(plain)
    assert plain.is_symlink() and NMFModel.load(plain).n_iter_ == fitted.n_iter_
    fitted.save(plain)  # the moved-aside original is pruned by the next save
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".plain.version-")]) == 2


def test_issue10_8_there_is_never_a_moment_without_a_model(tmp_path, fitted, monkeypatch):
    target = tmp_path / "model"
    fitted.save(target)
    replace = os.replace
    seen = []

    def checked_replace(src, dst):
        replace(src, dst)
        seen.append((target / "metadata.json").is_file())

    monkeypatch.setattr(timbral.artifact.os, "replace", checked_replace)
    fitted.save(target)
    assert seen and all(seen)  # the old swap moved the directory aside first


def test_issue10_8_a_reload_racing_saves_never_fails(tmp_path, fitted):
    target = tmp_path / "model"
    fitted.save(target)
    errors: list[Exception] = []
    done = threading.Event()

    def reload_forever():
        while not done.is_set():
            try:
                read_model_dir(target)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)

    reader = threading.Thread(target=reload_forever)
    reader.start()
    try:
        for _ in range(15):
            fitted.save(target)
    finally:
        done.set()
        reader.join()
    assert errors == []
    assert len([p for p in tmp_path.iterdir() if p.name.startswith(".model.version-")]) <= 2


def test_issue10_8_concurrent_saves_use_unique_temporary_names(tmp_path, fitted):
    errors: list[Exception] = []

    def save():
        try:
            fitted.save(tmp_path / "model")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert_array_equal(NMFModel.load(tmp_path / "model").user_factors_, fitted.user_factors_)


# -- 10.9: metadata inside the checksum, parameters validated at load -------------------


@pytest.mark.parametrize(("field", "value"), [("feedback", "explicit"), ("alpha", 40.0)])
def test_issue10_9_edited_parameters_are_refused(tmp_path, fitted, field, value):
    path = fitted.save(tmp_path / "model")
    meta = json.loads((path / "metadata.json").read_text())
    meta["fit"]["params"][field] = value
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="metadata.json' does not match its sha256 checksum"):
        NMFModel.load(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["fit"]["params"].update(alpha=-1.0),
         r"`alpha` must be a number in \[0, inf\] or one of 'auto'; got -1.0"),
        (lambda m: m["fit"]["params"].update(feedback="ratings"), r"`feedback` must be one of .*got 'ratings'"),
        (lambda m: m["fit"].update(global_mean=3.5), r"global_mean=3.5 .* feedback='explicit' only"),
        (lambda m: m["fit"].update(regularization=-1.0), r"`regularization` must be a finite number ≥ 0; got -1.0"),
    ],
)
def test_issue10_9_resigned_invalid_parameters_are_refused(tmp_path, fitted, edit, message):
    """Even with a recomputed checksum, parameters that cannot describe this model are refused."""
    path = fitted.save(tmp_path / "model")
    artifact = read_model_dir(path)
    edit(artifact.metadata)
    artifact.arrays = dict(artifact.arrays)
    timbral.artifact.write_model_dir(path, artifact)
    with pytest.raises(ArtifactError, match=message):
        NMFModel.load(path)
    with pytest.raises(ArtifactError, match=message):
        Recommender.load(path)


def test_issue10_9_old_single_file_models_are_refused_with_their_version(tmp_path):
    legacy = tmp_path / "model.npz"
    np.savez(legacy, metadata=np.frombuffer(json.dumps({"format_version": 1}).encode(), np.uint8))
    with pytest.raises(ArtifactError, match=r"single-file model \(format version 1\).*Refit the model and save"):
        NMFModel.load(legacy)


# -- 10.13: explicitly stored zeros are not interactions --------------------------------


def test_issue10_13_stored_zeros_are_dropped():
    clean = plays()
    rows = [0, 1, 2]
    cols = [int(np.flatnonzero(clean[r].toarray()[0] == 0)[0]) for r in rows]  # items they never played
    coo = clean.tocoo()
    zeros = sp.csr_matrix(  # three explicitly stored zeros
        (np.concatenate([coo.data, np.zeros(3, np.float32)]),
         (np.concatenate([coo.row, rows]), np.concatenate([coo.col, cols]))),
        shape=clean.shape,
    )
    assert zeros.nnz == clean.nnz + 3
    before = zeros.copy()
    settings = dict(n_components=3, max_iter=5, tol=0, n_threads=1, regularization=0.1)
    model = NMFModel(**settings).fit(zeros)
    reference = NMFModel(**settings).fit(clean)
    assert model.user_items_.nnz == clean.nnz
    assert_array_equal(model.item_factors_, reference.item_factors_)
    assert (zeros != before).nnz == 0 and zeros.nnz == before.nnz  # the caller's matrix is untouched
    assert cols[0] in model.recommend(0, k=40)[0]  # a stored zero is not "seen"


# -- 10.15: k is clamped to the number of items -----------------------------------------


def test_issue10_15_k_is_clamped_to_the_catalogue(fitted):
    n_items = fitted.n_items_
    ids, scores = fitted.recommend_batch([0, 1], k=10**6)
    assert ids.shape == scores.shape == (2, n_items)
    assert len(fitted.recommend(0, k=10**8)[0]) == n_items - fitted.user_items_[0].nnz
    assert len(fitted.similar_items(0, k=10**8)[0]) == n_items - 1
    rec = Recommender(fitted, np.arange(fitted.n_users_), np.arange(n_items))
    assert len(rec.recommend("no such user", k=10**8).items) == n_items


# -- issue 8: seen items belong to the Recommender; fold-in reuses the Gram -------------


def test_recommender_user_items_drive_exclusion_and_survive_save_load(tmp_path):
    full = plays(seed=3)
    train_part = full.copy()
    train_part.data[train_part.indptr[5] : train_part.indptr[6]] = 0  # user 5's items held out
    train_part.eliminate_zeros()
    model = NMFModel(n_components=3, max_iter=5, n_threads=1).fit(train_part)
    rec = Recommender(model, np.arange(full.shape[0]), np.arange(full.shape[1]), user_items=full)
    held_out = set(full[5].indices.tolist())
    assert held_out and not held_out & {i for i, _ in rec.recommend(5, k=40).items}
    assert not held_out & {i for i, _ in rec.recommend_batch([5], k=40)[0].items}
    back = Recommender.load(rec.save(tmp_path / "model"))
    assert (back.user_items != full).nnz == 0
    assert not held_out & {i for i, _ in back.recommend(5, k=40).items}
    assert back.explain(5, 0) == rec.explain(5, 0)  # explanations still use the training matrix


def test_train_without_refit_never_recommends_what_the_user_has():
    interactions = Interactions.from_frame(generate_interactions(80, 50, 1600, seed=2))
    model = NMFModel(n_components=4, max_iter=5, n_threads=1)
    rec = train(interactions, model=model, test_fraction=0.3, refit=False).recommender
    assert rec.model.user_items_.nnz < interactions.user_items.nnz  # fitted on the training part only
    for row, user in enumerate(rec.user_ids.tolist()):
        given = set(rec.item_ids[interactions.user_items[row].indices].tolist())
        assert not given & {i for i, _ in rec.recommend(user, k=50).items}


def test_fold_in_reuses_the_cached_gram(fitted, monkeypatch):
    calls = []
    original = timbral.nmf.estimator.regularized_gram

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(timbral.nmf.estimator, "regularized_gram", counting)
    fresh = NMFModel(n_components=4, max_iter=10, tol=0, n_threads=1).fit(plays())
    first = fresh.fold_in([1, 2, 3], [1.0, 4.0, 2.0])
    for _ in range(3):
        assert_array_equal(fresh.fold_in([1, 2, 3], [1.0, 4.0, 2.0]), first)
    assert len(calls) == 1


# -- bad and hostile input at the entry points this layering added ----------------------


def test_bad_seen_matrix_is_refused(fitted):
    with pytest.raises(ValidationError, match=r"`user_items` must have shape \(50, 40\); got \(3, 40\)"):
        fitted.recommend(0, user_items=sp.csr_matrix((3, 40)))
    with pytest.raises(ValidationError, match=r"`user_items` must have shape \(50, 40\); got \(50, 41\)"):
        Recommender(fitted, np.arange(50), np.arange(40), user_items=sp.csr_matrix((50, 41)))


@pytest.mark.parametrize(
    ("params", "change", "message"),
    [
        ({"bogus": 1}, {}, r"`params` has unknown parameter\(s\) \['bogus'\]"),
        ({"n_components": 0}, {}, r"`n_components` must be an integer in \[1, inf\] or one of 'auto'; got 0"),
        ({}, {"user_factors": np.full((50, 4), np.nan, np.float32)}, r"`user_factors` must hold finite floats"),
        ({}, {"item_factors": -np.ones((40, 4), np.float32)}, r"factors must be non-negative"),
        ({}, {"item_bias": np.zeros(39, np.float32)}, r"bias shapes \(50,\), \(39,\) do not match"),
        ({}, {"user_items": np.ones((50, 40))}, r"`user_items` must be a sparse matrix of shape \(50, 40\)"),
    ],
)
def test_from_fitted_refuses_parts_that_do_not_fit(fitted, params, change, message):
    state = FittedState(
        fitted.user_factors_, fitted.item_factors_, fitted.user_bias_, fitted.item_bias_, 0.0,
        fitted.regularization_, fitted.n_iter_, fitted.loss_history_, fitted.user_items_,
    )
    with pytest.raises(ValidationError, match=message):
        NMFModel.from_fitted(fitted.get_params() | params, dataclasses.replace(state, **change))


def test_train_wants_an_estimator():
    with pytest.raises(ValidationError, match=r"`model` must be an NMFModel; got dict"):
        train("unused.csv", model={"n_components": 3})
    with pytest.raises(ValidationError, match=r"`max_iter` must be an integer in \[1, inf\]; got 0"):
        train("unused.csv", model=NMFModel(max_iter=0))  # checked before any I/O


def test_random_state_becomes_a_generator_or_a_clear_error():
    generator = np.random.default_rng(5)
    assert check_random_state(generator) is generator
    assert check_random_state(7).random() == np.random.default_rng(7).random()
    for bad in (-1, 2.5, "42", True):
        with pytest.raises(ValidationError, match=r"`random_state` must be a non-negative integer seed"):
            check_random_state(bad)


def test_format_1_directories_still_load(tmp_path, fitted):
    """A directory written before seen items were stored apart: its seen items are the training matrix."""
    path = fitted.save(tmp_path / "model")
    artifact = read_model_dir(path)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    arrays = {name: a for name, a in artifact.arrays.items() if not name.startswith("seen_")}
    np.savez(legacy / "arrays.npz", **arrays)
    meta = {key: value for key, value in artifact.metadata.items() if key not in ("checksums", "nnz_seen")}
    meta["format_version"] = 1
    meta["checksums"] = {"arrays.npz": hashlib.sha256((legacy / "arrays.npz").read_bytes()).hexdigest(),
                         "metadata.json": hashlib.sha256(_canonical(meta)).hexdigest()}
    (legacy / "metadata.json").write_text(json.dumps(meta))
    back = Recommender.load(legacy)
    assert (back.user_items != fitted.user_items_).nnz == 0
    assert_array_equal(back.model.recommend(3)[0], fitted.recommend(3)[0])
