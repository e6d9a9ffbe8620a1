"""benchmarks/quality.py's seeds: every seeded method runs the nested protocol once per model seed and
its row is the mean, with the spread beside it; deterministic methods run once."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_support import import_benchmark

quality = import_benchmark("quality")


def test_a_seeded_row_is_the_mean_over_seeds_with_its_spread_and_each_seeds_choice():
    seen = []

    def run(method, seed):
        seen.append(seed)
        return {"model": "m", "ndcg": [0.30, 0.34, 0.32][seed], "fit_s": 1.0 + seed, "validation": None,
                "chosen": {"lambda": [30, 30, 100][seed], "confidence": "raw"}}

    row = quality.over_seeds(quality.Method("m", None, [{}]), 3, run, "ndcg")
    assert seen == [0, 1, 2]
    assert row["ndcg"] == pytest.approx(0.32)
    assert row["ndcg_sd"] == pytest.approx(np.std([0.30, 0.34, 0.32]))
    assert row["per_seed"] == [0.30, 0.34, 0.32] and row["seeds"] == 3
    assert row["fit_s"] == pytest.approx(2.0)
    assert "validation" not in row  # None is not a number to average
    assert row["chosen"] == {"lambda": "30/30/100", "confidence": "raw"}


def test_a_deterministic_method_runs_once_whatever_the_seeds():
    seen = []

    def run(method, seed):
        seen.append(seed)
        return {"model": "ease", "ndcg": 0.4, "chosen": {"lambda": 200.0}}

    row = quality.over_seeds(quality.Method("ease", None, [{}], seeded=False), 5, run, "ndcg")
    assert seen == [0] and row["seeds"] == 1 and row["ndcg_sd"] == 0.0
    assert row["chosen"] == {"lambda": "200"}


def test_timbral_defaults_are_fitted_and_scored_once_per_seed_on_the_same_split():
    data = quality.generated(300, 120, 4000)
    rows = quality.ranking_rows(data, "small", ["defaults", "popularity"], n_seeds=2)
    ours, popularity = (next(r for r in rows if word in r["model"]) for word in ("timbral", "popularity"))
    assert ours["seeds"] == 2 and len(ours["per_seed"]) == 2
    assert ours["ndcg"] == pytest.approx(np.mean(ours["per_seed"]))
    assert ours["per_seed"][0] != ours["per_seed"][1]  # the seed reaches the model
    assert set(ours["chosen"]) == {"regularization", "frequency_scale", "confidence"}
    assert popularity["seeds"] == 1 and ours["ndcg"] > popularity["ndcg"]
    table = quality.table(rows, [("ndcg", "NDCG@10"), ("fit_s", "fit s")])
    assert "NDCG@10 (± sd)" in table and f"± {ours['ndcg_sd']:.4f}" in table


def test_seeds_below_one_are_refused_with_the_value(capsys):
    with pytest.raises(SystemExit):
        quality.main(["--generate", "10", "10", "50", "--seeds", "0"])
    assert "--seeds must be at least 1; got 0" in capsys.readouterr().err


def test_generated_sets_come_once_per_kind_of_values_from_the_same_plays():
    (plays, plays_name), (hours, hours_name) = quality.data_sets([], [40, 30, 400], ["plays", "hours"])
    assert plays_name == "generated 40 × 30, 400 plays" and hours_name == "generated 40 × 30, 400 hours"
    assert hours.nnz <= plays.nnz and set(zip(*hours.nonzero(), strict=True)) <= set(zip(*plays.nonzero(), strict=True))
