"""Top-K latency: Timbral's kernel against NumPy and implicit, in one process.

One user (median of many repetitions) and a batch of 1000 users, 64 factors,
top-10, 2 threads, at 10K, 100K and 1M items. Run from the repository root:

    python benchmarks/compare_topk.py [--sizes 10000 100000 1000000]
    python benchmarks/compare_topk.py --scratch 262144 16384 32768 65536 [--rounds 5]
    python benchmarks/compare_topk.py --prepass [--rounds 7]

``--scratch`` measures ``timbral.scoring.SCRATCH_SCORES`` instead (the scores a work unit
fills per BLAS call: ``scoring.chunk_items`` gives a block of n queries that over n items per
call, at most ``CHUNK_ITEMS``; 262144 = 4096 × 64 is the fixed 4096-item chunk): the validation search's shape
(1,877 users × 17,617 items, Last.fm's, 2 threads) and the service's (1, 8 and 64 users over
10K and 100K items, 1 thread), every value in each round in a rotated order, best and median
of the rounds as ratios to the first value's time, and the lists checked equal to the
first value's (scores within the rounding of a sum of ``N_FACTORS`` float32 products:
BLAS blocks the sums differently for other chunk widths).

``--prepass`` measures the float16 pre-pass (``timbral._core._topk_half``, forced at every
shape) against the exact kernel (no shape taking it) and NumPy (``q @ H.T``,
argpartition, sort; BLAS on the shape's threads) on the same shapes: the service's through a
``TopK`` built once, the search's through ``top_k``, which builds the float16 copy in each call
(its cost is printed too). The three methods run in a rotated order in each round; medians
over the rounds, the lists checked equal (but for items whose float32 scores tie within a
sum's rounding, which BLAS and the pre-pass's rescoring may order either way).

Targets: one user over 100K items within 1.3x NumPy ``H @ w`` alone and faster
than implicit; the 1000-user batch over 100K items under 0.3 s and at least 1.5x
faster than implicit's batch recommend.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's timbral

from threadpoolctl import threadpool_limits  # noqa: E402

from timbral import scoring  # noqa: E402
from timbral.scoring import top_k  # noqa: E402

N_FACTORS = 64
TOP = 10
N_THREADS = 2
BATCH_USERS = 1000
#: ``--scratch`` shapes: (name, users, items, threads); the search scores Last.fm's validation users.
CHUNK_SHAPES = (("search 1877x17617 2t", 1877, 17_617, 2),
                *((f"serve {u}x{n // 1000}K 1t", u, n, 1) for n in (10_000, 100_000) for u in (1, 8, 64)))
PAUSE_SECONDS = 0.5
NUMPY_BLOCK = 256  # users per NumPy block, so the batch baseline stays in bounded memory


def median_seconds(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median wall time of each ``fn()`` over ``reps`` runs, after one warm-up run.

    Each method runs alone, after a pause that lets the previous method's idle pool
    threads (OpenBLAS and OpenMP spin before sleeping) stop competing for the cores.
    Interleaving methods call by call instead measures that contention, not them.
    """
    out = {}
    for name, fn in fns.items():
        time.sleep(PAUSE_SECONDS)
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = statistics.median(times)
    return out


def numpy_top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores per row: argpartition, then sort those k."""
    part = np.argpartition(-scores, k - 1, axis=-1)[..., :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


def numpy_batch(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Top-k for each user row, scoring ``NUMPY_BLOCK`` users at a time."""
    return np.concatenate(
        [numpy_top(users[i : i + NUMPY_BLOCK] @ items.T, k) for i in range(0, len(users), NUMPY_BLOCK)]
    )


def implicit_model(users: np.ndarray, items: np.ndarray):
    """An implicit CPU ALS model carrying our factors (no fitting).

    Built under a one-thread BLAS limit only to silence its fit-time warning; its
    ``recommend`` is timed with BLAS on 2 threads, its fastest setting.
    """
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(limits=1, user_api="blas"):
        model = AlternatingLeastSquares(factors=N_FACTORS, num_threads=N_THREADS, random_state=0)
    model.user_factors = users
    model.item_factors = items
    return model


