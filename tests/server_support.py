"""Models and configurations for the server tests (small, built once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from server.config import Config
from timbral import NMFModel
from timbral.recommender import Recommender

ADMIN_TOKEN = "test-admin-token-0123456789"
N_USERS, N_ITEMS = 120, 60


def build_model_dir(directory: Path, seed: int) -> Path:
    """A fitted model with string user ids ``u0..`` and integer item ids ``1000..``."""
    rng = np.random.default_rng(seed)
    user_items = sp.random(N_USERS, N_ITEMS, density=0.1, random_state=rng, format="csr",
                           dtype=np.float32)
    user_items.data = np.ceil(user_items.data * 10)
    model = NMFModel(n_components=6, max_iter=5, tol=0, random_state=seed).fit(user_items)
    recommender = Recommender(model, [f"u{i}" for i in range(N_USERS)],
                              np.arange(1000, 1000 + N_ITEMS), user_items)
    return recommender.save(directory)


def config(model_dir: Path | None, **overrides: object) -> Config:
    """A test configuration: loopback, tier 1 only unless ``redis_url`` is given."""
    values: dict[str, object] = {"api_host": "127.0.0.1", "model_dir": model_dir,
                                 "admin_token": ADMIN_TOKEN, "executor_threads": 2,
                                 "log_level": "WARNING"}
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]
