"""timbral.dask: workers read, clean and block the data, fit with distributed factors, score everyone.

Small data, one in-process LocalCluster for most tests; worker processes where a
process boundary or a killed process is the point.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")

from dask_support import local_client  # noqa: E402

from timbral import NMFModel, Recommender, load_interactions  # noqa: E402
from timbral.dask import CleaningRules, fit, read_blocks, recommend_all  # noqa: E402
from timbral.exceptions import ArtifactError, DataError, ValidationError  # noqa: E402
from timbral.generate import write_partitioned  # noqa: E402

SETTINGS = dict(n_components=6, max_iter=4, tol=0, random_state=5, n_threads=1, confidence="log")


@pytest.fixture(scope="module")
def client():
    with local_client() as client:
        yield client


@pytest.fixture(scope="module")
def plays(tmp_path_factory):
    """A generated dataset as 3 Parquet files, and the same rows as one file."""
    root = tmp_path_factory.mktemp("plays")
    write_partitioned(root / "parts", 300, 120, 6_000, seed=2, n_partitions=3)
    whole = pa.concat_tables([pq.read_table(f) for f in sorted((root / "parts").iterdir())])
    pq.write_table(whole, root / "all.parquet")
    return root


def load_reference(path, **options):
    return load_interactions(path, rating_col="plays", max_value=None, max_user_interactions=None, **options)


def dirty_partitions(root):
    """String ids; missing ids, NaN, negative and zero plays; duplicates across files."""
    rng = np.random.default_rng(0)
    files = []
    for p in range(3):
        n = 400
        users = rng.integers(0, 60, n).astype(str).astype(object)
        items = rng.integers(0, 40, n).astype(str).astype(object)
        plays = rng.integers(1, 20, n).astype(float)
        users[rng.random(n) < 0.02] = None
        items[rng.random(n) < 0.02] = None
        plays[rng.random(n) < 0.02] = np.nan
        plays[rng.random(n) < 0.02] = -3.0
        plays[rng.random(n) < 0.02] = 0.0
        plays[rng.random(n) < 0.01] = np.inf
        table = pa.table({"listener": users, "track": items, "plays": plays})
        files.append(root / f"part-{p}.parquet")
        pq.write_table(table, files[-1])
    return files


def gathered(client, blocks):
    import scipy.sparse as sp

    return sp.vstack(client.gather(blocks.user_blocks), format="csr"), sp.vstack(
        client.gather(blocks.item_blocks), format="csr"
    )


# -- reading -------------------------------------------------------------------------------


def test_blocks_equal_load_interactions_on_dirty_data(client, tmp_path):
    files = dirty_partitions(tmp_path)
    pq.write_table(pa.concat_tables([pq.read_table(f) for f in files]), tmp_path / "all.parquet")
    ref = load_interactions(tmp_path / "all.parquet", user_col="listener", item_col="track", rating_col="plays",
                            min_user_interactions=8, min_item_interactions=12, max_value=15,
                            max_user_interactions=40)
    blocks = read_blocks([str(f) for f in files], client, n_blocks=3, user_col="listener", item_col="track",
                         rating_col="plays",
                         rules=CleaningRules(min_user_interactions=8, min_item_interactions=12, max_value=15,
                                             max_user_interactions=40))
    R, Rt = gathered(client, blocks)
    assert (R != ref.user_items).nnz == 0 and (Rt != ref.user_items.T).nnz == 0
    np.testing.assert_array_equal(client.gather(blocks.user_ids), ref.user_ids)
    np.testing.assert_array_equal(client.gather(blocks.item_ids), ref.item_ids)
    for name in ("rows_read", "dropped_missing_id", "dropped_invalid_rating", "dropped_nonfinite_rating",
                 "dropped_negative_rating", "dropped_zero_rating", "dropped_implausible_value",
                 "duplicates_merged", "outlier_users", "sparse_users_removed", "sparse_items_removed",
                 "n_users", "n_items", "nnz"):
        assert getattr(blocks.report, name) == getattr(ref.report, name), name
    assert blocks.report.dropped_negative_rating > 0 and blocks.report.duplicates_merged > 0


def test_directory_glob_and_dask_dataframe_read_alike(client, plays):
    by_dir = read_blocks(plays / "parts", client, n_blocks=2, rating_col="plays")
    by_glob = read_blocks(str(plays / "parts" / "part-*.parquet"), client, n_blocks=4, rating_col="plays")
    # from_pandas, not dd.read_parquet: dask's reader trips a pandas deprecation warning (an error here).
    frame = dd.from_pandas(pq.read_table(plays / "all.parquet").to_pandas(), npartitions=3)
    by_frame = read_blocks(frame, client, n_blocks=3, rating_col="plays")
    R = gathered(client, by_dir)[0]
    assert (gathered(client, by_glob)[0] != R).nnz == 0 and (gathered(client, by_frame)[0] != R).nnz == 0
    assert (R != load_reference(plays / "all.parquet").user_items).nnz == 0
    assert by_frame.report.source == "dask DataFrame"


def test_bad_sources_and_rules(client, tmp_path):
    with pytest.raises(DataError, match=r"no Parquet files found at .*pass a directory of .parquet files"):
        read_blocks(tmp_path, client, n_blocks=2)
    with pytest.raises(ValidationError, match=r"source is an empty list of files"):
        read_blocks([], client, n_blocks=2)
    cases = {
        "columns": (pa.table({"user_id": [1, 2], "song": [3, 4]}),
                    r"\['item_id'\] not found among \['user_id', 'song'\] in '.*columns/a.parquet'"),
        "float_ids": (pa.table({"user_id": [1.5], "item_id": [3]}),
                      r"column 'user_id' has type double; ids must be integers or strings"),
        "all_missing": (pa.table({"user_id": pa.array([None, None], pa.int64()), "item_id": [3, 4]}),
                        r"every one of the 2 rows .* dropped .*missing_id: 2"),
        "mixed": (None, r"ids mix integers and strings across partitions"),
    }
    for name, (table, message) in cases.items():
        (tmp_path / name).mkdir()
        if table is None:
            pq.write_table(pa.table({"user_id": [1], "item_id": [2]}), tmp_path / name / "a.parquet")
            pq.write_table(pa.table({"user_id": ["x"], "item_id": [2]}), tmp_path / name / "b.parquet")
        else:
            pq.write_table(table, tmp_path / name / "a.parquet")
        with pytest.raises(DataError, match=message):
            read_blocks(tmp_path / name, client, n_blocks=2)
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "b.parquet").write_bytes(b"user_id,item_id\n1,2\n")
    with pytest.raises(DataError, match=r"cannot read '.*b.parquet' as Parquet .*pass only Parquet files"):
        read_blocks(tmp_path / "csv", client, n_blocks=2)
    with pytest.raises(ValidationError, match=r"max_value must be None or a positive number, got 'auto'; 'auto' needs"):
        CleaningRules(max_value="auto")
    with pytest.raises(ValidationError, match=r"min_user_interactions must be a non-negative integer, got -1"):
        CleaningRules(min_user_interactions=-1)


def test_hostile_ids_are_data_not_code(client, tmp_path):
    """Ids that look like paths, SQL or format strings are just strings, read as load_interactions reads them."""
    ids = ["../../etc/passwd", "'; DROP TABLE plays; --", "{0.__class__}", "%s%n", "\x00", "ü", "x" * 256] * 3
    pq.write_table(pa.table({"user_id": ids, "item_id": ["a", "b", "c"] * 7}), tmp_path / "h.parquet")
    blocks = read_blocks(tmp_path, client, n_blocks=2, rules=CleaningRules(min_user_interactions=1))
    ref = load_interactions(tmp_path / "h.parquet", min_user_interactions=1)
    np.testing.assert_array_equal(client.gather(blocks.user_ids), ref.user_ids)
    assert len(ref.user_ids) == 7
    (tmp_path / "long").mkdir()
    pq.write_table(pa.table({"user_id": ["a", "y" * 10_000], "item_id": ["b", "c"]}), tmp_path / "long" / "l.parquet")
    with pytest.raises(DataError, match=r"column 'user_id', row 2 of its partition, is 10,000 bytes long; ids are at"):
        read_blocks(tmp_path / "long", client, n_blocks=2)


# -- fitting --------------------------------------------------------------------------------


@pytest.mark.parametrize("params", [{"alpha": 2.0}, {"confidence": "linear", "regularization": 0.5},
                                    {"feedback": "frobenius", "l1_ratio": 0.5}])
def test_fit_equals_the_single_machine_fit(client, plays, params, tmp_path):
    ref = load_reference(plays / "all.parquet")
    local = NMFModel(**(SETTINGS | params)).fit(ref.user_items)
    result = fit(NMFModel(**(SETTINGS | params)), plays / "parts", client, rating_col="plays", n_blocks=3,
                 checkpoint=str(tmp_path / "ck"))
    model = result.model
    assert model.regularization_ == pytest.approx(local.regularization_, rel=1e-12)
    np.testing.assert_allclose(model.loss_history_, local.loss_history_, rtol=1e-5)
    np.testing.assert_allclose(model.user_factors_, local.user_factors_, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(model.item_factors_, local.item_factors_, rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(result.user_ids, ref.user_ids)
    assert result.bytes_per_epoch > 0 and len(result.epoch_seconds) == 4
    assert sorted(os.listdir(tmp_path / "ck")) == ["epoch-000004"]  # only the last epoch is kept


def test_auto_regularization_is_searched_like_the_local_fit(client, plays):
    """Data within the search's sample size: the workers hand every row to the search, which chooses
    and starts the fit as NMFModel.fit does."""
    ref = load_reference(plays / "all.parquet")
    # frequency_scale "auto" (the default) keeps the plain ridge on workers: ν = 0 locally too.
    local = NMFModel(**{**SETTINGS, "max_iter": 3, "frequency_scale": 0}).fit(ref.user_items)
    result = fit(NMFModel(**{**SETTINGS, "max_iter": 3}), plays / "parts", client, rating_col="plays", n_blocks=3)
    assert result.model.frequency_scale_ == 0.0
    assert result.model.regularization_ == local.regularization_
    assert [row["ndcg@10"] for row in result.model.search_results_] == pytest.approx(
        [row["ndcg@10"] for row in local.search_results_], rel=1e-6)
    np.testing.assert_allclose(result.model.user_factors_, local.user_factors_, rtol=1e-3, atol=1e-5)


def test_the_default_confidence_is_chosen_between_log_and_linear(client, plays):
    """confidence="auto", the default, on workers: the search tries log and linear (bm25 needs the
    whole matrix's statistics) and chooses what the local search chooses among those two."""
    from timbral import tuning
    from timbral.dask.fit import SUPPORTED_CONFIDENCES

    settings = {**SETTINGS, "confidence": "auto", "max_iter": 3}
    ref = load_reference(plays / "all.parquet")
    plain = NMFModel(**settings, frequency_scale=0).get_params()  # ν: the plain ridge on workers
    expected = tuning.search(ref.user_items, plain, confidences=SUPPORTED_CONFIDENCES)
    result = fit(NMFModel(**settings), plays / "parts", client, rating_col="plays", n_blocks=3)
    assert {row["confidence"] for row in result.model.search_results_} == set(SUPPORTED_CONFIDENCES)
    assert result.model.confidence_ == expected.params["confidence"]
    assert result.model.regularization_ == expected.params["regularization"]
    assert [row["ndcg@10"] for row in result.model.search_results_] == pytest.approx(
        [row["ndcg@10"] for row in expected.table], rel=1e-6)


def test_auto_regularization_searches_a_sample_drawn_on_the_workers(client, plays, monkeypatch):
    """Above the sample size only a seeded sample of users (the users tuning.sample_rows draws for
    the local search) reaches the client; the search runs on it."""
    from timbral import tuning

    monkeypatch.setattr(tuning, "SAMPLE_MAX_INTERACTIONS", 2_000)  # the in-process workers see it too
    ref = load_reference(plays / "all.parquet")
    rows = tuning.sample_rows(np.diff(ref.user_items.indptr), np.random.default_rng(SETTINGS["random_state"]))
    assert 0 < ref.user_items[rows].nnz <= 2_000 < ref.user_items.nnz
    expected = tuning.search(ref.user_items[rows], NMFModel(**SETTINGS, frequency_scale=0).get_params())  # plain ridge
    result = fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", n_blocks=3)
    assert result.model.regularization_ == expected.params["regularization"]
    assert [row["ndcg@10"] for row in result.model.search_results_] == pytest.approx(
        [row["ndcg@10"] for row in expected.table], rel=1e-6)
    assert result.model.n_iter_ == SETTINGS["max_iter"]  # a fit from the random start, not the sample's factors


def test_held_out_ndcg_equals_the_single_machine_fit(client, tmp_path):
    """Issue 11's quality bar on a sample both can fit: the same seed, the same held-out split, and
    NDCG@10 of the model the workers wrote within 0.5 % of NMFModel.fit's (default "auto" λ)."""
    from timbral.metrics import ranking_metrics
    from timbral.split import random_split

    write_partitioned(tmp_path / "all", 1_500, 300, 40_000, seed=11, n_partitions=1)
    ref = load_reference(tmp_path / "all" / "part-00000.parquet", min_user_interactions=0)
    train, test = random_split(ref.user_items, test_fraction=0.2, seed=0)
    assert np.diff(train.indptr).min() > 0 and np.bincount(train.indices, minlength=train.shape[1]).min() > 0
    rows = train.tocoo()
    for part, users in enumerate(np.array_split(np.arange(train.shape[0]), 3)):  # whole users per file
        mine = np.isin(rows.row, users)
        (tmp_path / "train").mkdir(exist_ok=True)
        pq.write_table(pa.table({"user_id": ref.user_ids[rows.row[mine]], "item_id": ref.item_ids[rows.col[mine]],
                                 "plays": rows.data[mine]}), tmp_path / "train" / f"part-{part}.parquet")
    settings = dict(n_components=16, max_iter=15, tol=0, random_state=7, n_threads=1)
    local = NMFModel(**settings).fit(train)
    fit(NMFModel(**settings), tmp_path / "train", client, rating_col="plays", n_blocks=3,
        rules=CleaningRules(min_user_interactions=0), output=tmp_path / "model")
    distributed_model = Recommender.load(tmp_path / "model")
    np.testing.assert_array_equal(distributed_model.user_ids, ref.user_ids)  # the same rows and columns
    np.testing.assert_array_equal(distributed_model.item_ids, ref.item_ids)
    expected = ranking_metrics(local, train, test, k=10)["ndcg"]
    got = ranking_metrics(distributed_model.model, train, test, k=10)["ndcg"]
    assert expected > 0.05  # a model worth comparing, not noise
    assert got == pytest.approx(expected, rel=0.005)


def test_fit_distributed_hands_a_dataset_to_the_workers_and_a_matrix_to_the_fit_loop(client, plays):
    """timbral.distributed.fit_distributed is the one entry point: a Parquet dataset goes to the
    block fit (the client never reads it), a matrix to the fit loop's Dask backend; same answer."""
    from timbral.distributed import fit_distributed

    ref = load_reference(plays / "all.parquet")
    from_dataset = fit_distributed(NMFModel(**SETTINGS), plays / "parts", client, n_shards=3, rating_col="plays")
    from_matrix = fit_distributed(NMFModel(**SETTINGS), ref.user_items, client, n_shards=3)
    np.testing.assert_array_equal(from_dataset.user_ids, ref.user_ids)
    np.testing.assert_allclose(from_dataset.model.loss_history_, from_matrix.loss_history_, rtol=1e-5)
    with pytest.raises(ValidationError, match="rating_col apply to a Parquet dataset"):
        fit_distributed(NMFModel(**SETTINGS), ref.user_items, client, rating_col="plays")


def test_routing_ships_selected_rows_or_whole_blocks(client, plays):
    """broadcast_fraction=1 never broadcasts, 0 always does; the answer is the same."""
    routed = fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", n_blocks=3,
                 broadcast_fraction=1.0)
    broadcast = fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", n_blocks=3,
                    broadcast_fraction=0.0)
    assert routed.broadcast_blocks == 0 and broadcast.broadcast_blocks == 18
    assert routed.bytes_per_epoch <= broadcast.bytes_per_epoch
    np.testing.assert_array_equal(routed.model.user_factors_, broadcast.model.user_factors_)


