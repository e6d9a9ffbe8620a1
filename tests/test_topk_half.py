"""The float16 pre-pass (``timbral._core._topk_half``) gives the exact float32 kernel's lists.

Its candidates come from float16 scores with a proven error bound, then are rescored in
float32: near-ties finer than float16's resolution, exact ties, items that all score alike
(the buffer overflows: an exact scan), zeros, huge and tiny values, and queries outside its
domain (negative or non-finite values) must all give the exact kernel's ids.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp

from timbral import _core, _reference, scoring
from timbral._core._topk import top_k as exact_kernel
from timbral.scoring import BLOCK_QUERIES, TopK, half_items, top_k

pytestmark = pytest.mark.skipif(_core.topk_half is None, reason="no AVX2 + FMA + F16C, or TIMBRAL_TOPK=exact")

NO_INDPTR, NO_INDICES, NO_MASK = np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.uint8)


def exclusions(exclude: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
    if exclude is None:
        return NO_INDPTR, NO_INDICES
    return exclude.indptr.astype(np.int64), exclude.indices.astype(np.int32)


def exact(query, items, k, exclude=None, mask=None):
    """The exact float32 kernel (BLAS scores, one thread, top_k's chunk)."""
    ids, scores = np.empty((len(query), k), np.int32), np.empty((len(query), k), np.float32)
    mask = NO_MASK if mask is None else mask.view(np.uint8)
    chunk = scoring.chunk_items(len(query))
    assert exact_kernel(query, items, *exclusions(exclude), mask, ids, scores, chunk, BLOCK_QUERIES, 1) == 0
    return ids, scores


def half(query, items, k, exclude=None, mask=None, n_threads=1):
    """The pre-pass kernel called directly: (ids, scores, queries ranked by the exact scan)."""
    prepared = half_items(items)
    assert prepared is not None
    ids, scores = np.empty((len(query), k), np.int32), np.empty((len(query), k), np.float32)
    mask = NO_MASK if mask is None else mask.view(np.uint8)
    n_exact = _core.topk_half.top_k_half(query, items, prepared.tiles, prepared.scale, prepared.score_bound,
                                         *exclusions(exclude), mask, ids, scores, BLOCK_QUERIES, n_threads)
    assert n_exact >= 0
    return ids, scores, n_exact


def assert_float32_scores(query, items, ids, scores) -> None:
    """Scores are the float32 dot products to float32 rounding (a float16 score would be off by ~1e-3)."""
    valid = ids >= 0
    truth = np.einsum("qf,qkf->qk", query.astype(np.float64), items.astype(np.float64)[np.maximum(ids, 0)])
    np.testing.assert_allclose(scores[valid], truth[valid], rtol=query.shape[1] * 2.0**-23, atol=1e-30)
    assert np.isneginf(scores[~valid]).all()


@pytest.mark.parametrize("n_queries", [1, 3, 8, 65])
@pytest.mark.parametrize("n_items", [1001, 4099])  # not multiples of the 8-item tile
@pytest.mark.parametrize("filtered", [False, True])
def test_random_non_negative_models_give_the_exact_lists(n_queries, n_items, filtered):
    rng = np.random.default_rng(n_queries * 7 + n_items)
    query = rng.random((n_queries, 24), dtype=np.float32)
    items = rng.gamma(0.5, size=(n_items, 24)).astype(np.float32)  # skewed, as NMF factors are
    exclude = mask = None
    if filtered:
        exclude = sp.random(n_queries, n_items, density=0.05, format="csr", random_state=rng, dtype=np.float32)
        exclude.sort_indices()
        mask = rng.random(n_items) < 0.2
    for k in (1, 10, 60):
        want = exact(query, items, k, exclude, mask)
        ids, scores, n_exact = half(query, items, k, exclude, mask, n_threads=2)
        assert n_exact == 0  # every query through the pre-pass
        np.testing.assert_array_equal(ids, want[0])
        np.testing.assert_array_equal(ids, _reference.top_k(query, items, k, exclude=exclude, item_mask=mask)[0])
        assert_float32_scores(query, items, ids, scores)
        got = TopK(items)(query, k, exclude=exclusions(exclude) if filtered else None, item_mask=mask)
        np.testing.assert_array_equal(got[0], want[0])  # whichever kernel the shape picks


@pytest.mark.parametrize("k", [37, 40, 41, 100])
def test_k_at_or_beyond_the_items_pads_like_the_exact_kernel(k):
    rng = np.random.default_rng(k)
    query = rng.random((3, 5), dtype=np.float32)
    items = rng.random((40, 5), dtype=np.float32)
    mask = np.zeros(40, dtype=bool)
    mask[[0, 9, 39]] = True  # 37 candidates
    ids, scores, _ = half(query, items, k, mask=mask)
    want = _reference.top_k(query, items, k, item_mask=mask)
    np.testing.assert_array_equal(ids, want[0])
    assert (ids[:, 37:] == -1).all() and np.isneginf(scores[:, 37:]).all()
    assert_float32_scores(query, items, ids, scores)


def test_near_ties_finer_than_float16_keep_the_float32_order():
    """Variants h·(1 ± 2^-14 ...) tie or invert in float16 scores but are strictly ordered in
    float32: the lists must be the float32 ones."""
    rng = np.random.default_rng(11)
    n_factors, factors = 16, [1.0, 1 + 2.0**-14, 1 - 2.0**-13, 1 + 2.0**-13, 1 - 2.0**-14, 1 + 2.0**-12]
    base = rng.random((30, n_factors)) + 1.0  # above every filler item
    variants = np.concatenate([base * f for f in factors]).astype(np.float32)
    items = np.concatenate([rng.random((2000, n_factors)), variants]).astype(np.float32)
    items = items[rng.permutation(len(items))]  # variants scattered among the fillers
    query = rng.random((5, n_factors), dtype=np.float32)
    prepared = half_items(items)
    tiles = prepared.tiles.view(np.float16).astype(np.float32).transpose(0, 2, 1).reshape(-1, n_factors)
    half_scores, float32_scores = query @ tiles[: len(items)].T, query @ items.T
    top = np.argsort(-float32_scores[0], kind="stable")[:60]
    assert (np.diff(float32_scores[0, top]) < 0).all()  # strictly ordered in float32
    assert (np.diff(half_scores[0, top]) >= 0).any()  # tied or inverted in float16
    for k in (1, 7, 60, 180):
        ids, scores, n_exact = half(query, items, k)
        np.testing.assert_array_equal(ids, exact(query, items, k)[0])
        np.testing.assert_array_equal(ids, _reference.top_k(query, items, k)[0])
        assert_float32_scores(query, items, ids, scores)


def test_exact_ties_go_to_the_lower_index():
    rng = np.random.default_rng(12)
    items = rng.random((3000, 8), dtype=np.float32)
    items[[2999, 1500, 17, 640]] = items[[5, 5, 5, 5]] * 2  # four identical best rows
    query = rng.random((4, 8), dtype=np.float32)
    ids, scores, _ = half(query, items, 6)
    np.testing.assert_array_equal(ids[:, :4], np.tile([17, 640, 1500, 2999], (4, 1)))
    np.testing.assert_array_equal(ids, _reference.top_k(query, items, 6)[0])
    assert (scores[:, 0] == scores[:, 3]).all()


@pytest.mark.parametrize("kind", ["all-equal", "all-zero", "zero-query"])
def test_items_that_all_score_alike_overflow_into_the_exact_scan(kind):
    """Every item stays a candidate, the buffer overflows, the query is ranked exactly."""
    rng = np.random.default_rng(13)
    items = np.tile(rng.random(12, dtype=np.float32), (5000, 1))
    query = rng.random((2, 12), dtype=np.float32)
    if kind == "all-zero":
        items[:] = 0
    if kind == "zero-query":
        items = rng.random((5000, 12), dtype=np.float32)
        query[:] = 0
    exclude = sp.csr_matrix((np.ones(3), [0, 2, 3], [0, 3, 3]), shape=(2, 5000))
    ids, scores, n_exact = half(query, items, 10, exclude)
    assert n_exact == 2
    np.testing.assert_array_equal(ids, [[1, *range(4, 13)], list(range(10))])
    np.testing.assert_array_equal(ids, exact(query, items, 10, exclude)[0])
    assert_float32_scores(query, items, ids, scores)


def test_items_in_ascending_order_compact_the_candidates_instead_of_falling_back():
    """Each item beats every one before it, so each becomes a candidate: the buffer fills
    many times over and is compacted to those above the risen threshold, never abandoned."""
    rng = np.random.default_rng(22)
    items = (rng.random(12) * np.linspace(1.0, 2.0, 6000)[:, None]).astype(np.float32)
    query = rng.random((2, 12), dtype=np.float32)
    ids, scores, n_exact = half(query, items, 10)
    assert n_exact == 0
    np.testing.assert_array_equal(ids, np.tile(np.arange(5999, 5989, -1), (2, 1)))
    np.testing.assert_array_equal(ids, exact(query, items, 10)[0])


def test_zero_rows_among_others_never_need_the_exact_scan():
    rng = np.random.default_rng(14)
    items = rng.random((3000, 10), dtype=np.float32)
    items[::3] = 0
    query = rng.random((3, 10), dtype=np.float32)
    ids, _, n_exact = half(query, items, 20)
    assert n_exact == 0
    np.testing.assert_array_equal(ids, exact(query, items, 20)[0])


@pytest.mark.parametrize("magnitude", [1e6, 3e30, 1e-6, 1e-30])
def test_values_beyond_float16s_range_are_scaled_into_it(magnitude):
    """Without the power-of-two scale these would overflow float16 (> 65504) or vanish
    below its smallest subnormal (6e-8)."""
    rng = np.random.default_rng(15)
    items = (rng.random((2000, 20)) * magnitude).astype(np.float32)
    query = rng.random((4, 20), dtype=np.float32)
    prepared = half_items(items)
    assert np.isfinite(prepared.tiles.view(np.float16)).all()
    assert 2**14 <= prepared.tiles.view(np.float16).max() < 2**15
    ids, scores, n_exact = half(query, items, 15)
    assert n_exact == 0
    np.testing.assert_array_equal(ids, exact(query, items, 15)[0])
    assert_float32_scores(query, items, ids, scores)


def test_tiny_values_in_float16s_subnormal_range_keep_the_float32_order():
    """One large item sets the scale; the rest sit 2^-24 to 2^-34 below it, where float16 is
    subnormal or zero and only the bound's absolute term covers them. With the large item
    masked, the ranking is decided among the tiny ones."""
    rng = np.random.default_rng(16)
    items = (rng.random((3000, 12)) * np.exp2(-rng.integers(24, 35, (3000, 1)))).astype(np.float32)
    items[0] = 1.0
    subnormal = half_items(items).tiles.view(np.float16)
    assert (np.abs(subnormal[subnormal != 0]) < 2.0**-14).mean() > 0.5  # most values are subnormal
    query = rng.random((3, 12), dtype=np.float32)
    mask = np.zeros(3000, dtype=bool)
    mask[0] = True
    for k in (1, 10, 50):
        ids, scores, _ = half(query, items, k, mask=mask)
        np.testing.assert_array_equal(ids, exact(query, items, k, mask=mask)[0])
        assert_float32_scores(query, items, ids, scores)


def test_a_query_outside_the_bound_is_ranked_by_the_exact_scan():
    """A negative, NaN, infinite or huge query value: that query alone takes the exact scan,
    with the exact kernel's answer; the others stay on the pre-pass."""
    rng = np.random.default_rng(17)
    items = rng.random((1500, 6), dtype=np.float32)
    query = rng.random((6, 6), dtype=np.float32)
    query[1, 2] = -0.5
    query[2, 0] = np.nan
    query[3, 4] = np.inf
    query[4, 1] = 3e38  # scores beyond float32's range
    ids, scores, n_exact = half(query, items, 8)
    assert n_exact == 4
    want = exact(query, items, 8)
    np.testing.assert_array_equal(ids, want[0])
    np.testing.assert_allclose(scores[[0, 1, 4, 5]], want[1][[0, 1, 4, 5]], rtol=6 * 2.0**-23)
    assert np.isposinf(scores[3]).all() and (ids[2] == -1).all()  # NaN scores are never kept


@pytest.mark.parametrize("bad", [-1e-30, np.nan, np.inf])
def test_items_outside_the_bound_take_the_exact_kernel(bad):
    rng = np.random.default_rng(18)
    items = rng.random((1200, 9), dtype=np.float32)
    items[700, 4] = bad
    query = rng.random((70, 9), dtype=np.float32)
    prepared = TopK(items)
    assert prepared.half is None and half_items(items) is None
    want = exact(query, items, 10)
    for got in (prepared(query, 10), top_k(query, items, 10)):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])  # the exact kernel's own scores