def compare(n_items: int, reps_one: int, reps_batch: int, seed: int = 0) -> dict[str, float]:
    """Time every method at ``n_items``; returns seconds per call by method name."""
    rng = np.random.default_rng(seed)
    items = rng.random((n_items, N_FACTORS), dtype=np.float32)
    users = rng.random((BATCH_USERS, N_FACTORS), dtype=np.float32)
    user = users[:1]
    model = implicit_model(users, items)
    batch_ids = np.arange(BATCH_USERS)
    with threadpool_limits(limits=N_THREADS, user_api="blas"):
        one = {
            "one/timbral": lambda: top_k(user, items, TOP, n_threads=N_THREADS),
            "one/numpy_matvec": lambda: items @ user[0],
            "one/numpy_full": lambda: numpy_top(items @ user[0], TOP),
            "one/implicit": lambda: model.recommend(0, None, N=TOP, filter_already_liked_items=False),
        }
        batch = {
            "batch/timbral": lambda: top_k(users, items, TOP, n_threads=N_THREADS),
            "batch/numpy_block": lambda: numpy_batch(users, items, TOP),
            "batch/implicit": lambda: model.recommend(
                batch_ids, None, N=TOP, filter_already_liked_items=False
            ),
        }
        out = median_seconds(one, reps_one) | median_seconds(batch, reps_batch)
    ids, _ = top_k(users[:20], items, TOP)
    np.testing.assert_array_equal(ids, numpy_batch(users[:20], items, TOP))  # same answers
    return out


def report(n_items: int, t: dict[str, float]) -> None:
    print(f"\n== {n_items:,} items, {N_FACTORS} factors, top-{TOP}, {N_THREADS} threads ==")
    for name, seconds in t.items():
        print(f"  {name:<20} {seconds * 1e3:10.3f} ms")
    one, batch = t["one/timbral"], t["batch/timbral"]
    print(f"  one user : timbral / numpy H@w      = {one / t['one/numpy_matvec']:.2f}x")
    print(f"  one user : timbral / numpy H@w+sel  = {one / t['one/numpy_full']:.2f}x")
    print(f"  one user : implicit / timbral       = {t['one/implicit'] / one:.2f}x faster")
    print(f"  batch    : implicit / timbral       = {t['batch/implicit'] / batch:.2f}x faster")
    print(f"  batch    : numpy block / timbral    = {t['batch/numpy_block'] / batch:.2f}x faster")