def test_a_block_that_arrives_unaligned_gives_the_same_gram_bit_for_bit():
    """A process worker can receive a block at any byte of its message; on such data NumPy's
    matmul sums in another order than BLAS. Its XᵀX must be the one of the same block at home."""
    import importlib

    gram_sum = importlib.import_module("timbral.dask.fit")._gram_sum
    block = np.random.default_rng(0).random((40, 6), dtype=np.float32)
    message = np.zeros(block.nbytes + 64, np.uint8)
    start = (-message.ctypes.data) % 64 + 1  # one byte past a cache line: unaligned for float32
    received = np.frombuffer(message[start:start + block.nbytes], dtype=block.dtype).reshape(block.shape)
    received[...] = block
    assert not received.flags.aligned
    gram, total = gram_sum(received)
    np.testing.assert_array_equal(gram, block.T @ block)
    assert total == float(block.sum(dtype=np.float64))


def test_fit_refuses_what_it_cannot_do(client, plays):
    with pytest.raises(ValidationError, match=r"support feedback .* got 'explicit'. Fit explicit"):
        fit(NMFModel(feedback="explicit"), plays / "parts", client)
    with pytest.raises(ValidationError, match=r"got 'bm25', which needs corpus .* Use confidence='log' or 'auto'"):
        fit(NMFModel(confidence="bm25"), plays / "parts", client)
    with pytest.raises(ValidationError, match=r"search only regularization, n_components and the confidence "
                                              r"\('log' or 'linear'\); got 'auto' for alpha .* --params"):
        fit(NMFModel(confidence="auto", alpha="auto"), plays / "parts", client)
    with pytest.raises(ValidationError, match=r"plain ridge; got frequency_scale=1.0, .* Pass frequency_scale=0"):
        fit(NMFModel(frequency_scale=1.0), plays / "parts", client)  # "auto", the default, keeps the plain ridge
    with pytest.raises(ValidationError, match=r"start from init='random'; got init='nndsvd'"):
        fit(NMFModel(init="nndsvd"), plays / "parts", client)
    with pytest.raises(ValidationError, match=r"n_blocks must be a positive integer, got 0"):
        fit(NMFModel(), plays / "parts", client, n_blocks=0)
    with pytest.raises(ValidationError, match=r"PCG64 Generator .* got a Generator on MT19937"):
        fit(NMFModel(random_state=np.random.Generator(np.random.MT19937(0))), plays / "parts", client)
    with pytest.raises(ValidationError, match=r"rules.feedback='frobenius' differs from model.feedback='implicit'"):
        fit(NMFModel(), plays / "parts", client, rules=CleaningRules(feedback="frobenius"))


