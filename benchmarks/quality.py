"""Recommendation quality of Timbral against common baselines, in one table.

Usage::

    python benchmarks/quality.py DATA [--ratings RATINGS.csv] [--best regularization=30,confidence=log]

Every model is fitted on the same split (per-user random 20 % holdout, seed 0,
users with at least 5 interactions in test) and scored by the same functions of
``timbral.metrics`` (training items excluded): P@10, R@10, NDCG@10, MAP@10,
catalog coverage and fit seconds. Baselines: implicit's ALS (k=64,
regularization 0.05, 15 iterations; linear, log1p and bm25 confidence), implicit's
BPR, scikit-learn's NMF (cd solver) and item popularity. With ``--ratings``,
Timbral ``explicit`` is compared with Surprise's NMF and SVD on RMSE and MAE (80/20
per-user split, seed 0). Missing optional libraries are skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from timbral import NMFModel  # noqa: E402
from timbral.data import load_interactions  # noqa: E402
from timbral.metrics import ranking_metrics, rating_metrics  # noqa: E402
from timbral.split import random_split  # noqa: E402

K = 10
FACTORS = 64


class FactorRanker:
    """Top-K by ``user_factors @ item_factors.T`` with the training items excluded."""

    def __init__(self, user_factors: NDArray[Any], item_factors: NDArray[Any], train: sp.csr_matrix) -> None:
        self.user_factors = np.asarray(user_factors, dtype=np.float32)
        self.item_factors = np.asarray(item_factors, dtype=np.float32)
        self.user_items_ = train

    def recommend_batch(self, users: NDArray[np.integer], k: int, exclude_seen: bool = True) -> tuple[NDArray, NDArray]:
        scores = self.user_factors[users] @ self.item_factors.T
        if exclude_seen:
            seen = self.user_items_[users]
            rows = np.repeat(np.arange(len(users)), np.diff(seen.indptr))
            scores[rows, seen.indices] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        ids = np.take_along_axis(top, order, axis=1)
        return ids, np.take_along_axis(scores, ids, axis=1)


class ImplicitRanker:
    """Adapter for implicit's models (their own top-K with filter_already_liked_items)."""

    def __init__(self, model: Any, train: sp.csr_matrix) -> None:
        self.model = model
        self.user_items_ = train

    def recommend_batch(self, users: NDArray[np.integer], k: int, exclude_seen: bool = True) -> tuple[NDArray, NDArray]:
        return self.model.recommend(users, self.user_items_[users], N=k, filter_already_liked_items=exclude_seen)


def timed(fit: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    model = fit()
    return model, time.perf_counter() - start


def ranking_rows(path: str, best: dict[str, Any], iterations: int) -> list[dict[str, Any]]:
    data = load_interactions(path)
    train, test = random_split(data, test_fraction=0.2, seed=0, min_interactions=5)
    print(f"{path}: {data.n_users} users, {data.n_items} items, train {train.nnz}, test {test.nnz}", file=sys.stderr)
    candidates: list[tuple[str, Callable[[], Any]]] = [
        (f"timbral defaults (k={FACTORS})",
         lambda: NMFModel(n_components=FACTORS, max_iter=iterations).fit(train)),
        ("timbral best (" + ", ".join(f"{k}={v}" for k, v in best.items()) + ")",
         lambda: NMFModel(**{"n_components": FACTORS, "max_iter": iterations, **best}).fit(train)),
    ]
    try:
        from implicit.als import AlternatingLeastSquares
        from implicit.bpr import BayesianPersonalizedRanking
        from implicit.nearest_neighbours import bm25_weight

        def als(weights: sp.csr_matrix) -> ImplicitRanker:
            model = AlternatingLeastSquares(factors=FACTORS, regularization=0.05, iterations=15,
                                            random_state=0, use_gpu=False)
            model.fit(weights.astype(np.float32), show_progress=False)
            return ImplicitRanker(model, train)

        log_train = train.copy()
        log_train.data = np.log1p(log_train.data)
        bm25_train = bm25_weight(train, K1=100, B=0.8).tocsr()
        binary = train.copy()
        binary.data[:] = 1

        def bpr() -> ImplicitRanker:
            model = BayesianPersonalizedRanking(factors=FACTORS, random_state=0)
            model.fit(binary.astype(np.float32), show_progress=False)
            return ImplicitRanker(model, train)

        candidates += [
            ("implicit ALS linear", lambda: als(train)),
            ("implicit ALS log1p", lambda: als(log_train)),
            ("implicit ALS bm25", lambda: als(bm25_train)),
            ("implicit BPR", bpr),
        ]
    except ImportError as exc:
        print(f"skipping implicit baselines: {exc}", file=sys.stderr)
    try:
        from sklearn.decomposition import NMF

        def sk_nmf() -> FactorRanker:
            model = NMF(n_components=FACTORS, solver="cd", init="nndsvda", max_iter=200, random_state=0)
            log_train = train.copy()
            log_train.data = np.log1p(log_train.data)
            users = model.fit_transform(log_train)
            return FactorRanker(users, model.components_.T, train)

        candidates.append(("scikit-learn NMF cd (log1p)", sk_nmf))
    except ImportError as exc:
        print(f"skipping scikit-learn NMF: {exc}", file=sys.stderr)
    popularity = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float32)
    candidates.append(("popularity", lambda: FactorRanker(np.ones((train.shape[0], 1)), popularity[:, None], train)))

    rows = []
    for name, fit in candidates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, seconds = timed(fit)
        scores = ranking_metrics(model, train, test, k=K)
        rows.append({"model": name, **scores, "fit_s": seconds})
        print(f"  {name}: ndcg {scores['ndcg']:.4f} ({seconds:.1f}s)", file=sys.stderr)
    return rows


