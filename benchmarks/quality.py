"""Recommendation quality of Timbral against common baselines, measured once on a test split.

Usage::

    python benchmarks/quality.py DATA [DATA ...] [--ratings RATINGS.csv] [--json]
    python benchmarks/quality.py --generate USERS ITEMS INTERACTIONS [--values hours] [--scale-values F]

Nested protocol: an outer per-user random holdout (20 %, seed 0, users with at
least 5 interactions) gives ``train`` and ``test``; an inner holdout of ``train``
(20 %, seed 1) gives ``fit`` and ``valid``. Every method with hyperparameters is
tuned on ``valid`` over a comparable budget (a grid of at most ~15 settings),
refitted on ``train`` with the chosen setting, and scored once on ``test``; the
chosen setting is printed beside each figure. Timbral's rows are its defaults
(``NMFModel(n_components=64)``: λ, the confidence scaling and ν of the frequency-scaled
ridge chosen by its own validation search inside ``train``), ``confidence="log"`` (the
scaling fixed, as the defaults were before) and ``frequency_scale=0`` (the plain ridge,
as the defaults were before): nothing of ``test`` is seen by any method.

Stand-ins for data sets we do not have: ``--generate`` draws music-like play counts
from ``timbral.generate`` (seed 0; counts are larger inside a listener's genres, so
the values carry preference), ``--values hours`` turns them into hours played
(:func:`as_hours`: fractional, heavy-tailed, 40 % of users with 1-4 titles), and
``--scale-values F`` multiplies every value (e.g. play counts × 3.5 / 60).

Implicit feedback (P@10, R@10, NDCG@10, MAP@10, coverage; training items
excluded), all at k = 64 factors: implicit's ALS (λ ∈ {0.05, 3, 10, 30, 100} ×
confidence {raw, log1p, bm25}, 15 iterations), implicit's BPR, scikit-learn's NMF
(cd, log1p values), EASE (Steck 2019; the closed-form item-item model on the
``EASE_MAX_ITEMS`` most played items) and item popularity. With ``--ratings``
(explicit, RMSE and MAE): Timbral explicit defaults, Surprise SVD and NMF, and the
regularised bias-only model. Missing optional libraries are skipped with a message.

References
----------
Steck. Embarrassingly Shallow Autoencoders for Sparse Data. WWW 2019.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from timbral import NMFModel  # noqa: E402
from timbral.data import load_interactions  # noqa: E402
from timbral.generate import generate_interactions  # noqa: E402
from timbral.metrics import ranking_metrics, rating_metrics  # noqa: E402
from timbral.split import random_split  # noqa: E402

K = 10
FACTORS = 64
#: EASE inverts an items × items matrix: it runs on the most played items only.
EASE_MAX_ITEMS = 6_000
#: ``--values hours``: share of users who keep only 1–4 items (light players).
LIGHT_SHARE = 0.4

Fit = Callable[[sp.csr_matrix, dict[str, Any]], Any]


class FactorRanker:
    """Top-K by ``user_factors @ item_factors.T`` with the training items excluded."""

    def __init__(self, user_factors: NDArray[Any], item_factors: NDArray[Any], train: sp.csr_matrix) -> None:
        self.user_factors = np.asarray(user_factors, dtype=np.float32)
        self.item_factors = np.asarray(item_factors, dtype=np.float32)
        self.user_items_ = train

    def scores(self, users: NDArray[np.integer]) -> NDArray[np.float32]:
        return self.user_factors[users] @ self.item_factors.T

    def recommend_batch(self, users: NDArray[np.integer], k: int, exclude_seen: bool = True) -> tuple[NDArray, NDArray]:
        scores = self.scores(users)
        if exclude_seen:
            seen = self.user_items_[users]
            rows = np.repeat(np.arange(len(users)), np.diff(seen.indptr))
            scores[rows, seen.indices] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        ids = np.take_along_axis(top, order, axis=1)
        return ids, np.take_along_axis(scores, ids, axis=1)


class EaseRanker(FactorRanker):
    """EASE: scores = X B with B = I − P / diag(P), P = (XᵀX + λI)⁻¹, diag(B) = 0 (Steck 2019)."""

    def __init__(self, train: sp.csr_matrix, items: NDArray[np.integer], weights: NDArray[np.float32]) -> None:
        self.user_items_ = train
        self.items, self.weights = items, weights
        self.binary = (train[:, items] > 0).astype(np.float32).tocsr()

    def scores(self, users: NDArray[np.integer]) -> NDArray[np.float32]:
        out = np.full((len(users), self.user_items_.shape[1]), -np.inf, dtype=np.float32)
        out[:, self.items] = self.binary[users] @ self.weights
        return out


class ImplicitRanker:
    """Adapter for implicit's models (their own top-K with filter_already_liked_items)."""

    def __init__(self, model: Any, train: sp.csr_matrix) -> None:
        self.model = model
        self.user_items_ = train

    def recommend_batch(self, users: NDArray[np.integer], k: int, exclude_seen: bool = True) -> tuple[NDArray, NDArray]:
        return self.model.recommend(users, self.user_items_[users], N=k, filter_already_liked_items=exclude_seen)


