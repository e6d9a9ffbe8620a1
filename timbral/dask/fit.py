"""Alternating row solves with R, Rᵀ, W and H all kept as blocks on the Dask workers.

A half-step (say W against fixed H) runs one task per user block. The task needs the
rows of H for the items its users played, no others: at setup every user block
lists, per item block, the item rows it needs (Spark ALS's out-blocks seen from the
receiving side), and each half-step ships exactly those rows from the item block's
worker (a ``take`` task next to H_j). When a user block needs more than
``broadcast_fraction`` of an item block's rows, the whole block is sent instead:
shipping an index-selected copy costs the same bytes plus a gather, so above that
fraction the plain block is cheaper (with long-tailed data, blocks of heavy users
need most of the popular items' block, and blocks of light users a small part).
Each solve returns its new block and three reductions: XᵀX (k × k), its summed
observed loss and ΣX. The client adds the k × k matrices for the other side's Gram
and the objective; that, a few scalars per block and the futures are all it holds.

Every row's update is the single-machine kernel's on the same numbers, so the fit
equals ``NMFModel.fit`` from the same start up to the summation order of the Gram
matrices (and is bit-for-bit repeatable given the blocks).

Faults: with ``checkpoint`` set, every epoch's factor blocks are written there
(any fsspec URL the workers can reach) and the next epoch reads them back, so a
lost worker costs at most one epoch's blocks, which the scheduler recomputes from
the checkpoint and from the interaction blocks' lineage (the Parquet files).
"""

from __future__ import annotations

import operator
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral import tuning
from timbral._validation import check_random_state
from timbral.cleaning import ValidationReport
from timbral.dask import solve as rowsolve
from timbral.dask.blocks import Blocks, CleaningRules, read_blocks
from timbral.dask.writing import write_model
from timbral.exceptions import ConvergenceWarning, ValidationError
from timbral.nmf import FittedState, NMFModel
from timbral.nmf.objective import DEFAULT_CONFIDENCE, DEFAULT_FREQUENCY_SCALE

if TYPE_CHECKING:
    from distributed import Client, Future

    from timbral.recommender import Recommender

__all__ = ["BROADCAST_FRACTION", "DaskFit", "fit"]

SUPPORTED_FEEDBACK = ("implicit", "frobenius")
#: Candidates of ``confidence="auto"`` here: bm25 needs corpus statistics of the whole matrix.
SUPPORTED_CONFIDENCES = ("log", "linear")
#: Above this share of an item (user) block's rows needed by one block, send the whole block.
BROADCAST_FRACTION = 0.5


@dataclass
class DaskFit:
    """What :func:`fit` returns.

    Attributes
    ----------
    model : NMFModel or None
        A new fitted model with the parameters of the one passed, its factors gathered
        to the client (``gather=True``); None when only the model directory was written.
    user_ids, item_ids : ndarray or None
        External ids of the model's rows and columns (sorted); None with the model.
    report : ValidationReport
        What reading and cleaning did, summed over partitions and blocks.
    epoch_seconds : list of float
        Wall time of each epoch.
    bytes_per_epoch : int
        Factor bytes the routing ships per epoch (both half-steps; Gram matrices aside).
    broadcast_blocks : int
        (block, block) pairs served by sending a whole block rather than selected rows.
    n_iter : int
        Epochs run.
    output : str or None
        The model directory the workers wrote (``output=``), else None.
    model_version : str or None
        Its ``model_version``.
    """

    model: NMFModel | None
    user_ids: NDArray[Any] | None
    item_ids: NDArray[Any] | None
    report: ValidationReport
    epoch_seconds: list[float] = field(default_factory=list)
    bytes_per_epoch: int = 0
    broadcast_blocks: int = 0
    n_iter: int = 0
    output: str | None = None
    model_version: str | None = None

    def recommender(self) -> Recommender:
        """The fitted model with its id maps and data report, ready to ``save``."""
        from timbral.recommender import Recommender

        if self.output is not None:
            return Recommender.load(self.output)
        if self.model is None or self.user_ids is None or self.item_ids is None:
            raise ValidationError("this fit kept no model; pass output= or gather=True to fit")
        return Recommender(self.model, self.user_ids, self.item_ids, metadata={"data": self.report.to_dict()})