def test_a_negative_query_through_top_k_gets_the_exact_lists():
    rng = np.random.default_rng(19)
    items = rng.random((2000, 10), dtype=np.float32)
    query = rng.random((3, 10), dtype=np.float32) - 0.2
    ids, scores = TopK(items)(query, 10)
    np.testing.assert_array_equal(ids, exact(query, items, 10)[0])
    np.testing.assert_allclose(scores, exact(query, items, 10)[1], rtol=10 * 2.0**-23)


def test_top_k_builds_the_copy_for_large_batches_over_many_items(monkeypatch):
    """top_k builds the copy per call for 64+ queries when a block of them is memory-bound
    (at least HALF_MIN_ITEMS_PER_QUERY items per query), on two threads."""
    rng = np.random.default_rng(20)
    n_items = scoring.HALF_MIN_ITEMS_PER_QUERY * BLOCK_QUERIES + 3
    items = rng.gamma(0.5, size=(n_items, 16)).astype(np.float32)
    query = rng.gamma(0.5, size=(150, 16)).astype(np.float32)
    seen = sp.random(150, n_items, density=0.002, format="csr", random_state=rng)
    built = []
    monkeypatch.setattr(scoring, "half_items", lambda items: built.append(1) or half_items(items))
    ids, scores = top_k(query, items, 10, exclude=seen, n_threads=2)
    assert built == [1]
    np.testing.assert_array_equal(ids, _reference.top_k(query, items, 10, exclude=seen)[0])
    assert_float32_scores(query, items, ids, scores)
    top_k(query[:63], items, 10, exclude=seen[:63], n_threads=2)
    top_k(query, items[: n_items - 4], 10, n_threads=2)
    assert built == [1]  # small batches, and items too few per query, keep the exact kernel


def test_the_float16_copy_is_half_the_float32_items_and_the_switch_turns_it_off(monkeypatch):
    items = np.random.default_rng(21).random((1001, 50), dtype=np.float32)
    prepared = TopK(items)
    assert prepared.half.tiles.shape == (126, 50, 8)
    assert prepared.half.tiles.nbytes == 126 * 8 * 50 * 2  # items.nbytes / 2, plus the last tile's padding
    monkeypatch.setenv("TIMBRAL_TOPK", "exact")
    assert _core._select_topk_half() is None
    monkeypatch.delenv("TIMBRAL_TOPK")
    assert _core._select_topk_half() is _core.topk_half
    query = items[:4] * 0.5
    monkeypatch.setattr(scoring, "HALF_MIN_ITEMS_PER_QUERY", sys.maxsize)  # no shape pays: the exact kernel
    np.testing.assert_array_equal(prepared(query, 5)[1], exact(query, items, 5)[1])
