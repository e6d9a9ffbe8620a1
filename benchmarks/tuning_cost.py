"""What the default fit's validation search costs, as a ratio to one plain fit.

In one process: the default fit ``NMFModel(...).fit(R)`` (search + refit) against
one fit at the setting the search chose (``NMFModel(regularization=λ*, confidence=c*,
...)``: no search). Issue 9's bars: at most 3× on Last.fm-sized data, at most 1.5× at
10M interactions (the search then runs on a sample of users). Both fits run on the
same threads, one after the other, ``--repeat`` times interleaved (medians); the ratio is
what to compare across machines, and the ratio of epochs (search + refit against the plain
fit) is the one load cannot move.

Usage::

    python benchmarks/tuning_cost.py path/to/lastfm-2k/user_artists.dat
    python benchmarks/tuning_cost.py --generate 200000 50000 10000000 [--confidence log] [--frequency-scale 0]
    python benchmarks/tuning_cost.py --generate 60000 20000 1500000 --carry
    python benchmarks/tuning_cost.py path/to/user_artists.dat --set COLD_MAX_ITER=8

``--set NAME=VALUE`` (repeatable) measures a change to a ``timbral.tuning`` constant against
the tree as it is, in the same run: each round fits the default, its plain fit, then the
default with the constants changed and the plain fit at what that one chose.

``--json`` prints each round as one JSON line instead (seconds of both fits, the choice, the
search's validation metrics and epochs, a digest of the default fit's factors), so a driver can
alternate rounds of two checkouts, each with its own venv, and check that a change meant to
save time left every number where it was::

    for round in 1 2 3 4 5; do for tree in old new; do
        $tree/venv/bin/python $tree/benchmarks/tuning_cost.py DATA --components 64 --repeat 1 --json
    done; done

``--carry`` measures the rule that carries λ from the search's user sample to all the
data: on a seeded 80/20 split, λ is chosen once on the default user sample and once
on the whole training part, each is fitted on the training part, and both are
scored (NDCG@10) on the test part, which neither search sees.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's timbral

from quality import generated  # noqa: E402  (the same generated matrix as quality.py's)

from timbral import (
    NMFModel,  # noqa: E402
    tuning,  # noqa: E402
)
from timbral.data import load_interactions  # noqa: E402
from timbral.exceptions import ConvergenceWarning  # noqa: E402
from timbral.metrics import ranking_metrics  # noqa: E402
from timbral.split import random_split  # noqa: E402


def timed_fit(matrix: sp.csr_matrix, **params: Any) -> tuple[NMFModel, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        model = NMFModel(**params).fit(matrix)
        return model, time.perf_counter() - start


def constants(assignments: list[str]) -> dict[str, int | float]:
    """``--set`` values: existing numeric constants of ``timbral.tuning``, parsed as their type."""
    changed: dict[str, int | float] = {}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        current = getattr(tuning, name, None)
        if not name.isupper() or type(current) not in (int, float):
            raise ValueError(f"--set {assignment!r}: {name!r} is not a numeric constant of timbral.tuning; "
                             "pass NAME=VALUE, e.g. COLD_MAX_ITER=8.")
        try:
            changed[name] = type(current)(value)
        except ValueError:
            raise ValueError(f"--set {assignment!r}: {value!r} is not a {type(current).__name__}; "
                             f"e.g. --set {name}={current}.") from None
    return changed


def default_and_plain(matrix: sp.csr_matrix, common: dict[str, Any], search: dict[str, Any],
                      changed: dict[str, int | float]) -> tuple[NMFModel, float, NMFModel, float]:
    """The default fit with ``changed`` tuning constants (restored after), and one plain fit at its choice."""
    saved = {name: getattr(tuning, name) for name in changed}
    try:
        for name, value in changed.items():
            setattr(tuning, name, value)
        default, default_s = timed_fit(matrix, **common, **search)
    finally:
        for name, value in saved.items():
            setattr(tuning, name, value)
    chosen = {"regularization": default.regularization_, "confidence": default.confidence_,
              "frequency_scale": default.frequency_scale_}
    plain, plain_s = timed_fit(matrix, **common, **chosen)
    return default, default_s, plain, plain_s


def report(label: str, runs: list[tuple[NMFModel, float, NMFModel, float]]) -> None:
    """Medians of the default fits against the plain fits, and the epoch ratio of the last run."""
    default, _, plain, _ = runs[-1]
    defaults, plains = [run[1] for run in runs], [run[3] for run in runs]
    table = default.search_results_ or []
    search_epochs = sum(row["n_iter"] for row in table)
    screens = [row for row in table if row.get("screen")]
    chosen = {"regularization": round(default.regularization_, 4), "confidence": default.confidence_,
              "frequency_scale": default.frequency_scale_}
    print(f"{label}:")
    print(f"  search: {len(table)} settings ({len(screens)} screens, {sum(r['n_iter'] for r in screens)} epochs), "
          f"{search_epochs} epochs, {sum(row['seconds'] for row in table):.1f} s of fits and scorings; chosen {chosen}")
    print(f"  default fit (search + refit): median {np.median(defaults):.2f} s of {len(runs)}, "
          f"{default.n_iter_} epochs in the refit")
    print(f"  one fit at the chosen setting: median {np.median(plains):.2f} s, {plain.n_iter_} epochs")
    print(f"  ratio: {np.median(defaults) / np.median(plains):.2f}× in time (per run: "
          f"{', '.join(f'{d / p:.2f}' for d, p in zip(defaults, plains, strict=True))}), "
          f"{(search_epochs + default.n_iter_) / plain.n_iter_:.2f}× in epochs", flush=True)


def record(run: tuple[NMFModel, float, NMFModel, float]) -> dict[str, Any]:
    """One round as ``--json`` prints it."""
    default, default_s, plain, plain_s = run
    table = default.search_results_ or []
    digest = hashlib.sha256(default.user_factors_.tobytes() + default.item_factors_.tobytes()).hexdigest()
    return {"default_s": round(default_s, 4), "plain_s": round(plain_s, 4),
            "chosen": {"regularization": default.regularization_, "confidence": default.confidence_,
                       "frequency_scale": default.frequency_scale_},
            "validation": [row["rmse" if default.feedback == "explicit" else f"ndcg@{tuning.K}"] for row in table],
            "search_epochs": [row["n_iter"] for row in table], "refit_epochs": default.n_iter_,
            "plain_epochs": plain.n_iter_, "factors_sha256": digest[:16]}


def carry(matrix: sp.csr_matrix, common: dict[str, Any]) -> None:
    """λ chosen on the default user sample against λ chosen on all users, both scored on a test split."""
    train, test = random_split(matrix, test_fraction=0.2, seed=0, min_interactions=5)
    params = NMFModel(**common).get_params()
    limit = tuning.SAMPLE_MAX_INTERACTIONS
    for label, cap in (("user sample", limit), ("all users", train.nnz)):
        tuning.SAMPLE_MAX_INTERACTIONS = cap
        start = time.perf_counter()
        found = tuning.search(train, params)
        search_s = time.perf_counter() - start
        model, fit_s = timed_fit(train, **common, **found.params)
        ndcg = ranking_metrics(model, train, test, k=10)["ndcg"]
        print(f"{label}: {found.sample_users} of {found.n_users} users, λ = {found.params['regularization']:.4g} "
              f"(search {search_s:.1f} s, fit {fit_s:.1f} s), test NDCG@10 {ndcg:.4f}", flush=True)
    tuning.SAMPLE_MAX_INTERACTIONS = limit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", nargs="?", help="interaction file (e.g. lastfm-2k/user_artists.dat)")
    parser.add_argument("--generate", nargs=3, type=int, metavar=("USERS", "ITEMS", "INTERACTIONS"))
    parser.add_argument("--components", type=int, default=50)
    parser.add_argument("--confidence", default="auto", help="'auto' (the default) searches the scaling too")
    parser.add_argument("--frequency-scale", default="auto",
                        help="ν of the frequency-scaled ridge: 'auto' (the default) searches it, a number fixes it")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of both fits; medians are reported")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a timbral.tuning constant for a second default fit, alternated with the tree's")
    parser.add_argument("--json", action="store_true", help="print each round of the tree as one JSON line")
    parser.add_argument("--carry", action="store_true",
                        help="measure λ chosen on the user sample against λ chosen on all users")
    args = parser.parse_args(argv)
    if args.json and (args.set or args.carry):
        parser.error("--json prints the tree's rounds only; run --set and --carry without it")
    try:
        changed = constants(args.set)
    except ValueError as error:
        parser.error(str(error))
    if args.generate:
        matrix = generated(*args.generate)
    elif args.data:
        matrix = load_interactions(args.data).user_items
    else:
        parser.error("give DATA or --generate USERS ITEMS INTERACTIONS")
    if not args.json:
        print(f"{matrix.shape[0]} users × {matrix.shape[1]} items, {matrix.nnz} interactions", flush=True)
    common = {"n_components": args.components, "n_threads": args.threads}
    if args.carry:
        carry(matrix, common)
        return 0
    nu = args.frequency_scale if args.frequency_scale == "auto" else float(args.frequency_scale)
    search = {"confidence": args.confidence, "frequency_scale": nu}
    tree: list[tuple[NMFModel, float, NMFModel, float]] = []
    patched: list[tuple[NMFModel, float, NMFModel, float]] = []
    for _ in range(args.repeat):  # interleaved, so a burst of load lands on both
        tree.append(default_and_plain(matrix, common, search, {}))
        if args.json:
            print(json.dumps(record(tree[-1])), flush=True)
        if changed:
            patched.append(default_and_plain(matrix, common, search, changed))
    if args.json:
        return 0
    report("the tree's constants", tree)
    if changed:
        report(f"with {', '.join(f'{name}={value}' for name, value in changed.items())}", patched)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