@dataclass
class _Side:
    """One side's interaction blocks and how each gets the other side's factor rows."""

    plans: list[Future]  # per block: (local CSR over the needed rows, index of those rows per other block)
    sources: list[list[tuple[int, Future | None]]]  # per block: (other block, its row index or None = whole)
    rows_per_step: int  # factor rows shipped to this side's blocks per half-step
    broadcasts: int


# -- worker tasks ----------------------------------------------------------------------------


def _plan(block: sp.csr_matrix, other_bounds: NDArray[np.int64], feedback: str, confidence: str,
          dtype: np.dtype) -> tuple[sp.csr_matrix, list[NDArray[np.int64]]]:
    """Kernel values with columns renumbered over the rows actually needed, and those rows per
    block of the other side."""
    needed = np.unique(block.indices)
    local = np.searchsorted(needed, block.indices).astype(block.indices.dtype)
    data = rowsolve.kernel_data(block, feedback, confidence, dtype, None)
    compact = sp.csr_matrix((data, local, block.indptr), shape=(block.shape[0], needed.size))
    cuts = np.searchsorted(needed, other_bounds)
    return compact, [needed[a:b] - lo for a, b, lo in zip(cuts[:-1], cuts[1:], other_bounds[:-1], strict=True)]


def _need_counts(plan: tuple[sp.csr_matrix, list[NDArray[np.int64]]]) -> list[int]:
    return [int(idx.size) for idx in plan[1]]


def _route(plan: tuple[sp.csr_matrix, list[NDArray[np.int64]]], j: int) -> NDArray[np.int64]:
    return plan[1][j]


def _take(Y: NDArray[np.floating], rows: NDArray[np.int64]) -> NDArray[np.floating]:
    """Runs next to a factor block: the rows another block needs (the out-block message)."""
    return np.take(Y, rows, axis=0)


def _solve_block(plan: tuple[sp.csr_matrix, list[NDArray[np.int64]]], X: NDArray[np.floating],
                 gram: NDArray[np.floating], solve: rowsolve.SolveSettings, n_threads: int,
                 whole: list[int], *pieces: NDArray[np.floating]) -> tuple[Any, ...]:
    """One block's row solves against the gathered rows; returns (X, XᵀX, Σ observed loss, ΣX)."""
    compact, rows = plan
    Y = np.concatenate(
        [piece[rows[j]] if j in whole else piece for j, piece in zip(_owners(rows), pieces, strict=True)]
    )
    Y = np.ascontiguousarray(Y, dtype=X.dtype)
    X = np.array(X, order="C")  # our own copy: the input block may be shared
    row_loss = np.empty(X.shape[0])
    rowsolve.solve_rows(compact, X, Y, gram, solve, n_threads, row_loss)
    return X, X.T @ X, float(row_loss.sum()), float(X.sum(dtype=np.float64))


def _owners(rows: list[NDArray[np.int64]]) -> list[int]:
    """The other side's blocks that this block needs rows from, in order."""
    return [j for j, idx in enumerate(rows) if idx.size]


def _stats(result: tuple[Any, ...]) -> tuple[Any, ...]:
    return result[1:]


def _gram_sum(X: NDArray[np.floating]) -> tuple[NDArray[np.floating], float]:
    """(XᵀX, ΣX) of a block. A block a worker receives can start at any byte of its message, and
    on unaligned data NumPy's matmul leaves BLAS for a loop that sums in another order: such a
    block is copied to aligned memory first, so its XᵀX is the one it has in-process."""
    X = np.require(X, requirements="A")  # X itself when already aligned
    return X.T @ X, float(X.sum(dtype=np.float64))


def _block_sums(block: sp.csr_matrix, feedback: str, alpha: float, confidence: str) -> tuple[float, float]:
    """(Σ|r|, confidence mass) of a block: the start's scale and the "auto" λ add them up."""
    return float(np.abs(block.data).sum(dtype=np.float64)), rowsolve.block_mass(block, feedback, alpha, confidence)


def _save(X: NDArray[np.floating], url: str) -> str:
    import fsspec

    with fsspec.open(url, "wb") as f:
        np.save(f, X, allow_pickle=False)
    return url


