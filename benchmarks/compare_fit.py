"""Fit speed and memory of Timbral's NMF against implicit's ALS and scikit-learn's NMF.

In one process, on 2 threads with k = 64:

* implicit feedback: Timbral ``fit_nmf(feedback="implicit")`` vs
  ``implicit.cpu.als.AlternatingLeastSquares`` (15 iterations each): seconds per
  iteration and their ratio (target: Timbral ≤ ALS);
* frobenius: scikit-learn ``NMF(solver="cd")`` from the same random init, run to its
  own stopping point; then the time Timbral needs to reach sklearn's final
  reconstruction error ‖R − W Hᵀ‖_F (target: ≥ 20× faster);
* the fit's peak traced memory (tracemalloc; the kernels allocate scratch through
  ``PyMem_RawMalloc`` so it is traced too) relative to R CSR + both factors + one
  transposed copy of R;
* ``--scale``: how both implicit-feedback fits grow with the data, on power-law
  100K × 100K matrices of 1M, 8M and 27M interactions (``--sizes``): seconds per
  iteration, their ratio (target: Timbral ≤ 0.6× ALS) and each fit's peak RSS (target:
  ≤ 1.05× ALS). Every fit runs in a fresh process that loads the same saved matrix,
  Timbral and ALS alternate, and medians over ``--repeats`` rounds are reported, with
  the CPU-time ratio beside the wall-clock one (on a busy shared machine the CPU time
  is the steadier of the two).
* ``--profile``: where one fit's time goes on the same matrices: wall seconds per
  epoch of each phase (W half-step, H half-step, the XᵀX Gram products, the rest),
  then one half-step of each side solved by row-length bucket on one thread
  (CPU ns per stored entry, split into the gather, run with 0 sweeps, and the sweep).

``--cache DIR`` keeps the generated ``--scale``/``--profile`` matrices (seeded, so
a cached one is the one that would be generated: 27M takes minutes to draw).

Usage::

    python benchmarks/compare_fit.py path/to/lastfm-2k/user_artists.dat
    python benchmarks/compare_fit.py --generate 50000 20000 1000000 --sklearn-max-iter 50
    python benchmarks/compare_fit.py --scale [--sizes 1000000 8000000] [--repeats 3]
    python benchmarks/compare_fit.py --profile --sizes 27000000 --cache /tmp/matrices
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's timbral

from timbral._core import nmf as kernels  # noqa: E402
from timbral.exceptions import ConvergenceWarning  # noqa: E402
from timbral.nmf.fit import (  # noqa: E402
    Factors,
    Solved,
    SolveSettings,
    Triplet,
    fit_nmf,
    half_step,
)
from timbral.nmf.init import init_factors  # noqa: E402

K, ITERATIONS, THREADS = 64, 15, 2
NEAR = 1.001  # "within 0.1 %" of sklearn's final reconstruction error


def load_lastfm(path: str) -> sp.csr_matrix:
    """users × artists play counts from hetrec2011 ``user_artists.dat`` (userID artistID weight)."""
    table = np.loadtxt(path, skiprows=1, dtype=np.int64)
    users = np.unique(table[:, 0], return_inverse=True)[1]
    items = np.unique(table[:, 1], return_inverse=True)[1]
    R = sp.csr_matrix((table[:, 2].astype(np.float32), (users, items)))
    R.sum_duplicates()
    return R


def generate_power_law(n_users: int, n_items: int, nnz: int, seed: int = 0) -> sp.csr_matrix:
    """Play counts with power-law user activity (rank^-0.5) and item popularity (rank^-0.9).

    Draws distinct (user, item) pairs until ``nnz`` are stored; values are 1 + geometric.
    """
    rng = np.random.default_rng(seed)
    p_user = np.arange(1, n_users + 1) ** -0.5
    p_item = np.arange(1, n_items + 1) ** -0.9
    keys = np.empty(0, np.int64)
    while keys.size < nnz:
        m = int(1.2 * (nnz - keys.size)) + 1000
        u = rng.choice(n_users, m, p=p_user / p_user.sum())
        i = rng.choice(n_items, m, p=p_item / p_item.sum())
        keys = np.unique(np.concatenate([keys, u.astype(np.int64) * n_items + i]))
    keys = rng.permutation(keys)[:nnz]
    values = (1 + rng.geometric(0.05, nnz)).astype(np.float32)
    R = sp.csr_matrix((values, (keys // n_items, keys % n_items)), shape=(n_users, n_items))
    R.sort_indices()
    return R


def _fit(R: sp.csr_matrix, **params) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit_nmf(R, n_components=K, n_threads=THREADS, **params)


def compare_implicit(R: sp.csr_matrix, repeats: int = 3) -> dict[str, float]:
    """Seconds per iteration: Timbral implicit (linear, alpha=1, l2=0.05) vs implicit ALS.

    The two fits alternate ``repeats`` times and the medians are reported, so a
    burst of load on a shared machine does not land on one side only.
    """
    from implicit.cpu.als import AlternatingLeastSquares

    ours, theirs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        _fit(R, feedback="implicit", alpha=1.0, confidence="linear", l2=0.05, max_iter=ITERATIONS, tol=0.0,
             rng=np.random.default_rng(0))
        ours.append((time.perf_counter() - start) / ITERATIONS)
        with threadpool_limits(1, "blas"):
            als = AlternatingLeastSquares(factors=K, iterations=ITERATIONS, regularization=0.05,
                                          calculate_training_loss=False, num_threads=THREADS,
                                          random_state=0)
            start = time.perf_counter()
            als.fit(R, show_progress=False)
            theirs.append((time.perf_counter() - start) / ITERATIONS)
    ours_s, theirs_s = float(np.median(ours)), float(np.median(theirs))
    return {"timbral_s_per_iter": ours_s, "als_s_per_iter": theirs_s,
            "als_over_timbral": theirs_s / ours_s}


class _Reached(Exception):
    """Raised from the fit callback once sklearn's error is reached (stops the clock)."""


