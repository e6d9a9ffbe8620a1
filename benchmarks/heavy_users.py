"""What dropping heavy listeners cost them: held-out NDCG@10 of the heaviest 1 % of users.

Until issue 9.7 the loader removed, by default, every user with more distinct items
than ``expm1(median + 10 MAD)`` of ``log1p(items per user)``; those users were
unknown to the model and got the popularity list. Now the loader keeps every
account below a hard limit of what one person does (``timbral.cleaning.MAX_USER_ITEMS``).

Both defaults are measured on one split (per-user random 20 % holdout, seed 0):

* ``kept`` (today): the model is fitted on every user's training interactions and
  recommends to the heavy users from their factors (training items excluded);
* ``dropped`` (before): the users over the old cap are left out of the fit and served
  the most popular items; heavy users under the cap are served by that model.

Usage::

    python benchmarks/heavy_users.py /path/to/lastfm-2k/user_artists.dat
    python benchmarks/heavy_users.py --generate 20000,4000,600000   # users,items,plays
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from timbral import NMFModel, load_interactions  # noqa: E402
from timbral.metrics import ranking_scores  # noqa: E402
from timbral.split import random_split  # noqa: E402

K = 10


def previous_cap(items_per_user: NDArray[np.int64]) -> float | None:
    """The removed default: ``expm1(median + 10 MAD)`` of ``log1p(items per user)`` (None if MAD = 0)."""
    logs = np.log1p(items_per_user.astype(np.float64))
    median = float(np.median(logs))
    mad = float(np.median(np.abs(logs - median)))
    return None if mad == 0.0 else float(np.expm1(median + 10.0 * mad))


def heavy_user_ndcg(path: str, components: int, regularization: str, seed: int) -> dict[str, object]:
    data = load_interactions(path, max_user_interactions=None)
    train, test = random_split(data, 0.2, seed=seed)
    counts = np.diff(data.user_items.indptr)
    n_heavy = max(1, int(round(0.01 * data.n_users)))
    heavy = np.argsort(-counts, kind="stable")[:n_heavy]
    cap = previous_cap(counts)
    dropped = np.flatnonzero(counts > cap) if cap is not None else np.zeros(0, np.int64)
    reg: float | str = regularization if regularization == "auto" else float(regularization)

    def fit(matrix: sp.csr_matrix) -> NMFModel:
        return NMFModel(n_components=components, regularization=reg, random_state=seed).fit(matrix)

    started = time.perf_counter()
    kept_model = fit(train)
    kept_recs, _ = kept_model.recommend_batch(heavy, K)
    kept = ranking_scores(kept_recs, test, heavy)

    keep_rows = np.ones(data.n_users, bool)
    keep_rows[dropped] = False
    reduced = sp.diags(keep_rows.astype(np.float32)) @ train
    reduced.eliminate_zeros()
    dropped_model = fit(sp.csr_matrix(reduced)) if dropped.size else kept_model
    popular = np.argsort(-np.bincount(reduced.indices, minlength=data.n_items), kind="stable")[:K]
    before_recs, _ = dropped_model.recommend_batch(heavy, K)
    before_recs[~keep_rows[heavy]] = popular  # unknown to the model: the popularity list
    before = ranking_scores(before_recs, test, heavy)
    return {
        "data": path,
        "users": data.n_users,
        "items": data.n_items,
        "interactions": data.nnz,
        "heavy_users": n_heavy,
        "heavy_min_items": int(counts[heavy].min()),
        "previous_cap_items": None if cap is None else round(cap, 1),
        "users_previously_dropped": int(dropped.size),
        "heavy_users_previously_dropped": int((~keep_rows[heavy]).sum()),
        "ndcg@10_heavy_kept": round(kept["ndcg"], 4),
        "ndcg@10_heavy_dropped": round(before["ndcg"], 4),
        "ratio_kept_over_dropped": round(kept["ndcg"] / before["ndcg"], 2) if before["ndcg"] else None,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="interaction file (e.g. Last.fm user_artists.dat)")
    parser.add_argument("--generate", metavar="USERS,ITEMS,PLAYS",
                        help="measure on data from timbral.generate instead of a file")
    parser.add_argument("--components", type=int, default=32)
    parser.add_argument("--regularization", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if (args.path is None) == (args.generate is None):
        parser.error("pass a data file or --generate USERS,ITEMS,PLAYS")
    path = args.path
    if args.generate:
        from timbral.generate import write_interactions

        users, items, plays = (int(x) for x in args.generate.split(","))
        path = os.path.join(tempfile.mkdtemp(prefix="timbral-heavy-"), "plays.parquet")
        write_interactions(path, users, items, plays, args.seed)
    print(json.dumps(heavy_user_ndcg(path, args.components, args.regularization, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