def _load(url: str) -> NDArray[np.floating]:
    import fsspec

    with fsspec.open(url, "rb") as f:
        return np.load(f, allow_pickle=False)


def _remove(url: str) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


# -- the loop ----------------------------------------------------------------------------------


def _side(client: Client, blocks: list[Future], other_bounds: NDArray[np.int64], model: NMFModel,
          dtype: np.dtype, broadcast_fraction: float) -> _Side:
    """Plan one side's blocks and decide, per pair of blocks, selected rows or the whole block."""
    plans = [client.submit(_plan, b, other_bounds, model.feedback, model.confidence, dtype) for b in blocks]
    counts = client.gather([client.submit(_need_counts, p) for p in plans])
    sizes = np.diff(other_bounds)
    sources, shipped, broadcasts = [], 0, 0
    for plan, row in zip(plans, counts, strict=True):
        mine: list[tuple[int, Future | None]] = []
        for j, count in enumerate(row):
            if count == 0:
                continue
            if count > broadcast_fraction * sizes[j]:
                mine.append((j, None))
                shipped += int(sizes[j])
                broadcasts += 1
            else:
                mine.append((j, client.submit(_route, plan, j)))
                shipped += count
        sources.append(mine)
    return _Side(plans, sources, shipped, broadcasts)


def _half_step(client: Client, side: _Side, X: list[Future], Y: list[Future], gram: NDArray[np.floating],
               solve: rowsolve.SolveSettings, n_threads: int) -> tuple[list[Future], list[Any]]:
    """New blocks of X and their (XᵀX, Σ observed loss, ΣX), in block order."""
    new, stats = [], []
    for plan, x, mine in zip(side.plans, X, side.sources, strict=True):
        pieces = [Y[j] if rows is None else client.submit(_take, Y[j], rows) for j, rows in mine]
        whole = [j for j, rows in mine if rows is None]
        result = client.submit(_solve_block, plan, x, gram, solve, n_threads, whole, *pieces, pure=False)
        new.append(client.submit(operator.getitem, result, 0))
        stats.append(client.submit(_stats, result))
    return new, client.gather(stats)


def fit(
    model: NMFModel,
    source: Any,
    client: Client,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    rating_col: str | None = None,
    rules: CleaningRules | None = None,
    n_blocks: int | None = None,
    n_threads: int = 1,
    checkpoint: str | None = None,
    broadcast_fraction: float = BROADCAST_FRACTION,
    callback: Callable[[int, float], None] | None = None,
    output: str | os.PathLike[str] | None = None,
    gather: bool | None = None,
) -> DaskFit:
    """Fit ``model`` on a dataset the client never holds (module docstring).

    Parameters
    ----------
    model : NMFModel
        Its parameters are used as they are; ``feedback`` "implicit" or "frobenius",
        ``confidence`` "linear", "log" or "auto" (chosen between those two),
        ``frequency_scale`` 0 or "auto" (the plain ridge: ν is not searched here),
        ``init="random"``, and ``random_state`` an
        int, None or a PCG64 Generator.
    source : path, glob, fsspec URL, list of them, or dask.dataframe.DataFrame
        The interactions (Parquet), read and cleaned by the workers (``read_blocks``).
    client : distributed.Client
    user_col, item_col, rating_col, rules
        Passed to :func:`timbral.dask.read_blocks`; ``rules`` defaults to
        ``CleaningRules(feedback=model.feedback)``.
    n_blocks : int, optional
        Blocks per side; default one per worker thread (each half-step is then one wave
        of tasks: at 2M interactions on 2 workers, 2 blocks per side cost 1.66× the
        single-machine epoch and 4 blocks 2.05×). Raise it when a block's share of the
        data does not fit a worker's memory.
    n_threads : int, default=1
        Kernel threads per block task (a worker runs one task per thread already).
    checkpoint : str, optional
        Directory or fsspec URL the workers can all write: factor blocks are saved
        there every epoch and a lost worker's blocks restored from it.
    broadcast_fraction : float, default=BROADCAST_FRACTION
        Send a whole block instead of selected rows above this needed share.
    callback : callable(iteration, loss), optional
        Called after every epoch on the client.
    output : path, optional
        Model directory the workers write (``timbral.dask.writing``): storage every
        worker can reach. The factors and the training matrix never come to the client.
    gather : bool, optional
        Also bring the fitted model to the client (``DaskFit.model``). Default: only
        without ``output``; at scale the model outgrows the client (W alone is
        n_users · k · 4 bytes, the training matrix 12 bytes per interaction).

    Returns
    -------
    DaskFit
    """
    _check_model(model)
    if n_blocks is None:
        n_blocks = max(1, sum(client.nthreads().values()))
    if isinstance(n_blocks, bool) or not isinstance(n_blocks, (int, np.integer)) or n_blocks < 1:
        raise ValidationError(f"n_blocks must be a positive integer, got {n_blocks!r}")
    if not 0.0 <= broadcast_fraction <= 1.0:
        raise ValidationError(f"broadcast_fraction must be between 0 and 1, got {broadcast_fraction!r}")
    if gather is None:
        gather = output is None
    if not isinstance(gather, bool):
        raise ValidationError(f"gather must be True, False or None (the default), got {gather!r}")
    if not gather and output is None:
        raise ValidationError(
            f"gather={gather!r} with output={output!r} keeps the fitted model nowhere; pass output= (a model "
            "directory the workers write) or gather=True"
        )
    state = check_random_state(model.random_state).bit_generator.state
    rules = rules if rules is not None else CleaningRules(feedback=model.feedback)
    if rules.feedback != model.feedback:
        raise ValidationError(
            f"rules.feedback={rules.feedback!r} differs from model.feedback={model.feedback!r}; use one kind"
        )

    data = read_blocks(source, client, n_blocks=n_blocks, user_col=user_col, item_col=item_col,
                       rating_col=rating_col, rules=rules)
    return _fit_blocks(model, data, client, state, n_threads, checkpoint, broadcast_fraction, callback,
                       None if output is None else os.fspath(output), gather)


