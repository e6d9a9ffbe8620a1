"""Train/test splits (timbral.split)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from timbral._validation import DEFAULT_SEED
from timbral.data import Interactions
from timbral.exceptions import ValidationError
from timbral.split import leave_k_out, per_user_temporal_split, random_split, temporal_split


def random_data(seed: int = 0, n_users: int = 60, n_items: int = 40) -> Interactions:
    rng = np.random.default_rng(seed)
    n = 900
    df = pd.DataFrame({
        "user": rng.integers(0, n_users, n),
        "item": rng.integers(0, n_items, n),
        "plays": rng.integers(1, 20, n),
        "ts": rng.integers(1_500_000_000, 1_500_000_000 + 100, n),  # many ties
    })
    return Interactions.from_frame(df, min_user_interactions=1, max_user_interactions=None, max_value=None)


def assert_partition(data: sp.csr_matrix, train: sp.csr_matrix, test: sp.csr_matrix) -> None:
    assert train.shape == test.shape == data.shape
    assert train.dtype == test.dtype == data.dtype
    assert train.has_sorted_indices and test.has_sorted_indices
    assert train.nnz + test.nnz == data.nnz
    assert train.multiply(test).nnz == 0  # no pair in both
    assert abs(train + test - data).max() == 0  # nothing lost, values intact


SPLITS = {
    "random": lambda d, seed: random_split(d, 0.25, seed=seed),
    "leave_k_out": lambda d, seed: leave_k_out(d, k=2, seed=seed),
    "temporal": lambda d, seed: temporal_split(d, test_fraction=0.3),
    "per_user_temporal": lambda d, seed: per_user_temporal_split(d, test_fraction=0.3),
}


@pytest.mark.parametrize("name", SPLITS)
def test_split_partitions_and_reproduces(name):
    data = random_data()
    train, test = SPLITS[name](data, 3)
    assert_partition(data.user_items, train, test)
    again_train, again_test = SPLITS[name](data, 3)
    assert (again_train != train).nnz == 0 and (again_test != test).nnz == 0
    assert test.nnz > 0


def test_seeds_change_random_splits():
    data = random_data()
    assert (random_split(data, seed=1)[1] != random_split(data, seed=2)[1]).nnz > 0
    assert (leave_k_out(data, seed=1)[1] != leave_k_out(data, seed=2)[1]).nnz > 0
    generator = np.random.default_rng(5)
    assert_partition(data.user_items, *random_split(data, seed=generator))


def test_the_default_seed_is_the_projects():
    """One default seed (42) for splits, fits and the command line: a default split is
    the split `timbral evaluate` and `train()` make."""
    data = random_data()
    for split in (random_split, leave_k_out):
        assert (split(data)[1] != split(data, seed=DEFAULT_SEED)[1]).nnz == 0
    assert_partition(data.user_items, *random_split(data, seed=None))  # None: fresh entropy, still a partition


def test_the_service_reads_the_same_default_seed():
    from timbral.server.config import Config, ConfigError

    assert Config.from_env({}).nmf_random_state == DEFAULT_SEED
    with pytest.raises(ConfigError, match=r"NMF_RANDOM_STATE=-1: expected a seed >= 0, as `timbral train --seed`"):
        Config.from_env({"NMF_RANDOM_STATE": "-1"})


def test_random_split_per_user_counts_and_small_users():
    counts = np.array([1, 4, 5, 10, 3])
    rows = np.repeat(np.arange(5), counts)
    cols = np.concatenate([np.arange(c) for c in counts])
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(5, 10))
    train, test = random_split(matrix, test_fraction=0.2, seed=0, min_interactions=5)
    np.testing.assert_array_equal(np.diff(test.indptr), [0, 0, 1, 2, 0])  # round(0.2 n), n >= 5 only
    train, test = random_split(matrix, test_fraction=0.9, seed=0, min_interactions=0)
    np.testing.assert_array_equal(np.diff(test.indptr), [0, 3, 4, 9, 2])  # every user keeps one


def test_leave_k_out_counts():
    data = random_data()
    counts = np.diff(data.user_items.indptr)
    train, test = leave_k_out(data, k=2, seed=0, min_interactions=5)
    np.testing.assert_array_equal(np.diff(test.indptr), np.where(counts >= 5, 2, 0))
    _, test = leave_k_out(data, k=7, seed=0, min_interactions=1)
    np.testing.assert_array_equal(np.diff(test.indptr), np.where(counts >= 8, 7, 0))


def test_temporal_split_global_cut():
    data = random_data()
    cut = 1_500_000_050
    train, test = temporal_split(data, cut=cut)
    assert_partition(data.user_items, train, test)
    times = data.timestamps
    train_times = times.multiply(train != 0).data
    test_times = times.multiply(test != 0).data
    assert train_times.max() < cut <= test_times.min()  # nothing later in train than in test
    _, by_fraction = temporal_split(data.user_items, data.timestamps, test_fraction=0.3)
    assert 0.25 < by_fraction.nnz / data.nnz < 0.4


def test_per_user_temporal_split_takes_each_users_latest():
    data = random_data()
    train, test = per_user_temporal_split(data, test_fraction=0.3, min_interactions=5)
    times = data.timestamps.tocsr()
    for user in range(data.n_users):
        tr = times[user].toarray().ravel()[train[user].indices]
        te = times[user].toarray().ravel()[test[user].indices]
        if te.size:
            assert tr.max() <= te.min()
    counts = np.diff(data.user_items.indptr)
    expected = np.where(counts >= 5, np.clip(np.floor(0.3 * counts + 0.5), 1, counts - 1), 0)
    np.testing.assert_array_equal(np.diff(test.indptr), expected)


def test_split_errors():
    data = random_data()
    with pytest.raises(ValidationError, match="test_fraction must be a number strictly between 0 and 1, got 1.5"):
        random_split(data, test_fraction=1.5)
    with pytest.raises(ValidationError, match="k must be an integer >= 1, got 0"):
        leave_k_out(data, k=0)
    with pytest.raises(ValidationError, match="pass exactly one of cut="):
        temporal_split(data)
    with pytest.raises(ValidationError, match="needs timestamps: pass timestamps="):
        temporal_split(data.user_items, cut=0)
    with pytest.raises(ValidationError, match="must have the sparsity pattern of data"):
        per_user_temporal_split(data.user_items, sp.eye(data.n_users, data.n_items, format="csr"))
    with pytest.raises(ValidationError, match="data must be an Interactions or a scipy.sparse matrix, got list"):
        random_split([[1, 2]])
    with pytest.raises(ValidationError, match=r"`seed` must be a non-negative integer seed, a numpy.random.Generator "
                                              r"or None; got '0'\. Pass e.g. seed=42"):
        random_split(data, seed="0")
    with pytest.raises(ValidationError, match="`seed` .* got -1"):
        leave_k_out(data, seed=-1)