def timbral_default(train: sp.csr_matrix, setting: dict[str, Any]) -> NMFModel:
    return NMFModel(n_components=FACTORS, **setting).fit(train)


def ease(train: sp.csr_matrix, setting: dict[str, Any]) -> EaseRanker:
    plays = np.asarray((train > 0).sum(axis=0)).ravel()
    items = np.sort(np.argsort(-plays, kind="stable")[:EASE_MAX_ITEMS])
    X = (train[:, items] > 0).astype(np.float64)
    gram = (X.T @ X).toarray()
    gram[np.diag_indices_from(gram)] += setting["lambda"]
    P = np.linalg.inv(gram)
    B = P / -np.diag(P)
    B[np.diag_indices_from(B)] = 0.0
    return EaseRanker(train, items, B.astype(np.float32))


def popularity(train: sp.csr_matrix, setting: dict[str, Any]) -> FactorRanker:
    counts = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float32)
    return FactorRanker(np.ones((train.shape[0], 1)), counts[:, None], train)


def implicit_methods() -> list[tuple[str, Fit, list[dict[str, Any]]]]:
    try:
        from implicit.als import AlternatingLeastSquares
        from implicit.bpr import BayesianPersonalizedRanking
        from implicit.nearest_neighbours import bm25_weight
    except ImportError as exc:
        print(f"skipping implicit baselines: {exc}", file=sys.stderr)
        return []

    def weighted(train: sp.csr_matrix, scaling: str) -> sp.csr_matrix:
        if scaling == "bm25":
            return bm25_weight(train, K1=100, B=0.8).tocsr().astype(np.float32)
        out = train.astype(np.float32)
        if scaling == "log1p":
            out.data = np.log1p(out.data)
        return out

    def als(train: sp.csr_matrix, setting: dict[str, Any]) -> ImplicitRanker:
        model = AlternatingLeastSquares(factors=FACTORS, regularization=setting["lambda"], iterations=15,
                                        random_state=0, use_gpu=False)
        model.fit(weighted(train, setting["confidence"]), show_progress=False)
        return ImplicitRanker(model, train)

    def bpr(train: sp.csr_matrix, setting: dict[str, Any]) -> ImplicitRanker:
        binary = train.copy()
        binary.data[:] = 1
        model = BayesianPersonalizedRanking(factors=FACTORS, random_state=0, use_gpu=False, **setting)
        model.fit(binary.astype(np.float32), show_progress=False)
        return ImplicitRanker(model, train)

    return [
        ("implicit ALS", als, grid(**{"lambda": [0.05, 3, 10, 30, 100], "confidence": ["raw", "log1p", "bm25"]})),
        ("implicit BPR", bpr, grid(learning_rate=[0.01, 0.05], regularization=[0.001, 0.01], iterations=[100])),
    ]


