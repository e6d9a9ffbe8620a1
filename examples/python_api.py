"""Timbral from Python in a few lines: generate plays, train, evaluate, recommend, explain.

    python examples/python_api.py [WORKDIR]

Everything runs on generated music-like data (no download, no Redis).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from timbral import NMFModel, Recommender, load_interactions
from timbral.generate import write_interactions
from timbral.metrics import ranking_metrics
from timbral.split import random_split


def main(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    plays = workdir / "plays.parquet"
    write_interactions(plays, n_users=2_000, n_items=1_000, n_interactions=100_000, seed=0)

    data = load_interactions(plays)  # validated, cleaned, ids mapped
    print(data.report)

    train, test = random_split(data, test_fraction=0.2, seed=0)
    model = NMFModel(n_components=32).fit(train)
    print("held-out ranking:", {k: round(v, 4) for k, v in ranking_metrics(model, train, test, k=10).items()})

    model = NMFModel(n_components=32).fit(data.user_items)  # refit on everything
    recommender = Recommender(model, data.user_ids, data.item_ids, data.user_items)
    listener = data.user_ids[0]
    top = recommender.recommend(listener, k=5)
    print(f"for listener {listener} ({top.strategy}):", top.items)
    print("why the first:", recommender.explain(listener, top.items[0][0]))
    print("new listener who just played two artists:",
          recommender.recommend("someone-new", k=5, recent_items=list(data.item_ids[:2])).items)

    directory = recommender.save(workdir / "model")
    print("saved to", directory, "- serve it with: timbral serve --model", directory)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="timbral-example-")))
