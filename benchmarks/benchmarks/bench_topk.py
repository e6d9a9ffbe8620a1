"""Top-K recommendation: one user and a batch, with and without seen-item exclusion, and the
service's micro-batches through a prepared ``TopK`` (the float16 pre-pass where it applies)."""

from __future__ import annotations

import numpy as np

from .common import PROFILE, factors, power_law_interactions

ITEM_SIZES = [10_000, 100_000] if PROFILE == "fast" else [10_000, 100_000, 1_000_000]


def _top_k():
    """``top_k`` of this checkout (``timbral._scoring`` before issue 8 renamed it)."""
    try:
        from timbral.scoring import top_k
    except ImportError:
        try:
            from timbral._scoring import top_k
        except ImportError as exc:  # a commit before the top-K kernel existed
            raise NotImplementedError(str(exc)) from exc
    return top_k


class TopK:
    params = ([1, 1000], ITEM_SIZES, [False, True])
    param_names = ["n_users", "n_items", "exclude_seen"]

    def setup(self, n_users: int, n_items: int, exclude_seen: bool) -> None:
        self.top_k = _top_k()
        self.users = factors(n_users, seed=1)
        self.items = factors(n_items, seed=2)
        self.exclude = power_law_interactions(n_users, n_items, seed=3) if exclude_seen else None

    def time_top_k(self, n_users: int, n_items: int, exclude_seen: bool) -> None:
        self.top_k(self.users, self.items, 10, exclude=self.exclude, n_threads=2)

    def peakmem_top_k(self, n_users: int, n_items: int, exclude_seen: bool) -> None:
        self.top_k(self.users, self.items, 10, exclude=self.exclude, n_threads=2)


class ServingTopK:
    """A scorer thread's call: one prepared item matrix (``TopK``, as the service keeps per
    model), micro-batches of 1 and 8 users, one thread. Non-negative float32 factors take
    the float16 pre-pass on a CPU with AVX2, FMA and F16C; ``TIMBRAL_TOPK=exact`` gives
    the exact kernel's figures to compare."""

    params = ([1, 8], ITEM_SIZES)
    param_names = ["n_users", "n_items"]

    def setup(self, n_users: int, n_items: int) -> None:
        try:
            from timbral.scoring import TopK
        except ImportError as exc:  # a commit before the prepared top-K existed
            raise NotImplementedError(str(exc)) from exc
        self.top_k = TopK(factors(n_items, seed=2))
        self.users = factors(n_users, seed=1)

    def time_top_k(self, n_users: int, n_items: int) -> None:
        self.top_k(self.users, 10, n_threads=1)


class TopKMatchesNumPy:
    """Fraction of the top-10 equal to NumPy's full sort (tracks correctness, 1.0)."""

    params = [10_000]
    param_names = ["n_items"]

    def setup(self, n_items: int) -> None:
        self.top_k = _top_k()
        self.users = factors(100, seed=1)
        self.items = factors(n_items, seed=2)

    def track_agreement_with_numpy(self, n_items: int) -> float:
        ids, _ = self.top_k(self.users, self.items, 10)
        expected = np.argsort(-(self.users @ self.items.T), axis=1, kind="stable")[:, :10]
        return float(np.mean(ids == expected))
