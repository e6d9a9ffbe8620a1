"""Fitting ``timbral.NMFModel`` on synthetic power-law play counts."""

from __future__ import annotations

from .common import PROFILE, power_law_interactions

SIZES = ["2000x1000", "10000x5000"] if PROFILE == "fast" else ["10000x5000", "100000x20000"]


class Fit:
    params = [SIZES]
    param_names = ["users_x_items"]
    timeout = 300

    def setup(self, users_x_items: str) -> None:
        import timbral

        if not hasattr(timbral, "NMFModel"):
            raise NotImplementedError("timbral.NMFModel is not available in this commit")
        self.model_class = timbral.NMFModel
        n_users, n_items = (int(part) for part in users_x_items.split("x"))
        self.user_items = power_law_interactions(n_users, n_items, seed=0)

    def time_fit(self, users_x_items: str) -> None:
        self.model_class(n_components=64, max_iter=5).fit(self.user_items)

    def peakmem_fit(self, users_x_items: str) -> None:
        self.model_class(n_components=64, max_iter=5).fit(self.user_items)