def sklearn_nmf_method() -> list[tuple[str, Fit, list[dict[str, Any]]]]:
    try:
        from sklearn.decomposition import NMF
    except ImportError as exc:
        print(f"skipping scikit-learn NMF: {exc}", file=sys.stderr)
        return []

    def fit(train: sp.csr_matrix, setting: dict[str, Any]) -> FactorRanker:
        model = NMF(n_components=FACTORS, solver="cd", init="nndsvda", max_iter=200, random_state=0, **setting)
        values = train.astype(np.float64)
        values.data = np.log1p(values.data)
        users = model.fit_transform(values)
        return FactorRanker(users, model.components_.T, train)

    return [("scikit-learn NMF cd (log1p)", fit, grid(alpha_W=[0.0, 0.001, 0.01]))]


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def nested(name: str, fit: Fit, settings: list[dict[str, Any]], inner: tuple[sp.csr_matrix, sp.csr_matrix],
           outer: tuple[sp.csr_matrix, sp.csr_matrix], score: Callable[[Any, sp.csr_matrix, sp.csr_matrix], float],
           higher_is_better: bool) -> dict[str, Any]:
    """Choose ``settings`` on the inner split, refit on the outer training part, score the test part once."""
    started = time.perf_counter()
    chosen, validation = settings[0], None
    if len(settings) > 1:
        results = []
        for setting in settings:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results.append(score(fit(inner[0], setting), *inner))
        best = int(np.argmax(results) if higher_is_better else np.argmin(results))
        chosen, validation = settings[best], results[best]
    tuning_s = time.perf_counter() - started
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tick = time.perf_counter()
        model = fit(outer[0], chosen)
        fit_s = time.perf_counter() - tick
    chosen = dict(chosen)
    if isinstance(model, NMFModel):  # Timbral's own choices, made inside fit on train only
        chosen["regularization"] = model.regularization_
        chosen["frequency_scale"] = model.frequency_scale_
        if model.feedback == "implicit":
            chosen["confidence"] = model.confidence_
    return {"model": name, "chosen": chosen, "validation": validation, "model_obj": model, "fit_s": fit_s,
            "tuning_s": tuning_s, "settings_tried": len(settings)}


def ndcg(model: Any, train: sp.csr_matrix, test: sp.csr_matrix) -> float:
    return ranking_metrics(model, train, test, k=K)["ndcg"]


def selected(methods: list[tuple[str, Fit, list[dict[str, Any]]]], only: list[str] | None
             ) -> list[tuple[str, Fit, list[dict[str, Any]]]]:
    """The methods whose name contains one of ``only`` (all without it)."""
    return [m for m in methods if not only or any(word.lower() in m[0].lower() for word in only)]