def _check_model(model: NMFModel) -> None:
    model.check_params()
    if model.feedback not in SUPPORTED_FEEDBACK:
        raise ValidationError(
            f"distributed fits support feedback {SUPPORTED_FEEDBACK}; got {model.feedback!r}. "
            "Fit explicit (rating) models with NMFModel.fit on one machine."
        )
    if model.alpha == "auto":
        raise ValidationError(
            "distributed fits search only regularization, n_components and the confidence ('log' or "
            "'linear'); got 'auto' for alpha (the weight of unobserved entries). Run `timbral tune` on the "
            "data and pass its values (train --params FILE)."
        )
    if model.frequency_scale not in ("auto", 0):  # "auto" (the default) keeps the plain ridge here
        raise ValidationError(
            f"distributed fits use the plain ridge; got frequency_scale={model.frequency_scale!r}, "
            "which needs each row's own λ. Pass frequency_scale=0."
        )
    if model.feedback == "implicit" and model.confidence == "bm25":
        raise ValidationError(
            "distributed fits support confidence 'linear' and 'log'; got 'bm25', which needs corpus "
            "statistics of the whole matrix. Use confidence='log' or 'auto'."
        )
    if model.init != "random":
        raise ValidationError(f"distributed fits start from init='random'; got init={model.init!r}")
    rng = model.random_state
    if isinstance(rng, np.random.Generator) and not isinstance(rng.bit_generator, np.random.PCG64):
        raise ValidationError(
            f"random_state must be an int, None or a PCG64 Generator (np.random.default_rng); "
            f"got a Generator on {type(rng.bit_generator).__name__}"
        )