def compare_frobenius(R: sp.csr_matrix, sklearn_max_iter: int = 200) -> dict[str, float]:
    """Time for sklearn cd to stop vs time for Timbral to reach sklearn's final error.

    Both start from the same random init. Timbral gets at most as many iterations
    as sklearn ran; if it has not reached sklearn's error by then the time ratio is
    reported as 0 and ``timbral_error`` says how close it came. Both fits wander to
    slightly different local minima, so the time to come within 0.1 % of sklearn's
    error is reported too.
    """
    from sklearn.decomposition import NMF

    W0, H0 = init_factors(R, K, "random", np.random.default_rng(0), np.dtype(np.float32))
    sk = NMF(n_components=K, solver="cd", init="custom", max_iter=sklearn_max_iter)
    with threadpool_limits(THREADS, "blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        sk.fit_transform(R, W=W0.copy(), H=np.ascontiguousarray(H0.T))
        sk_time = time.perf_counter() - start
    target = sk.reconstruction_err_

    reached: dict[str, float] = {"seconds": np.inf, "iterations": -1, "near_seconds": np.inf}
    start = time.perf_counter()

    def stop_at_target(iteration: int, loss: float) -> None:
        reached["error"] = np.sqrt(max(loss, 0.0))
        if reached["error"] <= NEAR * target and np.isinf(reached["near_seconds"]):
            reached["near_seconds"] = time.perf_counter() - start
        if reached["error"] <= target:
            reached.update(seconds=time.perf_counter() - start, iterations=iteration)
            raise _Reached

    try:
        _fit(R, feedback="frobenius", l2=0.0, max_iter=sk.n_iter_, tol=0.0,
             rng=np.random.default_rng(0), callback=stop_at_target)
    except _Reached:
        pass
    return {
        "sklearn_s": sk_time,
        "sklearn_iterations": sk.n_iter_,
        "sklearn_error": target,
        "timbral_error": reached["error"],
        "timbral_s_to_sklearn_error": reached["seconds"],
        "timbral_iterations": reached["iterations"],
        "sklearn_over_timbral": sk_time / reached["seconds"],
        "timbral_s_to_within_0.1pct": reached["near_seconds"],
        "sklearn_over_timbral_within_0.1pct": sk_time / reached["near_seconds"],
    }


def peak_memory(R: sp.csr_matrix, feedback: str = "implicit") -> dict[str, float]:
    """Traced peak during a 3-iteration fit (plus R itself) over R + factors + Rᵀ."""
    csr_bytes = R.data.nbytes + R.indices.nbytes + R.indptr.nbytes
    transposed_bytes = R.data.nbytes + R.indices.nbytes + (R.shape[1] + 1) * R.indptr.itemsize
    factor_bytes = (R.shape[0] + R.shape[1]) * K * 4
    baseline = csr_bytes + factor_bytes + transposed_bytes
    tracemalloc.start()
    _fit(R, feedback=feedback, max_iter=3, tol=0.0, rng=np.random.default_rng(0))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"baseline_MB": baseline / 1e6, "peak_MB": (peak + csr_bytes) / 1e6,
            "peak_over_baseline": (peak + csr_bytes) / baseline}


