"""Recommendation quality of Timbral against common baselines, measured once on a test split.

Usage::

    python benchmarks/quality.py DATA [DATA ...] [--ratings RATINGS.csv] [--seeds N] [--json]
    python benchmarks/quality.py --generate USERS ITEMS INTERACTIONS [--values hours] [--scale-values F]

Nested protocol: an outer per-user random holdout (20 %, seed 0, users with at
least 5 interactions) gives ``train`` and ``test``; an inner holdout of ``train``
(20 %, seed 1) gives ``fit`` and ``valid``. Every method with hyperparameters is
tuned on ``valid`` over a comparable budget (a grid of at most ~15 settings),
refitted on ``train`` with the chosen setting, and scored once on ``test``; the
chosen setting is printed beside each figure.

Seeds: a single model seed decides a few per cent of NDCG on a small set (MovieLens-small:
Timbral's defaults score 0.328-0.340 over seeds 0-4 and seed 42), so every method that
draws random numbers runs the whole nested protocol once per model seed 0 … N-1
(``--seeds N``, default 3: tuned, refitted and scored with that seed; the splits stay
fixed) and its figures are the means, with the standard deviation across seeds beside
the headline metric. Deterministic methods (scikit-learn's NMF from NNDSVDA, EASE,
popularity, the bias-only model) run once. Timbral's rows are its defaults
(``NMFModel(n_components=64)``: λ, the confidence scaling and ν of the frequency-scaled
ridge chosen by its own validation search inside ``train``), ``confidence="log"`` (the
scaling fixed, as the defaults were before) and ``frequency_scale=0`` (the plain ridge,
as the defaults were before): nothing of ``test`` is seen by any method. Their
``fit s`` includes that search (their ``tuning s`` is 0); the other methods' grid
search on ``valid`` is ``tuning s``.

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
from typing import Any, NamedTuple

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

#: ``fit(train, setting, seed)``: a model fitted on ``train`` with one setting of the grid and one model seed.
Fit = Callable[[sp.csr_matrix, dict[str, Any], int], Any]


class Method(NamedTuple):
    """A method of the table: its grid of settings, and whether its fit draws random numbers (then it
    runs once per model seed)."""

    name: str
    fit: Fit
    settings: list[dict[str, Any]]
    seeded: bool = True


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


def timbral_default(train: sp.csr_matrix, setting: dict[str, Any], seed: int) -> NMFModel:
    return NMFModel(n_components=FACTORS, random_state=seed, **setting).fit(train)


def ease(train: sp.csr_matrix, setting: dict[str, Any], seed: int) -> EaseRanker:
    plays = np.asarray((train > 0).sum(axis=0)).ravel()
    items = np.sort(np.argsort(-plays, kind="stable")[:EASE_MAX_ITEMS])
    X = (train[:, items] > 0).astype(np.float64)
    gram = (X.T @ X).toarray()
    gram[np.diag_indices_from(gram)] += setting["lambda"]
    P = np.linalg.inv(gram)
    B = P / -np.diag(P)
    B[np.diag_indices_from(B)] = 0.0
    return EaseRanker(train, items, B.astype(np.float32))


def popularity(train: sp.csr_matrix, setting: dict[str, Any], seed: int) -> FactorRanker:
    counts = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float32)
    return FactorRanker(np.ones((train.shape[0], 1)), counts[:, None], train)


def implicit_methods() -> list[Method]:
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

    def als(train: sp.csr_matrix, setting: dict[str, Any], seed: int) -> ImplicitRanker:
        model = AlternatingLeastSquares(factors=FACTORS, regularization=setting["lambda"], iterations=15,
                                        random_state=seed, use_gpu=False)
        model.fit(weighted(train, setting["confidence"]), show_progress=False)
        return ImplicitRanker(model, train)

    def bpr(train: sp.csr_matrix, setting: dict[str, Any], seed: int) -> ImplicitRanker:
        binary = train.copy()
        binary.data[:] = 1
        model = BayesianPersonalizedRanking(factors=FACTORS, random_state=seed, use_gpu=False, **setting)
        model.fit(binary.astype(np.float32), show_progress=False)
        return ImplicitRanker(model, train)

    return [
        Method("implicit ALS", als, grid(**{"lambda": [0.05, 3, 10, 30, 100], "confidence": ["raw", "log1p", "bm25"]})),
        Method("implicit BPR", bpr, grid(learning_rate=[0.01, 0.05], regularization=[0.001, 0.01], iterations=[100])),
    ]


def sklearn_nmf_method() -> list[Method]:
    try:
        from sklearn.decomposition import NMF
    except ImportError as exc:
        print(f"skipping scikit-learn NMF: {exc}", file=sys.stderr)
        return []

    def fit(train: sp.csr_matrix, setting: dict[str, Any], seed: int) -> FactorRanker:
        model = NMF(n_components=FACTORS, solver="cd", init="nndsvda", max_iter=200, random_state=0, **setting)
        values = train.astype(np.float64)
        values.data = np.log1p(values.data)
        users = model.fit_transform(values)
        return FactorRanker(users, model.components_.T, train)

    return [Method("scikit-learn NMF cd (log1p)", fit, grid(alpha_W=[0.0, 0.001, 0.01]), seeded=False)]


def grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*axes.values())]


def nested(method: Method, inner: tuple[sp.csr_matrix, sp.csr_matrix], outer: tuple[sp.csr_matrix, sp.csr_matrix],
           score: Callable[[Any, sp.csr_matrix, sp.csr_matrix], float], higher_is_better: bool,
           seed: int) -> dict[str, Any]:
    """Choose ``method``'s setting on the inner split, refit on the outer training part, score the test part once,
    every fit with model seed ``seed``."""
    started = time.perf_counter()
    chosen, validation = method.settings[0], None
    if len(method.settings) > 1:
        results = []
        for setting in method.settings:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results.append(score(method.fit(inner[0], setting, seed), *inner))
        best = int(np.argmax(results) if higher_is_better else np.argmin(results))
        chosen, validation = method.settings[best], results[best]
    tuning_s = time.perf_counter() - started
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tick = time.perf_counter()
        model = method.fit(outer[0], chosen, seed)
        fit_s = time.perf_counter() - tick
    chosen = dict(chosen)
    if isinstance(model, NMFModel):  # Timbral's own choices, made inside fit on train only
        chosen["regularization"] = model.regularization_
        chosen["frequency_scale"] = model.frequency_scale_
        if model.feedback == "implicit":
            chosen["confidence"] = model.confidence_
    return {"model": method.name, "chosen": chosen, "validation": validation, "model_obj": model, "fit_s": fit_s,
            "tuning_s": tuning_s, "settings_tried": len(method.settings)}


def over_seeds(method: Method, n_seeds: int, run: Callable[[Method, int], dict[str, Any]],
               headline: str) -> dict[str, Any]:
    """``run(method, seed)`` for model seeds 0 … n_seeds-1 (seed 0 only for a deterministic method), as one row:
    the mean of every number, ``<headline>_sd`` across seeds, ``per_seed`` the headline metric of each
    seed and ``chosen`` each parameter's value per seed, joined by "/" (one value where all seeds agree
    to 3 significant digits)."""
    runs = [run(method, seed) for seed in (range(n_seeds) if method.seeded else [0])]
    row = {key: float(np.mean([r[key] for r in runs])) for key, value in runs[0].items()
           if isinstance(value, (int, float)) and not isinstance(value, bool)}
    row |= {"model": method.name, "seeds": len(runs), f"{headline}_sd": float(np.std([r[headline] for r in runs])),
            "per_seed": [r[headline] for r in runs]}
    choices = [{key: _short(value) for key, value in r["chosen"].items()} for r in runs]
    row["chosen"] = {}
    for key in choices[0]:
        values = [c.get(key, "-") for c in choices]
        row["chosen"][key] = values[0] if len(set(values)) == 1 else "/".join(values)
    return row


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def ndcg(model: Any, train: sp.csr_matrix, test: sp.csr_matrix) -> float:
    return ranking_metrics(model, train, test, k=K)["ndcg"]


def selected(methods: list[Method], only: list[str] | None) -> list[Method]:
    """The methods whose name contains one of ``only`` (all without it)."""
    return [m for m in methods if not only or any(word.lower() in m.name.lower() for word in only)]


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


def data_sets(paths: list[str], generate: list[int] | None, values: list[str]) -> list[tuple[sp.csr_matrix, str]]:
    """``(matrix, name)`` of every file, then of the generated set (``generated``) once per kind of
    ``values``: play counts, or the same plays as hours (``as_hours``)."""
    sets = [(load_interactions(path).user_items, path) for path in paths]
    if generate:
        matrix = generated(*generate)
        sets += [(as_hours(matrix) if kind == "hours" else matrix, "generated {} × {}, {} {}".format(*generate, kind))
                 for kind in values]
    return sets


def ranking_rows(data: Any, name: str, only: list[str] | None = None, scale: float = 1.0,
                 n_seeds: int = 1) -> list[dict[str, Any]]:
    if scale != 1.0:
        data = data.copy() if sp.issparse(data) else data.user_items.copy()
        data.data = data.data * np.float32(scale)
    train, test = random_split(data, test_fraction=0.2, seed=0, min_interactions=5)
    fit_part, valid = random_split(train, test_fraction=0.2, seed=1, min_interactions=5)
    print(f"{name}: {train.shape[0]} users, {train.shape[1]} items, train {train.nnz}, test {test.nnz}",
          file=sys.stderr)
    methods: list[Method] = [
        Method(f"timbral defaults (k={FACTORS})", timbral_default, [{}]),
        Method(f"timbral confidence=log (k={FACTORS})", timbral_default, [{"confidence": "log"}]),
        Method(f"timbral frequency_scale=0 (k={FACTORS})", timbral_default, [{"frequency_scale": 0.0}]),
        *implicit_methods(),
        *sklearn_nmf_method(),
        Method(f"EASE (top {EASE_MAX_ITEMS} items)", ease, grid(**{"lambda": [10, 50, 200, 500, 2000]}), seeded=False),
        Method("popularity", popularity, [{}], seeded=False),
    ]

    def run(method: Method, seed: int) -> dict[str, Any]:
        row = nested(method, (fit_part, valid), (train, test), ndcg, True, seed)
        return row | ranking_metrics(row.pop("model_obj"), train, test, k=K)

    rows = []
    for method in selected(methods, only):
        row = over_seeds(method, n_seeds, run, "ndcg")
        rows.append(row)
        print(f"  {method.name}: ndcg {row['ndcg']:.4f} ± {row['ndcg_sd']:.4f} over {row['seeds']} seed(s)  "
              f"chosen {row['chosen']}  (fit {row['fit_s']:.1f}s, tuning {row['tuning_s']:.1f}s)", file=sys.stderr)
    return rows


def rating_rows(path: str, only: list[str] | None = None, n_seeds: int = 1) -> list[dict[str, Any]]:
    data = load_interactions(path, feedback="explicit", max_value=None)
    train, test = random_split(data, test_fraction=0.2, seed=0, min_interactions=5)
    fit_part, valid = random_split(train, test_fraction=0.2, seed=1, min_interactions=5)

    def rmse(model: Any, _: sp.csr_matrix, test_part: sp.csr_matrix) -> float:
        return rating_metrics(model, test_part)["rmse"]

    def timbral_explicit(part: sp.csr_matrix, setting: dict[str, Any], seed: int) -> NMFModel:
        return NMFModel(feedback="explicit", random_state=seed, **setting).fit(part)

    class BiasOnly:
        """μ + b_u + b_i by alternating regularised means."""

        def __init__(self, part: sp.csr_matrix, setting: dict[str, Any], seed: int = 0) -> None:
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

    methods: list[Method] = [
        Method("timbral explicit (defaults)", timbral_explicit, [{}]),
        Method("bias only", BiasOnly, grid(reg=[1, 5, 15, 50]), seeded=False),
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
            Method("surprise SVD", lambda part, s, seed: SurpriseModel(SVD(random_state=seed, **s), part),
                   grid(n_factors=[50, 100], reg_all=[0.02, 0.05, 0.1], n_epochs=[20])),
            Method("surprise NMF", lambda part, s, seed: SurpriseModel(SurpriseNMF(random_state=seed, **s), part),
                   grid(n_factors=[15, 50], reg_pu=[0.06, 0.2], n_epochs=[50])),
        ]
    except ImportError as exc:
        print(f"skipping Surprise baselines: {exc}", file=sys.stderr)
    def run(method: Method, seed: int) -> dict[str, Any]:
        row = nested(method, (fit_part, valid), (train, test), rmse, False, seed)
        return row | rating_metrics(row.pop("model_obj"), test)

    rows = []
    for method in selected(methods, only):
        row = over_seeds(method, n_seeds, run, "rmse")
        rows.append(row)
        print(f"  {method.name}: rmse {row['rmse']:.4f} ± {row['rmse_sd']:.4f} over {row['seeds']} seed(s)  "
              f"chosen {row['chosen']}  (fit {row['fit_s']:.1f}s)", file=sys.stderr)
    return rows


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """One line per method: the mean of each column over its seeds, ± the standard deviation of the columns
    that have one, then the settings chosen on validation (per seed where they differ)."""
    if not rows:
        return "(no method selected)"
    width = max(len(r["model"]) for r in rows)

    def cell(row: dict[str, Any], key: str) -> str:
        text = f"{row[key]:>8.2f}" if key.endswith("_s") else f"{row[key]:>8.4f}"
        return text + (f" ± {row[key + '_sd']:.4f}" if key + "_sd" in row else "")

    titles = [title + (" (± sd)" if key + "_sd" in rows[0] else "") for key, title in columns]
    widths = [max(8, len(title), *(len(cell(r, key)) for r in rows))
              for (key, _), title in zip(columns, titles, strict=True)]
    head = f"{'model':<{width}}  " + "  ".join(f"{t:>{w}}" for t, w in zip(titles, widths, strict=True))
    head += "  seeds  chosen on validation"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "  ".join(f"{cell(r, key):>{w}}" for (key, _), w in zip(columns, widths, strict=True))
        cells += f"  {r['seeds']:>5}"
        chosen = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["chosen"].items())
        lines.append(f"{r['model']:<{width}}  {cells}  {chosen or '-'}")
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> str:
    """Each Timbral row's mean NDCG@10 as a multiple of implicit ALS's (tuned on the same validation split,
    averaged over the same model seeds)."""
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
    parser.add_argument("--seeds", type=int, default=3, metavar="N",
                        help="model seeds 0 … N-1 for every method that draws random numbers (default 3): "
                             "each runs the nested protocol once per seed and reports the mean ± sd")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of tables")
    parser.add_argument("--methods", nargs="+", metavar="NAME",
                        help="run only the methods whose name contains one of these words (e.g. timbral ALS)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1; got {args.seeds}")
    sets = data_sets(args.data, args.generate, [args.values])
    if not sets and not args.ratings:
        parser.error("give DATA, --generate or --ratings")
    result: dict[str, Any] = {"ranking": []}
    for data, name in sets:
        rows = ranking_rows(data, name, args.methods, args.scale_values, args.seeds)
        result["ranking"] += [{"data": name, **row} for row in rows]
    if args.ratings:
        result["rating"] = rating_rows(args.ratings, args.methods, args.seeds)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    for _, name in sets:
        rows = [row for row in result["ranking"] if row["data"] == name]
        print(name)
        print(table(rows, [("precision", "P@10"), ("recall", "R@10"), ("ndcg", "NDCG@10"),
                           ("map", "MAP@10"), ("coverage", "coverage"), ("fit_s", "fit s"), ("tuning_s", "tuning s")]))
        print(ratios(rows))
        print()
    if "rating" in result:
        print()
        print(table(result["rating"], [("rmse", "RMSE"), ("mae", "MAE"), ("fit_s", "fit s"), ("tuning_s", "tuning s")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
