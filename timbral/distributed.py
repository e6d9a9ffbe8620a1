"""Training beyond one machine: the one fit loop, with its row solves on a Dask cluster.

:class:`DaskBackend` is a half-step backend of :func:`timbral.nmf.fit.fit_nmf`. Rows of
``R`` (users) and of ``Rᵀ`` (items) are cut into contiguous shards that live on the
workers for the whole fit. Each half-step broadcasts the fixed factor matrix and its
regularised k × k Gram matrix, every worker solves its own rows with the Cython kernel
(``timbral.nmf.fit.half_step``, GIL released), and the client sums the shards'
Gram matrices ``Σ_s X_sᵀ X_s`` for the next half-step. Row solves are independent, so
the result equals a single-machine ``NMFModel.fit`` from the same start up to
floating-point summation order. Epochs, loss, convergence and warnings are the fit
loop's, not copied here.

Only factors (k per row) travel; the interaction shards are sent once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from timbral.exceptions import ValidationError
from timbral.nmf import NMFModel
from timbral.nmf.fit import Factors, Solved, SolveSettings, Triplet, half_step
from timbral.nmf.objective import check_feedback

if TYPE_CHECKING:
    from distributed import Client

    from timbral.dask import DaskFit

SUPPORTED_FEEDBACK = ("implicit", "frobenius")


@dataclass
class _Shard:
    """A block of rows ``start:stop`` of R or Rᵀ whose kernel-form CSR lives on a worker."""

    start: int
    stop: int
    rows: Any  # a Future of a Triplet


class DaskBackend:
    """Row solves on a Dask cluster's workers, in shards of about equal entries.

    Parameters
    ----------
    client : distributed.Client
    n_shards : int
        Row blocks per side.
    threads_per_shard : int
        Kernel threads each shard task uses.
    """

    supports_biases = False  # the explicit residuals are updated in place on the client
    supports_row_l2 = False  # frequency-scaled ridges need the rows' own λ beside each shard

    def __init__(self, client: Client, n_shards: int, threads_per_shard: int = 1) -> None:
        self.client = client
        self.n_shards = n_shards
        self.threads_per_shard = threads_per_shard
        self._sides: tuple[list[_Shard], list[_Shard]] = ([], [])

    def place(self, user_rows: Triplet, item_rows: Triplet, settings: SolveSettings) -> None:
        self._sides = (self._scatter(user_rows), self._scatter(item_rows))
        self._settings = settings

    def _scatter(self, rows: Triplet) -> list[_Shard]:
        """Send ``rows`` to the workers as ≤ ``n_shards`` row blocks of about equal entries."""
        nnz = int(rows.indptr[-1])
        cuts = np.searchsorted(rows.indptr, np.linspace(0, nnz, self.n_shards + 1)[1:-1])
        bounds = np.unique(np.concatenate([[0], cuts, [rows.shape[0]]]))
        return [
            _Shard(start, stop, self.client.scatter(rows.rows(start, stop), hash=False))
            for start, stop in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)
        ]

    def solve(self, side: int, X: Factors, Y: Factors, gram: Factors, row_loss: bool) -> Solved:
        fixed = self.client.scatter(Y, broadcast=True, hash=False)
        futures = [
            self.client.submit(
                _solve_shard, s.rows, X[s.start : s.stop], fixed, gram, self._settings,
                self.threads_per_shard, pure=False,
            )
            for s in self._sides[side]
        ]
        parts = self.client.gather(futures)
        X_new = np.ascontiguousarray(np.concatenate([block for block, _, _ in parts]))
        loss = np.concatenate([part for _, _, part in parts]) if row_loss else None
        return X_new, sum(gram_part for _, gram_part, _ in parts), loss


def fit_distributed(
    model: NMFModel,
    source: Any,
    client: Client,
    *,
    n_shards: int | None = None,
    threads_per_shard: int = 1,
    **read_options: Any,
) -> NMFModel | DaskFit:
    """Fit ``model`` with the row solves spread over ``client``'s workers.

    Two paths, one answer (the fit equals ``model.fit`` from the same seed up to
    summation order):

    - ``source`` a scipy.sparse users × items matrix (small data): the client holds it,
      sends shards of R and Rᵀ to the workers once, and the one fit loop runs with
      :class:`DaskBackend`. Returns ``model``, fitted in place.
    - ``source`` a Parquet dataset (directory, glob, list of files, fsspec URL) or a
      ``dask.dataframe.DataFrame``: the workers read, clean and id-map it and keep R, W
      and H as blocks; the client never holds the interactions
      (:func:`timbral.dask.fit`). Returns a :class:`timbral.dask.DaskFit` (the cleaning
      report, and the model directory the workers wrote with ``output=`` or the model
      and its id maps gathered; ``.recommender()`` builds the Recommender).

    Parameters
    ----------
    model : NMFModel
        An unfitted (or to be refitted) model; its parameters are used as they are.
        ``feedback`` must be "implicit" or "frobenius".
    source : sparse matrix of shape (n_users, n_items), Parquet dataset or dask DataFrame
    client : distributed.Client
        A connected Dask client (a ``LocalCluster`` works too).
    n_shards : int, optional
        Row blocks per side; defaults to the cluster's total thread count.
    threads_per_shard : int, default=1
        Kernel threads each shard task uses.
    **read_options
        For a dataset only: ``user_col``, ``item_col``, ``rating_col``, ``rules``,
        ``checkpoint``, ``broadcast_fraction``, ``output`` (the model directory the
        workers write) and ``gather`` (see :func:`timbral.dask.fit`).

    Returns
    -------
    NMFModel or timbral.dask.DaskFit
    """
    if not (sp.issparse(source) or isinstance(source, np.ndarray)):
        from timbral.dask import fit  # the dataset path needs dask.dataframe and pyarrow's dataset reader

        return fit(model, source, client, n_blocks=n_shards, n_threads=threads_per_shard, **read_options)
    if read_options:
        raise ValidationError(
            f"{', '.join(sorted(read_options))} apply to a Parquet dataset or dask DataFrame source; "
            "a matrix has no columns to read or clean. Drop them, or pass the dataset itself."
        )
    model.check_params()
    if check_feedback(model.feedback) not in SUPPORTED_FEEDBACK:
        raise ValidationError(
            f"fit_distributed supports feedback {SUPPORTED_FEEDBACK}; got {model.feedback!r}. "
            "Fit explicit (rating) models with NMFModel.fit on one machine."
        )
    if n_shards is None:
        n_shards = max(1, sum(client.nthreads().values()))
    if isinstance(n_shards, bool) or not isinstance(n_shards, int) or n_shards < 1:
        raise ValidationError(f"`n_shards` must be a positive integer; got {n_shards!r}.")
    return model.fit(source, backend=DaskBackend(client, n_shards, threads_per_shard))


def _solve_shard(
    rows: Triplet, X_part: Factors, Y: Factors, gram: Factors, settings: SolveSettings, n_threads: int
) -> Solved:
    """Runs on a worker: the kernel's row solve for one shard, its Gram and row losses."""
    X_part = np.array(X_part, order="C")  # our own copy: inputs may be shared
    row_loss = np.empty(X_part.shape[0])
    half_step(rows, X_part, Y, gram, settings, n_threads, row_loss)
    return X_part, X_part.T @ X_part, row_loss
