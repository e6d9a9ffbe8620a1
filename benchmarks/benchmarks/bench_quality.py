"""Recommendation quality on synthetic music-like plays, so numeric regressions surface.

``timbral.generate`` draws listeners from latent taste clusters, so a model that
learns the clusters ranks held-out plays well; these numbers should only move when
the model's maths or defaults change.
"""

from __future__ import annotations


class Quality:
    timeout = 600

    def setup_cache(self) -> dict[str, float]:
        import warnings

        import timbral
        from timbral.exceptions import ConvergenceWarning
        from timbral.generate import generate_interactions
        from timbral.metrics import ranking_metrics
        from timbral.split import random_split

        if not hasattr(timbral, "Interactions"):
            raise NotImplementedError("timbral.Interactions is not available in this commit")
        table = generate_interactions(5_000, 2_000, 200_000, seed=0)
        train, test = random_split(timbral.Interactions.from_frame(table), test_fraction=0.2, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model = timbral.NMFModel(n_components=64, max_iter=15).fit(train)
        return ranking_metrics(model, train, test, k=10)

    def track_ndcg_at_10(self, metrics: dict[str, float]) -> float:
        return metrics["ndcg"]

    def track_precision_at_10(self, metrics: dict[str, float]) -> float:
        return metrics["precision"]

    def track_coverage_at_10(self, metrics: dict[str, float]) -> float:
        return metrics["coverage"]
