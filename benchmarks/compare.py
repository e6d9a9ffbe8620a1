"""Timbral side by side with implicit, scikit-learn and NumPy, in one process.

The issue's comparison in one command: fit speed and memory (``compare_fit``: implicit
ALS and scikit-learn NMF cd, k = 64, 15 iterations, 2 threads) on the given matrix,
then top-10 latency (``compare_topk``: one user and a 1000-user batch against NumPy and
implicit) at 10K, 100K and 1M items. Every figure is printed with its ratio to the
reference measured in the same run.

    python benchmarks/compare.py path/to/lastfm-2k/user_artists.dat
    python benchmarks/compare.py --generate 50000 20000 1000000 --sizes 10000 100000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's timbral

import compare_fit  # noqa: E402
import compare_topk  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="Last.fm user_artists.dat (userID artistID weight)")
    parser.add_argument("--generate", nargs=3, type=int, metavar=("N_USERS", "N_ITEMS", "NNZ"),
                        help="a power-law matrix of this size instead of a file")
    parser.add_argument("--sklearn-max-iter", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="catalogue sizes for the top-K comparison")
    args = parser.parse_args(argv)
    if (args.path is None) == (args.generate is None):
        parser.error("give either a path to user_artists.dat or --generate N_USERS N_ITEMS NNZ")
    fit_args = [args.path] if args.path else ["--generate", *map(str, args.generate)]
    compare_fit.main([*fit_args, "--sklearn-max-iter", str(args.sklearn_max_iter)])
    compare_topk.main(["--sizes", *map(str, args.sizes)])


if __name__ == "__main__":
    main()
