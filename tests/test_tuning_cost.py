"""What keeps the default fit's cost (issue 9: at most 3x one fit at the chosen setting) from
costing quality: the refit starts from the search's factors, and each setting tried is scored once.

Costs are counted (epochs, scoring calls), never timed: speed lives in benchmarks/tuning_cost.py.
"""

from __future__ import annotations

import pytest
from test_tuning import clustered_plays

from timbral import tuning
from timbral.metrics import ranking_metrics
from timbral.nmf import NMFModel
from timbral.split import random_split


@pytest.fixture(scope="module")
def split():
    return random_split(clustered_plays(n_users=300, n_items=150, seed=3), test_fraction=0.2, seed=0)


def test_the_warm_refit_reaches_the_cold_fits_quality_in_fewer_epochs(split):
    """The default fit refits from the chosen row's factors (fitted on 80 % of the training part):
    on held-out plays it ranks as well as a fit from scratch at the chosen setting, in fewer
    epochs. A refit that stopped early, or started from the wrong row, would lose here."""
    train_part, test_part = split
    warm = NMFModel(n_components=6, n_threads=1).fit(train_part)
    chosen = {"regularization": warm.regularization_, "confidence": warm.confidence_,
              "frequency_scale": warm.frequency_scale_}
    cold = NMFModel(n_components=6, n_threads=1, **chosen).fit(train_part)
    warm_ndcg = ranking_metrics(warm, train_part, test_part, k=10)["ndcg"]
    cold_ndcg = ranking_metrics(cold, train_part, test_part, k=10)["ndcg"]
    assert warm_ndcg >= cold_ndcg - 0.01
    assert warm.n_iter_ < cold.n_iter_


def test_each_setting_tried_is_scored_once(split, monkeypatch):
    """One validation top-K per row of the search table (a ninth of the default fit's time on
    Last.fm is these scorings): none twice, and none for the refit."""
    train_part, _ = split
    calls = []
    original = NMFModel.recommend_batch

    def counting(self, users, *args, **kwargs):
        calls.append(len(users))
        return original(self, users, *args, **kwargs)

    monkeypatch.setattr(NMFModel, "recommend_batch", counting)
    model = NMFModel(n_components=6, n_threads=1).fit(train_part)
    assert len(calls) == len(model.search_results_) >= len(tuning.PATH[:2])
    assert len(set(calls)) == 1  # the same validation users each time


def test_each_row_takes_one_metric_pass_with_ranking_scores_numbers(split, monkeypatch):
    """A row's NDCG, overall and per group of validation users, comes from one ndcg_by_user pass
    (before: a ranking_scores call overall and one per group), and is what ranking_scores gives
    over the same recommendations. The only ranking_scores call left is the popularity floor's."""
    train_part, _ = split
    passes, scores_calls = [], []
    by_user, ranking_scores = tuning.ndcg_by_user, tuning.ranking_scores

    def counting_by_user(recommended, test, users):
        passes.append((recommended.copy(), test, users.copy()))
        return by_user(recommended, test, users)

    def counting_scores(*args, **kwargs):
        scores_calls.append(args)
        return ranking_scores(*args, **kwargs)

    monkeypatch.setattr(tuning, "ndcg_by_user", counting_by_user)
    monkeypatch.setattr(tuning, "ranking_scores", counting_scores)
    model = NMFModel(n_components=6, n_threads=1).fit(train_part)
    assert len(passes) == len(model.search_results_) and len(scores_calls) == 1
    for row, (recommended, valid, users) in zip(model.search_results_, passes, strict=True):
        assert row["ndcg@10"] == pytest.approx(ranking_scores(recommended, valid, users)["ndcg"], abs=1e-12)