def scratch_sweep(values: list[int], rounds: int, seed: int = 0) -> None:
    """Time ``top_k`` at each ``SCRATCH_SCORES`` on ``CHUNK_SHAPES``, the values rotated each round."""
    rng = np.random.default_rng(seed)
    data = {name: (rng.random((u, N_FACTORS), dtype=np.float32), rng.random((n, N_FACTORS), dtype=np.float32), t)
            for name, u, n, t in CHUNK_SHAPES}
    times = {(name, c): [] for name in data for c in values}
    answers = {}
    default = scoring.SCRATCH_SCORES
    try:
        for r in range(rounds):
            for value in values[r % len(values):] + values[: r % len(values)]:
                scoring.SCRATCH_SCORES = value
                for name, (users, items, threads) in data.items():
                    reps = max(3, min(200, 20_000_000 // (users.shape[0] * items.shape[0])))
                    answers[name, value] = top_k(users, items, TOP, n_threads=threads)  # warm-up
                    start = time.perf_counter()
                    for _ in range(reps):
                        top_k(users, items, TOP, n_threads=threads)
                    times[name, value].append((time.perf_counter() - start) / reps)
    finally:
        scoring.SCRATCH_SCORES = default
    print(f"SCRATCH_SCORES sweep, {N_FACTORS} factors, top-{TOP}, BLOCK_QUERIES={scoring.BLOCK_QUERIES}, "
          f"CHUNK_ITEMS={scoring.CHUNK_ITEMS}, {rounds} rounds; time / time at {values[0]} (best, median)")
    print(f"  {'shape':<24}" + "".join(f"{c:>18}" for c in values) + f"   ms at {values[0]} (best)")
    for name in data:
        ref_best, ref_median = min(times[name, values[0]]), statistics.median(times[name, values[0]])
        cells = "".join(f"{min(times[name, c]) / ref_best:>9.3f}{statistics.median(times[name, c]) / ref_median:>9.3f}"
                        for c in values)
        print(f"  {name:<24}{cells}   {ref_best * 1e3:.3f}")
        ids, scores = answers[name, values[0]]
        for c in values[1:]:
            np.testing.assert_array_equal(answers[name, c][0], ids)
            np.testing.assert_allclose(answers[name, c][1], scores, rtol=N_FACTORS * np.finfo(np.float32).eps)
    print(f"  same lists at every value; scores within {N_FACTORS} float32 eps (a {N_FACTORS}-term sum's rounding)")


def same_lists(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray | None],
               users: np.ndarray, items: np.ndarray) -> None:
    """Equal ids, except where two items' float32 scores tie within a float32 sum's rounding
    (BLAS and the pre-pass's rescoring sum in different orders): there the swapped items'
    exact (float64) scores must be that close."""
    differ = got[0] != want[0]
    rows, _ = np.nonzero(differ)
    truth = lambda ids: np.einsum("rf,rf->r", users[rows].astype(np.float64), items[ids].astype(np.float64))  # noqa: E731
    np.testing.assert_allclose(truth(got[0][differ]), truth(want[0][differ]), rtol=N_FACTORS * 2.0**-23)


def prepass_compare(rounds: int, seed: int = 0) -> None:
    """Time the pre-pass, the exact kernel and NumPy on ``CHUNK_SHAPES``, the methods rotated each round."""
    rng = np.random.default_rng(seed)
    data = {name: (rng.random((u, N_FACTORS), dtype=np.float32), rng.random((n, N_FACTORS), dtype=np.float32), t)
            for name, u, n, t in CHUNK_SHAPES}
    prepared = {name: scoring.TopK(items) for name, (_, items, _) in data.items()}

    def kernel(name: str, prepass: bool) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        users, items, threads = data[name]

        def call() -> tuple[np.ndarray, np.ndarray]:
            # 0: the pre-pass at every shape; sys.maxsize: no shape pays, the exact kernel
            scoring.HALF_MIN_ITEMS_PER_QUERY = 0 if prepass else sys.maxsize
            if name.startswith("search"):  # the search's path: top_k builds the copy per call
                return top_k(users, items, TOP, n_threads=threads)
            return prepared[name](users, TOP, n_threads=threads)
        return call

    def numpy(name: str) -> Callable[[], np.ndarray]:
        users, items, _ = data[name]
        return lambda: numpy_batch(users, items, TOP)

    methods = ("prepass", "exact", "numpy")
    times = {(name, m): [] for name in data for m in (*methods, "build")}
    default_items_per_query = scoring.HALF_MIN_ITEMS_PER_QUERY
    try:
        for r in range(rounds):
            for name, (users, items, threads) in data.items():
                calls = {"prepass": kernel(name, True), "exact": kernel(name, False), "numpy": numpy(name)}
                reps = max(3, min(200, 20_000_000 // (users.shape[0] * items.shape[0])))
                answers = {}
                for method in methods[r % 3:] + methods[: r % 3]:
                    with threadpool_limits(limits=threads, user_api="blas"):  # NumPy's; the kernels set their own
                        answers[method] = calls[method]()  # warm-up, and the answer checked below
                        start = time.perf_counter()
                        for _ in range(reps):
                            calls[method]()
                        times[name, method].append((time.perf_counter() - start) / reps)
                same_lists(answers["prepass"], answers["exact"], users, items)
                same_lists(answers["prepass"], (answers["numpy"], None), users, items)
                start = time.perf_counter()
                scoring.half_items(items)
                times[name, "build"].append(time.perf_counter() - start)
    finally:
        scoring.HALF_MIN_ITEMS_PER_QUERY = default_items_per_query
    print(f"float16 pre-pass vs the exact kernel and NumPy, {N_FACTORS} factors, top-{TOP}, {rounds} rounds "
          f"(methods rotated), median ms per call; the lists equal in every round (to float32 near-ties)")
    print(f"  {'shape':<22}{'pre-pass':>10}{'exact':>10}{'numpy':>10}{'exact/pre':>11}{'numpy/pre':>11}"
          f"{'build':>9}")
    for name in data:
        med = {m: statistics.median(times[name, m]) for m in (*methods, "build")}
        print(f"  {name:<22}{med['prepass'] * 1e3:>10.3f}{med['exact'] * 1e3:>10.3f}{med['numpy'] * 1e3:>10.3f}"
              f"{med['exact'] / med['prepass']:>10.2f}x{med['numpy'] / med['prepass']:>10.2f}x"
              f"{med['build'] * 1e3:>9.3f}")
    print("  build: half_items(items) alone (inside the search's pre-pass time; once per model for the service)")
    print(f"  the library takes the pre-pass where a block has >= {default_items_per_query} items per query "
          "(scoring.HALF_MIN_ITEMS_PER_QUERY), else the exact kernel")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--scratch", type=int, nargs="+", help="sweep SCRATCH_SCORES over these values instead")
    parser.add_argument("--prepass", action="store_true", help="the float16 pre-pass vs the exact kernel and NumPy")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the --scratch sweep or --prepass")
    args = parser.parse_args(argv)
    if args.prepass:
        prepass_compare(args.rounds)
        return
    if args.scratch:
        scratch_sweep(args.scratch, args.rounds)
        return
    print(
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
        f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}"
    )
    for n_items in args.sizes:
        reps_one = max(20, min(1000, 50_000_000 // n_items))
        reps_batch = 3 if n_items >= 1_000_000 else 7
        report(n_items, compare(n_items, reps_one, reps_batch))


if __name__ == "__main__":
    main()