def rating_rows(path: str, iterations: int) -> list[dict[str, Any]]:
    data = load_interactions(path, feedback="explicit", max_value=None)
    train, test = random_split(data, test_fraction=0.2, seed=0, min_interactions=5)
    candidates: list[tuple[str, Callable[[], Any]]] = [
        ("timbral explicit (defaults)", lambda: NMFModel(feedback="explicit", max_iter=iterations).fit(train)),
    ]
    try:
        import pandas as pd
        from surprise import NMF as SurpriseNMF
        from surprise import SVD, Dataset, Reader

        coo = train.tocoo()
        frame = pd.DataFrame({"u": coo.row, "i": coo.col, "r": coo.data.astype(float)})
        trainset = Dataset.load_from_df(frame, Reader(rating_scale=(0.5, 5.0))).build_full_trainset()

        class SurpriseModel:
            def __init__(self, algo: Any) -> None:
                self.algo = algo.fit(trainset)

            def predict(self, users: NDArray[np.integer], items: NDArray[np.integer]) -> NDArray[np.float64]:
                return np.array([self.algo.predict(int(u), int(i)).est for u, i in zip(users, items)])

        candidates += [
            ("surprise NMF", lambda: SurpriseModel(SurpriseNMF(random_state=0))),
            ("surprise SVD", lambda: SurpriseModel(SVD(random_state=0))),
        ]
    except ImportError as exc:
        print(f"skipping Surprise baselines: {exc}", file=sys.stderr)
    rows = []
    for name, fit in candidates:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, seconds = timed(fit)
        rows.append({"model": name, **rating_metrics(model, test), "fit_s": seconds})
        print(f"  {name}: rmse {rows[-1]['rmse']:.4f} ({seconds:.1f}s)", file=sys.stderr)
    return rows


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    width = max(len(r["model"]) for r in rows)
    head = f"{'model':<{width}}  " + "  ".join(f"{title:>8}" for _, title in columns)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "  ".join(
            f"{r[key]:>8.2f}" if key == "fit_s" else f"{r[key]:>8.4f}" for key, _ in columns
        )
        lines.append(f"{r['model']:<{width}}  {cells}")
    return "\n".join(lines)


def parse_best(text: str) -> dict[str, Any]:
    best: dict[str, Any] = {}
    for pair in filter(None, text.split(",")):
        key, _, value = pair.partition("=")
        try:
            best[key.strip()] = json.loads(value)
        except ValueError:
            best[key.strip()] = value.strip()
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="implicit interactions (e.g. lastfm-2k/user_artists.dat)")
    parser.add_argument("--ratings", help="explicit ratings (e.g. ml-latest-small/ratings.csv)")
    parser.add_argument("--best", default="regularization=30,confidence=log",
                        help="Timbral's best setting as key=value pairs (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=15, help="max_iter of Timbral models (default: 15)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of tables")
    args = parser.parse_args(argv)
    result = {"ranking": ranking_rows(args.data, parse_best(args.best), args.iterations)}
    if args.ratings:
        result["rating"] = rating_rows(args.ratings, args.iterations)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(table(result["ranking"], [("precision", "P@10"), ("recall", "R@10"), ("ndcg", "NDCG@10"),
                                    ("map", "MAP@10"), ("coverage", "coverage"), ("fit_s", "fit s")]))
    if "rating" in result:
        print()
        print(table(result["rating"], [("rmse", "RMSE"), ("mae", "MAE"), ("fit_s", "fit s")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