SCALE_SIZES = (1_000_000, 8_000_000, 27_000_000)
SCALE_SHAPE = (100_000, 100_000)


def scale_matrix(nnz: int, cache: str | None) -> sp.csr_matrix:
    """The power-law ``SCALE_SHAPE`` matrix of ``nnz`` interactions, from ``cache`` when
    it holds one (the generator is seeded: a cached matrix is the one it would draw)."""
    path = Path(cache) / f"power_law_{SCALE_SHAPE[0]}x{SCALE_SHAPE[1]}_{nnz}.npz" if cache else None
    if path is not None and path.exists():
        return sp.load_npz(path).tocsr()
    R = generate_power_law(*SCALE_SHAPE, nnz)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        sp.save_npz(path, R, compressed=False)
    return R


def _fit_in_child(library: str, path: str, iterations: int, queue: multiprocessing.Queue) -> None:
    """Fit one library on the saved matrix; put (wall s/iter, CPU s/iter, peak RSS bytes)."""
    R = sp.load_npz(path).tocsr()
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        wall, cpu = time.perf_counter(), time.process_time()
        if library == "timbral":
            from timbral import NMFModel

            NMFModel(n_components=K, feedback="implicit", alpha=1.0, confidence="linear",
                     regularization=0.05, max_iter=iterations, tol=0.0, random_state=0,
                     n_threads=THREADS).fit(R)
        else:
            from implicit.cpu.als import AlternatingLeastSquares

            AlternatingLeastSquares(factors=K, iterations=iterations, regularization=0.05,
                                    calculate_training_loss=False, num_threads=THREADS,
                                    random_state=0).fit(R, show_progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    queue.put((wall / iterations, cpu / iterations, peak))


def _fit_fresh(library: str, path: str, iterations: int) -> tuple[float, float, int]:
    """``_fit_in_child`` in a new interpreter, so its peak RSS is its own."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_fit_in_child, args=(library, path, iterations, queue))
    child.start()
    result = queue.get()
    child.join()
    return result


def compare_scale(sizes: list[int], iterations: int, repeats: int, cache: str | None) -> None:
    """Print one table row per size, as it is measured: medians of Timbral's and ALS's
    s/iteration and peak RSS."""
    print(f"k={K}, {THREADS} threads, power-law {SCALE_SHAPE[0]:,} × {SCALE_SHAPE[1]:,}, "
          f"implicit feedback, {iterations} iterations, medians of {repeats} rounds; "
          "ratio = Timbral / ALS (target ≤ 0.6; RSS ≤ 1.05×)")
    print("| interactions | Timbral s/epoch | implicit ALS s/iteration | ratio | CPU-time ratio "
          "| peak RSS Timbral / implicit |")
    print("|---|---|---|---|---|---|", flush=True)
    for nnz in sizes:
        R = scale_matrix(nnz, cache)
        with tempfile.TemporaryDirectory() as tmp:
            path = str(Path(tmp) / "user_items.npz")
            sp.save_npz(path, R, compressed=False)
            del R
            runs: dict[str, list[tuple[float, float, int]]] = {"timbral": [], "als": []}
            for _ in range(repeats):
                for library in runs:
                    runs[library].append(_fit_fresh(library, path, iterations))
        ours, theirs = (np.median(np.array(runs[name], dtype=float), axis=0) for name in runs)
        print(f"| {nnz / 1e6:.1f}M | {ours[0]:.3f} | {theirs[0]:.3f} | {ours[0] / theirs[0]:.2f}× "
              f"| {ours[1] / theirs[1]:.2f}× | {ours[2] / 1e9:.2f} / {theirs[2] / 1e9:.2f} GB |",
              flush=True)

class _TimedBackend:
    """The local backend's half-steps, each phase's wall seconds added to ``seconds``."""

    supports_biases = True

    def __init__(self, n_threads: int) -> None:
        self.n_threads = n_threads
        self.seconds = {"W half-step": 0.0, "H half-step": 0.0, "Gram XᵀX": 0.0}

    def place(self, user_rows: Triplet, item_rows: Triplet, settings: SolveSettings) -> None:
        self.sides, self.settings = (user_rows, item_rows), settings

    def solve(self, side: int, X: Factors, Y: Factors, gram: Factors, row_loss: bool) -> Solved:
        loss = np.empty(X.shape[0]) if row_loss else None
        start = time.perf_counter()
        half_step(self.sides[side], X, Y, gram, self.settings, self.n_threads, loss)
        middle = time.perf_counter()
        XtX = X.T @ X
        self.seconds["WH"[side] + " half-step"] += middle - start
        self.seconds["Gram XᵀX"] += time.perf_counter() - middle
        return X, XtX, loss


#: Row-length buckets of ``--profile``: short, medium, long, read in chunks (> LONG_ROW_ENTRIES).
BUCKETS = ((1, 100), (101, 1000), (1001, kernels.LONG_ROW_ENTRIES),
           (kernels.LONG_ROW_ENTRIES + 1, np.iinfo(np.int64).max))


#: Rows per block of the kernel's dynamic schedule (``BLOCK`` in ``_nmf_impl.pxi``).
BLOCK_ROWS = 16


def _largest_block_share(indptr: NDArray[np.integer]) -> float:
    """The entries of the largest block of BLOCK_ROWS consecutive rows, as a share of all."""
    ends = indptr[::BLOCK_ROWS]
    ends = np.append(ends, indptr[-1]) if ends[-1] != indptr[-1] else ends
    return float(np.diff(ends).max() / max(int(indptr[-1]), 1))


def _bucket_costs(R: sp.csr_matrix, X: Factors, Y: Factors, gram: Factors) -> list[str]:
    """Table rows: each bucket's share of the entries and CPU ns per entry of one
    half-step on one thread, total and gather (0 sweeps); the sweep is the difference."""
    lengths = np.diff(R.indptr)
    rows = []
    for low, high in BUCKETS:
        chosen = np.flatnonzero((lengths >= low) & (lengths <= high))
        if chosen.size == 0:
            continue
        part = R[chosen]
        ns = {}
        for sweeps in (0, 1):
            Xpart = X[chosen]  # a copy: every run starts from the same factors
            cpu = time.process_time()
            kernels.solve_rows(part.indptr, part.indices, part.data, Xpart, Y, gram,
                               1.0, 1.0, True, 1.0, 0.0, sweeps, 1)
            ns[sweeps] = (time.process_time() - cpu) / part.nnz * 1e9
        high_text = f"{high:,}" if high < np.iinfo(np.int64).max else "…"
        rows.append(f"{low:,}–{high_text} | {chosen.size:,} | {part.nnz / R.nnz:.0%} | "
                    f"{ns[1]:.0f} | {ns[0]:.0f} | {ns[1] - ns[0]:.0f}")
    return rows


def profile_fit(sizes: list[int], iterations: int, cache: str | None) -> None:
    """Print where a fit's time goes at each size: phases per epoch, then row buckets."""
    print(f"k={K}, {THREADS} threads, power-law {SCALE_SHAPE[0]:,} × {SCALE_SHAPE[1]:,}, "
          f"implicit feedback (linear, alpha=1, l2=0.05), {iterations} iterations; "
          f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    for nnz in sizes:
        R = scale_matrix(nnz, cache)
        backend = _TimedBackend(THREADS)
        start = time.perf_counter()
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit = fit_nmf(R, n_components=K, feedback="implicit", alpha=1.0,
                          confidence="linear", l2=0.05, max_iter=iterations, tol=0.0,
                          rng=np.random.default_rng(0), backend=backend)
            total = time.perf_counter() - start
            phases = {**backend.seconds, "the rest (set-up, loss)": total - sum(backend.seconds.values())}
            print(f"\n{nnz / 1e6:.1f}M interactions: {total / iterations:.3f} s per epoch "
                  "(wall, set-up included)\n\n| phase | s/epoch | share |\n|---|---|---|")
            for name, seconds in phases.items():
                print(f"| {name} | {seconds / iterations:.3f} | {seconds / total:.0%} |")
            W, H = fit.user_factors, fit.item_factors
            Rt = sp.csr_matrix(R.T)
            print("\n| half-step | rows of length | rows | share of entries | ns/entry "
                  "| gather | sweep |\n|---|---|---|---|---|---|---|", flush=True)
            sides = (("W (users)", R, W, H), ("H (items)", Rt, H, W))
            for name, M, X, Y in sides:
                gram = Y.T @ Y
                gram[np.diag_indices_from(gram)] += 0.05
                for row in _bucket_costs(M, X, Y, gram):
                    print(f"| {name} | {row} |", flush=True)
            for name, M, _, _ in sides:
                print(f"{name}: the largest block of {BLOCK_ROWS} rows holds "
                      f"{_largest_block_share(M.indptr):.2%} of the entries (the most a "
                      f"thread can idle at the end of a dynamic schedule, as a share of "
                      f"one thread's work, is {THREADS} times that)")
        print(f"(load average {os.getloadavg()[0]:.1f} at the end)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="lastfm user_artists.dat")
    parser.add_argument("--generate", nargs=3, type=int, metavar=("N_USERS", "N_ITEMS", "NNZ"))
    parser.add_argument("--sklearn-max-iter", type=int, default=200)
    parser.add_argument("--scale", action="store_true",
                        help="Timbral vs implicit ALS on growing power-law matrices")
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SCALE_SIZES),
                        metavar="NNZ", help="interactions per --scale matrix")
    parser.add_argument("--iterations", type=int, default=ITERATIONS,
                        help="iterations per --scale fit")
    parser.add_argument("--repeats", type=int, default=3, help="--scale rounds (medians)")
    parser.add_argument("--profile", action="store_true",
                        help="where the fit's time goes on the --sizes matrices")
    parser.add_argument("--cache", metavar="DIR",
                        help="keep the generated --scale/--profile matrices here")
    args = parser.parse_args(argv)
    if args.scale:
        compare_scale(args.sizes, args.iterations, args.repeats, args.cache)
        return
    if args.profile:
        profile_fit(args.sizes, args.iterations, args.cache)
        return
    if (args.path is None) == (args.generate is None):
        parser.error("give a path to user_artists.dat, --generate N_USERS N_ITEMS NNZ, "
                     "or --scale")
    R = load_lastfm(args.path) if args.path else generate_power_law(*args.generate)
    print(f"matrix: {R.shape[0]} users × {R.shape[1]} items, {R.nnz} stored; k={K}, "
          f"{THREADS} threads")
    for name, figures in (
        ("implicit", compare_implicit(R)),
        ("frobenius", compare_frobenius(R, args.sklearn_max_iter)),
        ("memory (implicit)", peak_memory(R, "implicit")),
        ("memory (explicit)", peak_memory(R, "explicit")),
    ):
        print(f"{name}: " + ", ".join(f"{key}={value:.4g}" for key, value in figures.items()))


if __name__ == "__main__":
    main()
