"""Upper bounds chosen on the test split: the quality bar's reference, and Timbral's own ceiling.

Usage::

    python benchmarks/ceiling.py DATA [DATA ...] [--seeds N]
    python benchmarks/ceiling.py --generate USERS ITEMS INTERACTIONS [--values plays hours]

``quality.py`` tunes every method on a validation split and reports it once on the test split.
The quality bar compares Timbral's defaults with implicit ALS at k = 64 with its best λ ∈
{0.05, 3, 10, 30, 100} and confidence ∈ {raw, log1p, bm25} *chosen on the test split*: an
upper bound for ALS. This script measures that reference, and the same kind of bound for
Timbral: its best confidence scaling × ν (of the frequency-scaled ridge) × λ, α = 1, also
chosen on the test split. When even that bound misses the bar on a data set, no rule that
chooses among these settings on validation can meet it there.

Same split as ``quality.py`` (per-user 20 % holdout, seed 0, users with at least 5
interactions; NDCG@10, training items excluded). Every setting is scored by its mean over
model seeds 0 … N−1 (``--seeds``, default 3), and the best mean is reported with its
setting. Timbral's λ is walked per (confidence, ν) on a √2 grid, λ = centre · 2^(j/2)
from j = 2 (strong) down, ``centre`` being the confidence mass per row and column of the
training part (``timbral.nmf.objective.auto_regularization``); a walk stops after
``FALLS`` points in a row below its best. Timbral's defaults are fitted once per seed (their own
search inside the training part) and put beside both bounds, with the geometric mean of the
ratios across the data sets given.

Analysis only: a default chosen from these figures would be chosen on the test split.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's timbral

from quality import Method, data_sets, implicit_methods, ndcg, timbral_default  # noqa: E402

from timbral.nmf.objective import auto_regularization  # noqa: E402
from timbral.split import random_split  # noqa: E402

#: Timbral's candidates: every confidence scaling, the plain (0) and the frequency-scaled (1) ridge.
CONFIDENCES = ("log", "linear", "bm25")
FREQUENCY_SCALES = (0.0, 1.0)
#: The first (strongest) point of each λ walk, in half path steps above ``centre``, and the last.
FIRST_HALF_STEP, LAST_HALF_STEP = 2, -12
#: Points in a row below the walk's best after which it stops.
FALLS = 2


def walk(score: Callable[[float], float], centre: float) -> list[tuple[float, float]]:
    """``(λ, score(λ))`` for λ = centre · 2^(j/2), j = ``FIRST_HALF_STEP`` down, until ``FALLS``
    points in a row score below the best so far (or j passes ``LAST_HALF_STEP``)."""
    points: list[tuple[float, float]] = []
    best, falls = -math.inf, 0
    for j in range(FIRST_HALF_STEP, LAST_HALF_STEP - 1, -1):
        lam = centre * 2.0 ** (j / 2)
        value = score(lam)
        points.append((lam, value))
        if value > best:
            best, falls = value, 0
        else:
            falls += 1
            if falls == FALLS:
                break
    return points


def geometric_mean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def mean_over_seeds(fit: Callable[[int], Any], train: sp.csr_matrix, test: sp.csr_matrix, n_seeds: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(np.mean([ndcg(fit(seed), train, test) for seed in range(n_seeds)]))


def implicit_als() -> Method | None:
    """quality.py's implicit ALS (the same grid and fit), or None without the implicit package."""
    return next((m for m in implicit_methods() if m.name == "implicit ALS"), None)


