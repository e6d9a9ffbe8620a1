"""The row solver alone: one half-step of each side on power-law plays.

The item side is where rows grow with the data (a popular item's listeners), so its
peak memory tracks the solver's per-thread scratch (bounded since issue 10.14).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from .common import N_FACTORS, PROFILE, factors, power_law_interactions

# (n_users, n_items): the top item's listeners pass the chunking limit at either size.
SIZES = ["50000x2000", "100000x20000"] if PROFILE == "fast" else ["100000x20000", "500000x50000"]


class SolveRows:
    params = ([*SIZES], ["users", "items"])
    param_names = ["users_x_items", "side"]
    timeout = 300

    def setup(self, users_x_items: str, side: str) -> None:
        from timbral._core import nmf

        if not hasattr(nmf, "LONG_ROW_ENTRIES"):
            raise NotImplementedError("a commit before the bounded row scratch")
        self.solve_rows = nmf.solve_rows
        n_users, n_items = (int(part) for part in users_x_items.split("x"))
        R = power_law_interactions(n_users, n_items, seed=0)
        if side == "items":
            R = sp.csr_matrix(R.T)
        self.R = R
        self.X = factors(R.shape[0], seed=1)
        self.Y = factors(R.shape[1], seed=2)
        self.gram = (self.Y.T @ self.Y + np.float32(0.05) * np.eye(N_FACTORS, dtype=np.float32))
        # As fit_nmf runs it: the kernel's small GEMM/SYRK calls must not start BLAS threads.
        self.blas_limits = threadpool_limits(1, "blas")

    def teardown(self, users_x_items: str, side: str) -> None:
        self.blas_limits.restore_original_limits()

    def _half_step(self) -> None:
        R = self.R
        self.solve_rows(R.indptr, R.indices, R.data, self.X, self.Y, self.gram,
                        1.0, 1.0, True, 1.0, 0.0, 1, 2)

    def time_half_step(self, users_x_items: str, side: str) -> None:
        self._half_step()

    def peakmem_half_step(self, users_x_items: str, side: str) -> None:
        self._half_step()