def test_workers_write_the_model_directory(client, plays, tmp_path):
    """output=: the workers write the one model format (checksums, loads with Recommender.load), equal
    to the gathered model's save; the client keeps no model unless gather=True."""
    written = fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", n_blocks=3,
                  output=tmp_path / "model")
    gathered = fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", n_blocks=3)
    assert written.model is None and written.user_ids is None and written.n_iter == 4
    loaded, reference = Recommender.load(tmp_path / "model"), gathered.recommender()
    assert loaded.model_version == written.model_version == written.recommender().model_version
    assert loaded.model_version.split("-")[1] == reference.model_version.split("-")[1]  # same factors' hash
    np.testing.assert_array_equal(loaded.model.user_factors_, reference.model.user_factors_)
    np.testing.assert_array_equal(loaded.model.item_factors_, reference.model.item_factors_)
    assert (loaded.user_items != reference.user_items).nnz == 0
    np.testing.assert_array_equal(loaded.user_ids, reference.user_ids)
    np.testing.assert_array_equal(loaded.item_ids, reference.item_ids)
    np.testing.assert_array_equal(loaded.item_popularity, reference.item_popularity)
    assert loaded.model.loss_history_ == reference.model.loss_history_
    assert loaded.metadata["data"] == reference.metadata["data"]
    assert loaded.recommend(reference.user_ids[3], 5).items == reference.recommend(reference.user_ids[3], 5).items
    both = fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", n_blocks=3,
               output=tmp_path / "again", gather=True)
    np.testing.assert_array_equal(both.model.user_factors_, reference.model.user_factors_)
    assert sorted(p.name for p in tmp_path.iterdir() if ".parts-" in p.name) == []  # staging removed