def generated(n_users: int, n_items: int, n_interactions: int) -> sp.csr_matrix:
    """Music-like play counts from ``timbral.generate`` (seed 0), duplicates summed."""
    table = generate_interactions(n_users, n_items, n_interactions, seed=0)
    users = table.column(0).to_numpy() - 1
    items = table.column(1).to_numpy() - 1
    plays = table.column(2).to_numpy().astype(np.float32)
    matrix = sp.csr_matrix((plays, (users, items)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    return matrix


def as_hours(matrix: sp.csr_matrix, seed: int = 0) -> sp.csr_matrix:
    """Play counts turned into a play-time stand-in: hours played, fractional and heavy-tailed,
    with many light users (seeded).

    hours = 0.2 · plays^1.5 · LogNormal(0, 0.7), rounded to 0.1 h and at least 0.1 h: a
    median near 4 h inside a listener's genres and under 1 h outside them, thousands of
    hours at the top. ``LIGHT_SHARE`` of the users keep only 1–4 of their items (uniformly
    at random), as most players of a game library have played a handful of titles.
    """
    rng = np.random.default_rng(seed)
    out = matrix.tocsr(copy=True).astype(np.float32)
    noise = rng.lognormal(0.0, 0.7, size=out.nnz)
    out.data = np.maximum(np.round(0.2 * out.data.astype(np.float64) ** 1.5 * noise, 1), 0.1).astype(np.float32)
    lengths = np.diff(out.indptr)
    light = rng.random(out.shape[0]) < LIGHT_SHARE
    keep_n = np.where(light, np.minimum(lengths, rng.integers(1, 5, size=out.shape[0])), lengths)
    rank = rng.random(out.nnz)  # a random order inside each row: keep its first keep_n entries
    owner = np.repeat(np.arange(out.shape[0]), lengths)
    order = np.lexsort((rank, owner))
    position = np.empty(out.nnz, dtype=np.int64)
    position[order] = np.arange(out.nnz) - np.repeat(out.indptr[:-1], lengths)
    out.data[position >= np.repeat(keep_n, lengths)] = 0
    out.eliminate_zeros()
    return out


def ranking_rows(data: Any, name: str, only: list[str] | None = None, scale: float = 1.0) -> list[dict[str, Any]]:
    if scale != 1.0:
        data = data.copy() if sp.issparse(data) else data.user_items.copy()
        data.data = data.data * np.float32(scale)
    train, test = random_split(data, test_fraction=0.2, seed=0, min_interactions=5)
    fit_part, valid = random_split(train, test_fraction=0.2, seed=1, min_interactions=5)
    print(f"{name}: {train.shape[0]} users, {train.shape[1]} items, train {train.nnz}, test {test.nnz}",
          file=sys.stderr)
    methods: list[tuple[str, Fit, list[dict[str, Any]]]] = [
        (f"timbral defaults (k={FACTORS})", timbral_default, [{}]),
        (f"timbral confidence=log (k={FACTORS})", timbral_default, [{"confidence": "log"}]),
        (f"timbral frequency_scale=0 (k={FACTORS})", timbral_default, [{"frequency_scale": 0.0}]),
        *implicit_methods(),
        *sklearn_nmf_method(),
        (f"EASE (top {EASE_MAX_ITEMS} items)", ease, grid(**{"lambda": [10, 50, 200, 500, 2000]})),
        ("popularity", popularity, [{}]),
    ]
    rows = []
    for name, fit, settings in selected(methods, only):
        row = nested(name, fit, settings, (fit_part, valid), (train, test), ndcg, True)
        row |= ranking_metrics(row.pop("model_obj"), train, test, k=K)
        rows.append(row)
        print(f"  {name}: ndcg {row['ndcg']:.4f}  chosen {row['chosen']}  (fit {row['fit_s']:.1f}s, "
              f"tuning {row['tuning_s']:.1f}s)", file=sys.stderr)
    return rows


def rating_rows(path: str, only: list[str] | None = None) -> list[dict[str, Any]]:
    data = load_interactions(path, feedback="explicit", max_value=None)
    train, test = random_split(data, test_fraction=0.2, seed=0, min_interactions=5)
    fit_part, valid = random_split(train, test_fraction=0.2, seed=1, min_interactions=5)

    def rmse(model: Any, _: sp.csr_matrix, test_part: sp.csr_matrix) -> float:
        return rating_metrics(model, test_part)["rmse"]

    def timbral_explicit(part: sp.csr_matrix, setting: dict[str, Any]) -> NMFModel:
        return NMFModel(feedback="explicit", **setting).fit(part)

    class BiasOnly:
        """μ + b_u + b_i by alternating regularised means."""

        def __init__(self, part: sp.csr_matrix, setting: dict[str, Any]) -> None:
            coo, reg = part.tocoo(), setting["reg"]
            self.mu = float(coo.data.mean())
            self.b_u, self.b_i = np.zeros(part.shape[0]), np.zeros(part.shape[1])
            for _ in range(20):
                self.b_u = np.bincount(coo.row, coo.data - self.mu - self.b_i[coo.col], part.shape[0]) / (
                    np.bincount(coo.row, minlength=part.shape[0]) + reg)
                self.b_i = np.bincount(coo.col, coo.data - self.mu - self.b_u[coo.row], part.shape[1]) / (
                    np.bincount(coo.col, minlength=part.shape[1]) + reg)

        def predict(self, users: NDArray[np.integer], items: NDArray[np.integer]) -> NDArray[np.float64]:
            return self.mu + self.b_u[users] + self.b_i[items]

    methods: list[tuple[str, Fit, list[dict[str, Any]]]] = [
        ("timbral explicit (defaults)", timbral_explicit, [{}]),
        ("bias only", BiasOnly, grid(reg=[1, 5, 15, 50])),
    ]
    try:
        import pandas as pd
        from surprise import NMF as SurpriseNMF
        from surprise import SVD, Dataset, Reader

        class SurpriseModel:
            def __init__(self, algo: Any, part: sp.csr_matrix) -> None:
                coo = part.tocoo()
                frame = pd.DataFrame({"u": coo.row, "i": coo.col, "r": coo.data.astype(float)})
                trainset = Dataset.load_from_df(frame, Reader(rating_scale=(0.5, 5.0))).build_full_trainset()
                self.algo = algo.fit(trainset)

            def predict(self, users: NDArray[np.integer], items: NDArray[np.integer]) -> NDArray[np.float64]:
                return np.array([self.algo.predict(int(u), int(i)).est for u, i in zip(users, items, strict=True)])

        methods += [
            ("surprise SVD", lambda part, s: SurpriseModel(SVD(random_state=0, **s), part),
             grid(n_factors=[50, 100], reg_all=[0.02, 0.05, 0.1], n_epochs=[20])),
            ("surprise NMF", lambda part, s: SurpriseModel(SurpriseNMF(random_state=0, **s), part),
             grid(n_factors=[15, 50], reg_pu=[0.06, 0.2], n_epochs=[50])),
        ]
    except ImportError as exc:
        print(f"skipping Surprise baselines: {exc}", file=sys.stderr)
    rows = []
    for name, fit, settings in selected(methods, only):
        row = nested(name, fit, settings, (fit_part, valid), (train, test), rmse, False)
        row |= rating_metrics(row.pop("model_obj"), test)
        rows.append(row)
        print(f"  {name}: rmse {row['rmse']:.4f}  chosen {row['chosen']}  (fit {row['fit_s']:.1f}s)", file=sys.stderr)
    return rows


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    if not rows:
        return "(no method selected)"
    width = max(len(r["model"]) for r in rows)
    head = f"{'model':<{width}}  " + "  ".join(f"{title:>8}" for _, title in columns) + "  chosen on validation"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "  ".join(
            f"{r[key]:>8.2f}" if key.endswith("_s") else f"{r[key]:>8.4f}" for key, _ in columns
        )
        chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["chosen"].items())
        lines.append(f"{r['model']:<{width}}  {cells}  {chosen or '-'}")
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> str:
    """Each Timbral row's NDCG@10 as a multiple of implicit ALS's (tuned on the same validation split)."""
    als = [row["ndcg"] for row in rows if row["model"] == "implicit ALS"]
    if not als:
        return "(no implicit ALS row to compare with)"
    return "\n".join(f"  {row['model']}: {row['ndcg'] / als[0]:.3f}x implicit ALS"
                     for row in rows if row["model"].startswith("timbral"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="*", help="implicit interactions (e.g. lastfm-2k/user_artists.dat)")
    parser.add_argument("--generate", nargs=3, type=int, metavar=("USERS", "ITEMS", "INTERACTIONS"),
                        help="also measure on generated music-like play counts (timbral.generate, seed 0)")
    parser.add_argument("--scale-values", type=float, default=1.0, metavar="F",
                        help="multiply every implicit value by F (e.g. 0.0583: play counts as hours)")
    parser.add_argument("--values", choices=("plays", "hours"), default="plays",
                        help="values of --generate: play counts, or hours played (fractional, heavy-tailed, "
                             "40 %% of users with 1-4 items; see as_hours)")
    parser.add_argument("--ratings", help="explicit ratings (e.g. ml-latest-small/ratings.csv)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of tables")
    parser.add_argument("--methods", nargs="+", metavar="NAME",
                        help="run only the methods whose name contains one of these words (e.g. timbral ALS)")
    args = parser.parse_args(argv)
    sets = [(load_interactions(path), path) for path in args.data]
    if args.generate:
        matrix = generated(*args.generate)
        if args.values == "hours":
            matrix = as_hours(matrix)
        sets.append((matrix, "generated {} users × {} items, {} {}".format(*args.generate, args.values)))
    if not sets and not args.ratings:
        parser.error("give DATA, --generate or --ratings")
    result: dict[str, Any] = {"ranking": []}
    for data, name in sets:
        rows = ranking_rows(data, name, args.methods, args.scale_values)
        result["ranking"] += [{"data": name, **row} for row in rows]
    if args.ratings:
        result["rating"] = rating_rows(args.ratings, args.methods)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    for _, name in sets:
        rows = [row for row in result["ranking"] if row["data"] == name]
        print(name)
        print(table(rows, [("precision", "P@10"), ("recall", "R@10"), ("ndcg", "NDCG@10"),
                           ("map", "MAP@10"), ("coverage", "coverage"), ("fit_s", "fit s")]))
        print(ratios(rows))
        print()
    if "rating" in result:
        print()
        print(table(result["rating"], [("rmse", "RMSE"), ("mae", "MAE"), ("fit_s", "fit s")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
