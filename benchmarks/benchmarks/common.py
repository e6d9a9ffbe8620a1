"""Seeded synthetic data shared by the benchmarks.

Append only: never change an existing dataset, or results stop being comparable
across commits. Add a new function (or a new seed) instead.

``TIMBRAL_ASV_PROFILE`` picks the sizes: ``fast`` (default, for a shared machine)
or ``regular``.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

PROFILE = os.environ.get("TIMBRAL_ASV_PROFILE", "fast")
N_FACTORS = 64


def power_law_interactions(
    n_users: int, n_items: int, mean_per_user: float = 20.0, exponent: float = 1.1, seed: int = 0
) -> sp.csr_matrix:
    """Users × items play counts, float32 CSR with sorted indices.

    Item popularity follows a Zipf law ``p_i ∝ (i + 1) ** -exponent`` (a few hits, a
    long tail, as in listening logs); user activity is geometric with mean
    ``mean_per_user``; counts are 1 + Poisson(2).
    """
    rng = np.random.default_rng(seed)
    popularity = (np.arange(n_items) + 1.0) ** -exponent
    popularity /= popularity.sum()
    per_user = np.minimum(rng.geometric(1.0 / mean_per_user, size=n_users), n_items)
    rows = np.repeat(np.arange(n_users), per_user)
    cols = rng.choice(n_items, size=rows.size, p=popularity)
    counts = 1.0 + rng.poisson(2.0, size=rows.size)
    mat = sp.csr_matrix(
        (counts.astype(np.float32), (rows, cols)), shape=(n_users, n_items), dtype=np.float32
    )
    mat.sum_duplicates()
    mat.sort_indices()
    return mat


def factors(n_rows: int, n_factors: int = N_FACTORS, seed: int = 0) -> np.ndarray:
    """Non-negative float32 factors, C-contiguous, like a fitted NMF model's."""
    rng = np.random.default_rng(seed)
    return rng.gamma(1.0, 0.1, size=(n_rows, n_factors)).astype(np.float32)