def test_model_output_refusals(client, plays, tmp_path):
    with pytest.raises(ValidationError, match=r"gather=False with output=None keeps the fitted model nowhere"):
        fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", gather=False)
    with pytest.raises(ValidationError, match=r"gather must be True, False or None \(the default\), got 'yes'"):
        fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", gather="yes")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match=r"non-empty directory that holds no model"):
        fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", output=tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["notes"]  # no staging pieces left behind


# -- batch scoring --------------------------------------------------------------------------


def test_recommend_all_matches_recommend(client, plays, tmp_path):
    fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", n_blocks=2, output=tmp_path / "model")
    rec = Recommender.load(tmp_path / "model")
    summary = recommend_all(tmp_path / "model", client, k=7, output=tmp_path / "top", n_partitions=3)
    table = pq.read_table(tmp_path / "top").to_pandas()
    assert len(summary.files) == 3 and summary.n_users == rec.n_users == table.user_id.nunique()
    assert list(table.columns) == ["user_id", "rank", "item_id", "score"]
    for user in rec.user_ids[[0, 57, -1]]:
        mine = table[table.user_id == user].sort_values("rank")
        expected = rec.recommend(user, 7)
        assert list(mine.item_id) == [item for item, _ in expected.items]
        np.testing.assert_allclose(mine.score, [score for _, score in expected.items], rtol=1e-6)
    seen = rec.user_items[0].indices
    assert not set(table[table.user_id == rec.user_ids[0]].item_id) & set(rec.item_ids[seen])
    with pytest.raises(ValidationError, match=r"output '.*top' already exists; remove it"):
        recommend_all(tmp_path / "model", client, k=7, output=tmp_path / "top")
    with pytest.raises(ValidationError, match=r"`k` must be a positive integer; got 0"):
        recommend_all(tmp_path / "model", client, k=0, output=tmp_path / "x")
    with pytest.raises(ValidationError, match=r"n_partitions must be a positive integer, got -2"):
        recommend_all(tmp_path / "model", client, k=3, output=tmp_path / "x", n_partitions=-2)
    with pytest.raises(ArtifactError, match=r"model directory '.*nowhere'"):
        recommend_all(tmp_path / "nowhere", client, k=3, output=tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.fixture
def prewarmed(client, plays, tmp_path, redis_url):
    """A model the workers wrote, scored by recommend_all with the service's Redis pre-warmed."""
    fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", n_blocks=2, output=tmp_path / "model")
    summary = recommend_all(tmp_path / "model", client, k=5, output=tmp_path / "top", redis_url=redis_url,
                            redis_ttl_seconds=600)
    return tmp_path / "model", summary


async def test_recommend_all_prewarms_the_services_redis(prewarmed, aiohttp_client, redis_url):
    """A real server on the same model answers every known user from Redis on its first request,
    with what it would have computed."""
    import redis.asyncio as aioredis
    from server_support import config

    from timbral.server import create_app

    model_dir, summary = prewarmed
    rec = Recommender.load(model_dir)
    store = aioredis.Redis.from_url(redis_url)
    try:
        keys = await store.keys(f"timbral:{summary.model_version}:rec:*")
        ttl = await store.pttl(keys[0])
    finally:
        await store.aclose()
    assert len(keys) == rec.n_users and 500_000 < ttl <= 600_000
    server = await aiohttp_client(create_app(config(model_dir, redis_url=redis_url, tier1_max_bytes=0)))
    for user in rec.user_ids[[0, 57, -1]].tolist():
        response = await server.get(f"/api/v1/recommendations/{user}?k=5")
        answer = await response.json()
        assert response.status == 200 and answer["cached"] is True
        assert answer["model_version"] == summary.model_version and answer["strategy"] == "nmf"
        expected = rec.recommend(user, 5)
        assert [r["item_id"] for r in answer["recommendations"]] == [item for item, _ in expected.items]
        np.testing.assert_allclose([r["score"] for r in answer["recommendations"]],
                                   [score for _, score in expected.items], rtol=1e-6)
    fresh = await (await server.get(f"/api/v1/recommendations/{rec.user_ids[3]}?k=4")).json()
    assert fresh["cached"] is False  # another k is another key: computed as before


def test_recommend_all_redis_refusals(client, plays, tmp_path):
    fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", n_blocks=2, output=tmp_path / "model")
    with pytest.raises(ValidationError, match=r"redis_url must be a redis:// or rediss:// URL, got 'http://"):
        recommend_all(tmp_path / "model", client, output=tmp_path / "a", redis_url="http://cache:6379")
    with pytest.raises(ValidationError, match=r"redis_ttl_seconds must be a number of seconds >= 0.001, got 0"):
        recommend_all(tmp_path / "model", client, output=tmp_path / "a", redis_url="redis://x", redis_ttl_seconds=0)
    from redis_server import free_port

    with pytest.raises(ValidationError, match=r"cannot pre-warm Redis at redis://<redacted>@127.0.0.1") as caught:
        recommend_all(tmp_path / "model", client, output=tmp_path / "b",
                      redis_url=f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0")
    assert "hunter2" not in str(caught.value)
    assert not (tmp_path / "a").exists()


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.slow  # ~40 s on a loaded 2-core machine: two worker processes start, one is killed and restarted
def test_a_killed_worker_does_not_change_the_fit(client, plays, tmp_path):
    """SIGKILL one worker process after epoch 2: its blocks come back from the checkpoint and
    the lineage, and the factors equal an undisturbed fit's bit for bit."""
    undisturbed = fit(NMFModel(**SETTINGS), plays / "parts", client, rating_col="plays", n_blocks=3)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as processes:
        pids = list(processes.run(os.getpid).values())
        killed = []

        def kill(iteration, loss):
            if iteration == 2:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(iteration)

        disturbed = fit(NMFModel(**SETTINGS), plays / "parts", processes, rating_col="plays", n_blocks=3,
                        checkpoint=str(tmp_path / "ck"), callback=kill)
        assert killed == [2]
        processes.wait_for_workers(2, timeout=60)
        assert pids[0] not in processes.run(os.getpid).values()  # the nanny started a new process
    np.testing.assert_array_equal(disturbed.model.user_factors_, undisturbed.model.user_factors_)
    np.testing.assert_array_equal(disturbed.model.item_factors_, undisturbed.model.item_factors_)
    assert disturbed.model.loss_history_ == undisturbed.model.loss_history_
