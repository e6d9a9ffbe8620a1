"""The top-K kernel and ``timbral.scoring.top_k`` against ``_reference.top_k``."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_info

from timbral import _reference, scoring
from timbral._core._topk import top_k as top_k_kernel
from timbral.exceptions import ValidationError
from timbral.scoring import BLOCK_QUERIES, CHUNK_ITEMS, SCRATCH_SCORES, TopK, chunk_items, exclude_rows, top_k

DTYPES = [np.float32, np.float64]


def random_exclude(rng: np.random.Generator, n: int, m: int, density: float) -> sp.csr_matrix:
    mat = sp.random(n, m, density=density, format="csr", random_state=rng, dtype=np.float32)
    mat.sort_indices()
    return mat


def assert_same_top_k(got, ref, dtype) -> None:
    """Equal ids; where float rounding could reorder near-ties, equal scores suffice."""
    (ids, scores), (ref_ids, ref_scores) = got, ref
    assert ids.dtype == np.int32 and scores.dtype == ref_scores.dtype == dtype
    assert ids.shape == scores.shape == ref_ids.shape
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(scores, ref_scores, rtol=rtol, atol=rtol)
    differ = ids != ref_ids
    np.testing.assert_allclose(scores[differ], ref_scores[differ], rtol=rtol, atol=rtol)
    assert (ids[differ] >= 0).all() and (ref_ids[differ] >= 0).all()


def kernel_top_k(query, items, k, exclude, item_mask, chunk, block, n_threads):
    """Call the kernel directly with chosen chunk and block sizes."""
    indptr = np.empty(0, np.int64) if exclude is None else exclude.indptr.astype(np.int64)
    indices = np.empty(0, np.int32) if exclude is None else exclude.indices.astype(np.int32)
    mask = np.empty(0, np.uint8) if item_mask is None else item_mask.astype(np.uint8)
    ids = np.empty((query.shape[0], k), np.int32)
    scores = np.empty((query.shape[0], k), query.dtype)
    failed = top_k_kernel(query, items, indptr, indices, mask, ids, scores, chunk, block, n_threads)
    assert failed == 0
    return ids, scores


def test_the_half_precision_pre_pass_matches_the_cpu():
    """The pre-pass module is there exactly when the CPU can run it (or a switch turned it off)."""
    from timbral._core import _cpu_has, topk_half

    switched_off = os.environ.get("TIMBRAL_KERNELS") == "portable" or os.environ.get("TIMBRAL_TOPK") == "exact"
    if topk_half is not None:
        assert topk_half.__name__ == "timbral._core._topk_half" and _cpu_has("AVX2", "FMA3", "F16C")
    elif os.environ.get("TIMBRAL_TEST_INSTALLED") == "1" and _cpu_has("AVX2", "FMA3", "F16C"):
        assert switched_off, "the wheel lacks the pre-pass build"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_queries", [1, 5, 150])
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("filtered", [False, True])
def test_random_factors_match_reference(dtype, n_queries, n_threads, filtered):
    rng = np.random.default_rng(n_queries * 10 + n_threads)
    n_items = 2 * CHUNK_ITEMS + 37  # not a multiple of the chunk
    query = rng.random((n_queries, 16)).astype(dtype)
    items = rng.random((n_items, 16)).astype(dtype)
    exclude = random_exclude(rng, n_queries, n_items, 0.05) if filtered else None
    item_mask = rng.random(n_items) < 0.3 if filtered else None
    got = top_k(query, items, 10, exclude=exclude, item_mask=item_mask, n_threads=n_threads)
    ref = _reference.top_k(query, items, 10, exclude=exclude, item_mask=item_mask)
    assert_same_top_k(got, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_exact_ties_go_to_the_lower_index(dtype, n_threads):
    rng = np.random.default_rng(1)
    query = rng.integers(0, 3, (40, 4)).astype(dtype)  # integer scores: exact ties
    items = rng.integers(0, 3, (5000, 4)).astype(dtype)
    got_ids, got_scores = top_k(query, items, 25, n_threads=n_threads)
    ref_ids, ref_scores = _reference.top_k(query, items, 25)
    np.testing.assert_array_equal(got_ids, ref_ids)
    np.testing.assert_array_equal(got_scores, ref_scores)


@pytest.mark.parametrize("n_queries", [1, 8, 9, 63, 64, 65, 2000])
def test_chunk_items_keeps_a_blocks_scratch_within_its_budget(n_queries):
    chunk = chunk_items(n_queries)
    assert 1 <= chunk <= CHUNK_ITEMS
    assert chunk * min(n_queries, BLOCK_QUERIES) <= SCRATCH_SCORES
    if n_queries <= SCRATCH_SCORES // CHUNK_ITEMS:  # the service's small batches keep the whole chunk
        assert chunk == CHUNK_ITEMS


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_large_batch_gives_each_users_answer_alone(dtype):
    """A block of 64 users scores narrower chunks than one user does: the same lists and
    exact ties (integer scores) still to the lower index, scores equal."""
    rng = np.random.default_rng(7)
    query = rng.integers(0, 3, (130, 4)).astype(dtype)
    items = rng.integers(0, 3, (3 * CHUNK_ITEMS + 11, 4)).astype(dtype)
    exclude = random_exclude(rng, 130, items.shape[0], 0.01)
    assert chunk_items(130) < chunk_items(1)
    ids, scores = top_k(query, items, 20, exclude=exclude, n_threads=2)
    for user in (0, 63, 64, 129):
        one_ids, one_scores = top_k(query[user : user + 1], items, 20, exclude=exclude[user], n_threads=1)
        np.testing.assert_array_equal(ids[user], one_ids[0])
        np.testing.assert_array_equal(scores[user], one_scores[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk", [1, 7, 97, 5000])
@pytest.mark.parametrize("block", [1, 3, 64])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_kernel_chunk_and_block_boundaries(dtype, chunk, block, n_threads):
    rng = np.random.default_rng(chunk + block)
    query = rng.integers(0, 4, (11, 5)).astype(dtype)
    items = rng.integers(0, 4, (1003, 5)).astype(dtype)
    exclude = random_exclude(rng, 11, 1003, 0.2)
    item_mask = rng.random(1003) < 0.1
    got = kernel_top_k(query, items, 13, exclude, item_mask, chunk, block, n_threads)
    ref = _reference.top_k(query, items, 13, exclude=exclude, item_mask=item_mask)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


@pytest.mark.parametrize("n_threads", [1, 2])
def test_k_larger_than_the_candidates_is_padded(n_threads):
    rng = np.random.default_rng(2)
    query = rng.random((3, 6)).astype(np.float32)
    items = rng.random((30, 6)).astype(np.float32)
    item_mask = np.zeros(30, dtype=bool)
    item_mask[::3] = True  # 20 candidates left
    ids, scores = top_k(query, items, 25, item_mask=item_mask, n_threads=n_threads)
    ref = _reference.top_k(query, items, 25, item_mask=item_mask)
    assert_same_top_k((ids, scores), ref, np.float32)
    assert (ids[:, 20:] == -1).all() and np.isneginf(scores[:, 20:]).all()
    assert (ids[:, :20] >= 0).all()


@pytest.mark.parametrize("n_threads", [1, 2])
def test_user_with_every_item_excluded_gets_only_padding(n_threads):
    rng = np.random.default_rng(3)
    query = rng.random((4, 6))
    items = rng.random((100, 6))
    seen = np.ones((4, 100), dtype=np.float32)
    seen[1:] = rng.random((3, 100)) < 0.5
    exclude = sp.csr_matrix(seen)
    ids, scores = top_k(query, items, 5, exclude=exclude, n_threads=n_threads)
    assert (ids[0] == -1).all() and np.isneginf(scores[0]).all()
    assert_same_top_k((ids, scores), _reference.top_k(query, items, 5, exclude=exclude), np.float64)


def test_allow_list_and_deny_list_masks():
    rng = np.random.default_rng(4)
    query = rng.random((6, 8)).astype(np.float32)
    items = rng.random((500, 8)).astype(np.float32)
    allowed = np.zeros(500, dtype=bool)
    allowed[[3, 77, 120, 499]] = True
    ids, _ = top_k(query, items, 10, item_mask=~allowed)
    assert set(ids[:, :4].ravel()) == {3, 77, 120, 499} and (ids[:, 4:] == -1).all()
    denied = rng.random(500) < 0.5
    got = top_k(query, items, 10, item_mask=denied)
    assert not denied[got[0]].any()
    assert_same_top_k(got, _reference.top_k(query, items, 10, item_mask=denied), np.float32)


def test_unsorted_exclude_is_sorted_without_touching_the_caller():
    rng = np.random.default_rng(5)
    query = rng.random((2, 4))
    items = rng.random((50, 4))
    exclude = sp.csr_matrix(
        (np.ones(4), np.array([40, 3, 17, 9]), np.array([0, 3, 4])), shape=(2, 50)
    )
    exclude.has_sorted_indices = False
    before = exclude.indices.copy()
    got = top_k(query, items, 50, exclude=exclude)
    np.testing.assert_array_equal(exclude.indices, before)
    ref = _reference.top_k(query, items, 50, exclude=exclude.sorted_indices())
    assert_same_top_k(got, ref, np.float64)


def test_k_is_checked_once_and_clamped_and_dtypes():
    query = np.ones((3, 2), dtype=np.float32)
    with pytest.raises(ValidationError, match=r"`k` must be a positive integer; got 0. Pass e.g. k=10"):
        top_k(query, np.ones((4, 2), dtype=np.float32), 0)  # issue 8: 0 used to pass here only
    ids, scores = top_k(query, np.ones((4, 2), dtype=np.float32), 10**9)
    assert ids.shape == scores.shape == (3, 4)  # issue 10.15: never wider than the catalogue
    _, scores = top_k(query, np.ones((4, 2), dtype=np.float64), 2)
    assert scores.dtype == np.float64  # mixed inputs are scored in the wider dtype


def test_nan_scores_are_never_returned():
    items = np.array([[1.0], [np.nan], [3.0]])
    ids, scores = top_k(np.ones((1, 1)), items, 3)
    np.testing.assert_array_equal(ids, [[2, 0, -1]])
    np.testing.assert_array_equal(scores, [[3.0, 1.0, -np.inf]])


def test_gil_is_released_during_a_long_batch():
    rng = np.random.default_rng(6)
    query = rng.random((300, 64), dtype=np.float32)
    items = rng.random((60_000, 64), dtype=np.float32)
    started = threading.Event()
    result = {}

    def work():
        started.set()
        result["out"] = top_k(query, items, 10, n_threads=1)

    worker = threading.Thread(target=work)
    worker.start()
    started.wait()
    count = 0
    while worker.is_alive():  # a kernel holding the GIL would freeze this loop
        count += 1
    worker.join()
    assert count > 1000
    assert_same_top_k(result["out"], _reference.top_k(query, items, 10), np.float32)


def test_two_threads_calling_at_once_get_reference_results():
    rng = np.random.default_rng(7)
    inputs = [
        (rng.random((n, 32), dtype=np.float32), rng.random((20_000, 32), dtype=np.float32))
        for n in (1, 200)
    ]
    blas_before = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(top_k, q, h, 10, n_threads=2) for q, h in inputs]
        results = [f.result() for f in futures]
    for (query, items), got in zip(inputs, results, strict=True):
        assert_same_top_k(got, _reference.top_k(query, items, 10), np.float32)
    blas_after = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    assert blas_after == blas_before  # the single-threaded BLAS limit is restored


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": -1}, r"`k` must be a positive integer; got -1"),
        ({"k": 2.5}, r"`k` must be a positive integer; got 2\.5"),
        ({"items": np.ones((10, 3))}, r"`query` has 4 factors per row but `items` has 3"),
        ({"query": np.ones(4)}, r"`query` must be a 2-D array .* got shape \(4,\)"),
        ({"exclude": sp.csr_matrix((3, 10))}, r"`exclude` must have shape .* \(2, 10\), got \(3, 10\)"),
        ({"exclude": sp.coo_matrix((2, 10))}, r"`exclude` must be a scipy.sparse CSR .* got coo"),
        ({"item_mask": np.zeros(9, dtype=bool)}, r"`item_mask` must have shape .* got \(9,\)"),
    ],
)
def test_bad_inputs_name_the_argument_and_value(kwargs, match):
    args = {"query": np.ones((2, 4)), "items": np.ones((10, 4)), "k": 3, **kwargs}
    with pytest.raises(ValidationError, match=match):
        top_k(args.pop("query"), args.pop("items"), args.pop("k"), **args)
    assert issubclass(ValidationError, ValueError)


# -- TopK: the same call prepared once for one item matrix ---------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
@pytest.mark.parametrize("rows", [[4], [0, 4, 4, 11], list(range(30))], ids=["one", "several", "many"])
@pytest.mark.parametrize("n_threads", [0, 1, 2])
def test_prepared_top_k_is_top_k_bit_for_bit(dtype, rows, n_threads, monkeypatch):
    # top_k builds the float16 copy per call only for large batches; here it takes the
    # pre-pass whenever TopK does, so both run the same kernel
    monkeypatch.setattr(scoring, "HALF_MIN_QUERIES", 1)
    rng = np.random.default_rng(len(rows))
    items = (rng.random((CHUNK_ITEMS + 300, 12)) * 10).astype(dtype)
    users = (rng.random((30, 12)) * 10).astype(dtype)
    keep = np.ones(30, dtype=np.float32)
    keep[4] = 0  # a row with nothing excluded
    seen = sp.csr_matrix(sp.diags(keep) @ random_exclude(rng, 30, items.shape[0], 0.02))
    seen.eliminate_zeros()
    seen.sort_indices()
    rows = np.asarray(rows, dtype=np.int64)
    mask = rng.random(items.shape[0]) < 0.1
    prepared = TopK(items)
    assert prepared.n_items == items.shape[0] and prepared.dtype in (np.float32, np.float64)
    for k, exclude, item_mask in ((1, None, None), (10, exclude_rows(seen, rows), None),
                                  (CHUNK_ITEMS + 300, exclude_rows(seen, rows), mask)):
        got = prepared(users[rows], k, exclude=exclude, item_mask=item_mask, n_threads=n_threads)
        want = top_k(users[rows], items, k, exclude=None if exclude is None else sp.csr_matrix(seen[rows]),
                     item_mask=item_mask, n_threads=n_threads)
        assert got[1].dtype == want[1].dtype
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_exclude_rows_is_the_csr_rows(index_dtype):
    rng = np.random.default_rng(9)
    matrix = random_exclude(rng, 20, 500, 0.05)
    matrix.indices = matrix.indices.astype(index_dtype)
    matrix.indptr = matrix.indptr.astype(index_dtype)
    for rows in ([7], [0], [19], [3, 3, 0, 19], np.arange(20), np.array([[5]])):
        indptr, indices = exclude_rows(matrix, np.asarray(rows))
        want = matrix[np.asarray(rows).reshape(-1)]
        assert indptr.dtype == np.int64 and indices.dtype == np.int32
        np.testing.assert_array_equal(indptr, want.indptr)
        np.testing.assert_array_equal(indices, want.indices)


@pytest.mark.parametrize(
    ("items", "match"),
    [
        (np.ones(4), r"`items` must be a 2-D array of factors, got shape \(4,\)"),
        (np.ones((2, 3, 4)), r"`items` must be a 2-D array of factors, got shape \(2, 3, 4\)"),
    ],
)
def test_prepared_top_k_checks_its_items_once(items, match):
    with pytest.raises(ValidationError, match=match):
        TopK(items)


def test_prepared_top_k_refuses_extents_the_kernel_would_read_past():
    """Trusted inputs are not re-validated, but a slip in their shapes must be an error,
    never a read past an array by the GIL-free kernel."""
    rng = np.random.default_rng(3)
    items = rng.random((50, 8), dtype=np.float32)
    prepared = TopK(items)
    query = rng.random((2, 8), dtype=np.float32)
    seen = exclude_rows(random_exclude(rng, 5, 50, 0.1), np.array([0, 1]))
    for call in (
        lambda: prepared(rng.random((2, 7), dtype=np.float32), 5),  # narrower than the items
        lambda: prepared(query, 0),
        lambda: prepared(query, 51),
        lambda: prepared(query, 5, item_mask=np.zeros(49, dtype=bool)),
        lambda: prepared(query[:1], 5, exclude=seen),  # two rows of exclusions for one query
        lambda: prepared(query, 5, exclude=(seen[0], seen[1][:0])),  # fewer indices than pointed at
    ):
        with pytest.raises(ValidationError, match=r"TopK: inputs outside its contract .* use top_k"):
            call()
    ids, _ = prepared(query, 5, exclude=seen, item_mask=np.zeros(50, dtype=bool))
    assert ids.shape == (2, 5)
