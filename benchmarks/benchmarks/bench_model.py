"""Per-request model work the server does: explain and fold-in (issue 10.2, issue 8).

Both used to rebuild HᵀH (n_items · k² work, n_items · k · 8 bytes) on every call;
they now reuse what the model computes once, so their cost should not grow with
the catalogue.
"""

from __future__ import annotations

import warnings

from .common import N_FACTORS, PROFILE, power_law_interactions

ITEM_SIZES = [10_000, 100_000] if PROFILE == "fast" else [10_000, 100_000, 1_000_000]


class PerRequest:
    params = [ITEM_SIZES]
    param_names = ["n_items"]

    def setup(self, n_items: int) -> None:
        from timbral import NMFModel
        from timbral.exceptions import ConvergenceWarning

        self.user_items = power_law_interactions(2000, n_items, seed=4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model = NMFModel(n_components=N_FACTORS, max_iter=1, n_threads=1).fit(self.user_items)
        self.row = self.user_items[7]
        self.model.explain(7, 1)  # what is computed once per model is not per request
        self.model.fold_in(self.row.indices, self.row.data)

    def time_explain(self, n_items: int) -> None:
        self.model.explain(7, 1)

    def peakmem_explain(self, n_items: int) -> None:
        self.model.explain(7, 1)

    def time_fold_in(self, n_items: int) -> None:
        self.model.fold_in(self.row.indices, self.row.data)