def bounds(data: sp.csr_matrix, name: str, n_seeds: int, als: Method) -> dict[str, Any]:
    """ALS's and Timbral's best settings on the test split, and Timbral's defaults, for one data set."""
    train, test = random_split(data, test_fraction=0.2, seed=0, min_interactions=5)
    als_scores = [(mean_over_seeds(lambda s, st=st: als.fit(train, st, s), train, test, n_seeds), st)
                  for st in als.settings]
    als_best = max(als_scores, key=lambda pair: pair[0])
    print(f"{name}: ALS best {als_best[0]:.4f} {als_best[1]}", file=sys.stderr)

    ours: list[tuple[float, dict[str, Any]]] = []
    for confidence in CONFIDENCES:
        for nu in FREQUENCY_SCALES:
            def score(lam: float, confidence: str = confidence, nu: float = nu) -> float:
                setting = {"regularization": lam, "confidence": confidence, "alpha": 1.0, "frequency_scale": nu}
                value = mean_over_seeds(lambda s: timbral_default(train, setting, s), train, test, n_seeds)
                print(f"  timbral {confidence} ν {nu:g} λ {lam:.3g}: {value:.4f}", file=sys.stderr)
                return value

            centre = auto_regularization(train, "implicit", 1.0, confidence)
            points = walk(score, centre)
            if max(points, key=lambda point: point[1]) == points[0]:
                print(f"  timbral {confidence} ν {nu:g}: the best is the walk's strongest point; "
                      f"raise FIRST_HALF_STEP", file=sys.stderr)
            ours += [(value, {"confidence": confidence, "frequency_scale": nu, "regularization": lam})
                     for lam, value in points]
    ours_best = max(ours, key=lambda pair: pair[0])
    defaults = mean_over_seeds(lambda s: timbral_default(train, {}, s), train, test, n_seeds)
    return {"data": name, "als": als_best[0], "als_setting": als_best[1], "ceiling": ours_best[0],
            "ceiling_setting": ours_best[1], "defaults": defaults}


def report(rows: list[dict[str, Any]]) -> str:
    """One line per data set (both bounds, the defaults, their ratios to ALS's bound), the ratios'
    geometric mean, then the setting behind each bound."""
    width = max(len("geometric mean"), *(len(r["data"]) for r in rows))
    lines = [f"{'data':<{width}} {'ALS best':>9} {'Timbral best':>13} {'defaults':>9} {'best/ALS':>9} "
             f"{'defaults/ALS':>13}"]
    for r in rows:
        lines.append(f"{r['data']:<{width}} {r['als']:>9.4f} {r['ceiling']:>13.4f} {r['defaults']:>9.4f} "
                     f"{r['ceiling'] / r['als']:>8.3f}x {r['defaults'] / r['als']:>12.3f}x")
    lines.append(f"{'geometric mean':<{width}} {'':>9} {'':>13} {'':>9} "
                 f"{geometric_mean([r['ceiling'] / r['als'] for r in rows]):>8.3f}x "
                 f"{geometric_mean([r['defaults'] / r['als'] for r in rows]):>12.3f}x")
    for r in rows:
        setting = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in r["ceiling_setting"].items())
        lines.append(f"  {r['data']}: ALS's best {r['als_setting']}; Timbral's best {setting}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="*", help="implicit interactions (e.g. lastfm-2k/user_artists.dat)")
    parser.add_argument("--generate", nargs=3, type=int, metavar=("USERS", "ITEMS", "INTERACTIONS"),
                        help="also measure on generated music-like play counts (quality.py's, seed 0)")
    parser.add_argument("--values", nargs="+", choices=("plays", "hours"), default=["plays"],
                        help="values of --generate, one data set each: play counts, quality.py's hours-played "
                             "stand-in, or both")
    parser.add_argument("--seeds", type=int, default=3, metavar="N",
                        help="model seeds 0 … N-1 each setting is averaged over (default 3)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1; got {args.seeds}")
    sets = data_sets(args.data, args.generate, args.values)
    if not sets:
        parser.error("give DATA or --generate")
    als = implicit_als()
    if als is None:
        parser.error("implicit ALS is the reference this measures: install implicit (pip install implicit)")
    print(report([bounds(data, name, args.seeds, als) for data, name in sets]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