def _fit_blocks(model: NMFModel, data: Blocks, client: Client, state: dict, n_threads: int,
                checkpoint: str | None, broadcast_fraction: float,
                callback: Callable[[int, float], None] | None, output: str | None, gather: bool) -> DaskFit:
    dtype = np.dtype(np.float32)
    n_users, n_items = data.shape
    given = model
    model, table, start = _search(model, data, client, state)
    k, alpha = model.n_components, float(model.alpha)
    sums = client.gather([
        client.submit(_block_sums, b, model.feedback, alpha, model.confidence) for b in data.user_blocks
    ])
    nnz = data.report.nnz
    if model.regularization != "auto":
        lam = float(model.regularization)
    else:  # "auto" left after the search: frobenius, which has no validation metric; a constant
        lam = sums[0][1] / (int(data.user_bounds[1]) + n_items)
    l1, l2 = lam * float(model.l1_ratio), lam * (1.0 - float(model.l1_ratio))
    solve = rowsolve.settings(model.feedback, alpha, l1)
    target_sum = float(nnz) if model.feedback == "implicit" else sum(s[0] for s in sums)
    scale = rowsolve.start_scale(target_sum, n_users, n_items, k)

    users = _side(client, data.user_blocks, data.item_bounds, model, dtype, broadcast_fraction)
    items = _side(client, data.item_blocks, data.user_bounds, model, dtype, broadcast_fraction)
    if start is None:
        W = [client.submit(rowsolve.block_start, state, int(lo), int(hi - lo), k, scale, dtype)
             for lo, hi in zip(data.user_bounds[:-1], data.user_bounds[1:], strict=True)]
        H = [client.submit(rowsolve.block_start, state, n_users + int(lo), int(hi - lo), k, scale, dtype)
             for lo, hi in zip(data.item_bounds[:-1], data.item_bounds[1:], strict=True)]
    else:  # where the search left off, as NMFModel.fit starts
        W, H = ([client.scatter(np.ascontiguousarray(F[lo:hi], dtype), hash=False)
                 for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
                for F, bounds in zip(start, (data.user_bounds, data.item_bounds), strict=True))
    HtH = sum(g for g, _ in client.gather([client.submit(_gram_sum, h) for h in H]))
    beta = solve.weights.beta

    history: list[float] = []
    seconds: list[float] = []
    change, converged = np.inf, False
    for iteration in range(1, model.max_iter + 1):
        started = time.perf_counter()
        W, w_stats = _half_step(client, users, W, H, rowsolve.regularized_gram(HtH, beta, l2), solve, n_threads)
        WtW = sum(s[0] for s in w_stats)
        H, h_stats = _half_step(client, items, H, W, rowsolve.regularized_gram(WtW, beta, l2), solve, n_threads)
        HtH = sum(s[0] for s in h_stats)
        loss = rowsolve.objective(WtW, HtH, solve, l2, sum(s[1] for s in h_stats),
                                sum(s[2] for s in w_stats), sum(s[2] for s in h_stats))
        rowsolve.check_finite(loss, iteration, alpha, l2)
        if checkpoint is not None:
            W, H = _checkpoint(client, checkpoint, iteration, W, H)
        seconds.append(time.perf_counter() - started)
        if history:
            change = abs(history[-1] - loss) / max(abs(history[-1]), np.finfo(float).tiny)
        history.append(loss)
        if callback is not None:
            callback(iteration, loss)
        if change < model.tol:
            converged = True
            break
    if not converged:
        warnings.warn(
            f"distributed fit stopped at max_iter={model.max_iter} before the loss settled: the last "
            f"relative change {change:.3g} is above tol={model.tol:g}. Raise max_iter, or raise tol "
            "to accept a looser fit.",
            ConvergenceWarning,
            stacklevel=3,
        )
    result = DaskFit(None, None, None, data.report, seconds,
                     (users.rows_per_step + items.rows_per_step) * k * dtype.itemsize,
                     users.broadcasts + items.broadcasts, len(history))
    if output is not None:
        result.output = output
        result.model_version = write_model(
            client, output, W=W, H=H, user_blocks=data.user_blocks, item_blocks=data.item_blocks,
            block_nnz=data.user_block_nnz, user_ids=data.user_ids, item_ids=data.item_ids,
            params=given.get_params(), metadata={"data": data.report.to_dict()},
            fit_facts={"regularization": lam, "confidence": model.confidence, "alpha": alpha,
                       "search_results": table, "global_mean": 0.0, "n_iter": len(history),
                       "loss_history": history, "shape": (n_users, n_items)},
        )
    if gather:
        W_all, H_all = np.concatenate(client.gather(W)), np.concatenate(client.gather(H))
        result.model = NMFModel.from_fitted(given.get_params(), FittedState(
            W_all, H_all, np.zeros(n_users, dtype), np.zeros(n_items, dtype), 0.0, lam, len(history), history,
            sp.vstack(client.gather(data.user_blocks), format="csr"), model.confidence, alpha, table,
        ))
        result.user_ids, result.item_ids = client.gather(data.user_ids), client.gather(data.item_ids)
    return result


def _search(model: NMFModel, data: Blocks, client: Client, state: dict) -> tuple[NMFModel, list[dict] | None, Any]:
    """``model`` with its "auto" λ and k chosen by ``timbral.tuning.search``, the search's table
    and the factors to start from (None: the random start).

    The search fits a user sample of at most ``tuning.SAMPLE_MAX_INTERACTIONS``
    interactions. The workers draw it (``tuning.sample_rows`` on the rows' lengths, with
    the fit's seed: the users ``NMFModel.fit``'s search would draw) and only the sample
    comes to the client. Data that small is the sample itself: then the search sees
    what the local one sees, and the fit starts from its factors as ``NMFModel.fit`` does.
    """
    params = model.get_params() | {"frequency_scale": DEFAULT_FREQUENCY_SCALE}  # the plain ridge (_check_model)
    if not tuning.searched_parameters(params):
        if params["confidence"] == "auto":  # left only where the feedback kind ignores it, as NMFModel.fit does
            return NMFModel(**(params | {"confidence": DEFAULT_CONFIDENCE})), None, None
        return model, None, None
    lengths = [client.submit(_row_lengths, b) for b in data.user_blocks]
    if data.report.nnz <= tuning.SAMPLE_MAX_INTERACTIONS:
        rows = [client.submit(_all_rows, n) for n in lengths]
    else:
        plan = client.submit(_sample_plan, state, *lengths)
        rows = [client.submit(operator.getitem, plan, b) for b in range(len(lengths))]
    pieces = [client.submit(_take_rows, b, r) for b, r in zip(data.user_blocks, rows, strict=True)]
    sample = client.submit(_stack, *pieces).result()
    found = tuning.search(sample, params, confidences=SUPPORTED_CONFIDENCES)
    start = found.factors if sample.shape == data.shape else None
    return NMFModel(**(params | found.params)), found.table, start


def _row_lengths(block: sp.csr_matrix) -> NDArray[np.int64]:
    return np.diff(block.indptr).astype(np.int64)


def _all_rows(lengths: NDArray[np.int64]) -> NDArray[np.int64]:
    return np.arange(lengths.size)


def _sample_plan(state: dict, *lengths: NDArray[np.int64]) -> list[NDArray[np.int64]]:
    """Runs on a worker: the sampled users (``tuning.sample_rows``) as local rows of each block."""
    rng = np.random.Generator(np.random.PCG64())
    rng.bit_generator.state = state
    chosen = tuning.sample_rows(np.concatenate(lengths), rng)
    bounds = np.r_[0, np.cumsum([n.size for n in lengths])]
    cuts = np.searchsorted(chosen, bounds)
    return [chosen[a:b] - lo for a, b, lo in zip(cuts[:-1], cuts[1:], bounds[:-1], strict=True)]


def _take_rows(block: sp.csr_matrix, rows: NDArray[np.int64]) -> sp.csr_matrix:
    return block[rows]


def _stack(*pieces: sp.csr_matrix) -> sp.csr_matrix:
    return sp.vstack(pieces, format="csr")


def _checkpoint(
    client: Client, root: str, iteration: int, W: list[Future], H: list[Future]
) -> tuple[list[Future], list[Future]]:
    """Write this epoch's blocks, then continue from the files (the lineage stops here)."""
    base = f"{root.rstrip('/')}/epoch-{iteration:06d}"
    saved = client.gather(
        [client.submit(_save, x, f"{base}/W-{b:05d}.npy", pure=False) for b, x in enumerate(W)]
        + [client.submit(_save, h, f"{base}/H-{j:05d}.npy", pure=False) for j, h in enumerate(H)]
    )
    if iteration > 1:  # keep the last complete epoch only
        client.submit(_remove, f"{root.rstrip('/')}/epoch-{iteration - 1:06d}", pure=False).result()
    loaded = [client.submit(_load, url, pure=False) for url in saved]
    return loaded[: len(W)], loaded[len(W):]
