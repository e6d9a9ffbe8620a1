"""Hyperparameters chosen by validation on the training matrix (``"auto"`` values).

No fixed rule for λ or the confidence scaling transfers across data sets (the old
rule λ = Σc / (n_users + n_items) was near-optimal on two public sets and five times
too large on others), so :func:`search` measures instead of guessing:

1. **Sample.** Above ``SAMPLE_MAX_INTERACTIONS`` interactions the search runs on a
   seeded sample of whole users holding at most that many; items are all kept.
2. **Split.** A seeded per-user random holdout (``VALIDATION_FRACTION`` of each
   user's interactions, users with at least 5) of the matrix given to ``fit``: the
   caller's test data never enter. At most ``VALIDATION_MAX_USERS`` users are scored.
3. **Path.** For every combination of the discrete "auto" parameters (confidence ×
   α × ``n_components``), a regularisation path ``λ = centre · 2^j``, j = 2 … −6,
   from strong to weak, each point warm-started from the previous one's factors
   (``NMFModel(warm_start=True)``); ``centre`` = Σ_obs c_ui / (n_users + n_items) of
   the split's training part, so the grid follows the scale of the confidences. A
   path stops after ``PATIENCE`` points without improvement once it has beaten the
   most-popular-items ranking by ``STARTED`` (before, a too strong λ has collapsed every
   model to about that ranking and the curve is flat, not past its peak; the validation curve
   is unimodal in λ in practice, and the weak end is the slow one). Only the first
   path of each ``n_components`` starts cold; the others (α) warm-start from the
   last fit and begin one step stronger than the best λ / centre so far, so each
   costs a few short fits, not a whole path.
   **Screens.** With ``confidence="auto"`` (the default), the default scaling
   (``log``) walks its paths first; each other scaling is then only *screened*: one
   fit of ``SCREEN_MAX_ITER`` warm-started epochs at log's best λ / centre moved by
   ``SCREEN_STEPS`` of that scaling (linear one step weaker, bm25 one stronger, each on
   its own centre). Only if the rule of step 4 picks a screened row does that scaling
   walk a whole path (from one step above its screen point); screened rows themselves
   are never chosen. A search that keeps ``log`` thus pays two short fits for the two
   other scalings (on Last.fm 10 epochs, against 147 for their whole paths).
   **ν.** With ``frequency_scale="auto"`` (the default), ν = 1 is screened the same way
   after the paths: one ``SCREEN_MAX_ITER``-epoch fit warm-started from the best path's
   model, ``FREQUENCY_SCREEN_STEPS`` path step weaker than the best λ at ν = 0 (the
   row-scaled ridge λ·(m_u/m̄)^ν shrinks the heavy rows, which carry most of the loss,
   harder than the plain one: where ν = 1 won on validation, Last.fm, its best λ was
   half of ν = 0's, and at ν = 0's λ it lost).
   It walks a whole path of its own only if its screen beats ν = 0 under the rule of
   step 4. (ν is searched only with λ: a λ the caller fixed is one for the plain ridge.)
   The path of the setting the rule of step 4 picks then gets one more point: the
   geometric midpoint between its best λ and the better neighbour (a factor √2
   resolution for the price of one fit).
4. **Select.** NDCG@10 for implicit feedback, RMSE for explicit; ties keep the
   stronger penalty. A validation set of a few hundred users is noisy, so a setting
   that departs from the defaults (``log`` confidence, α = 1, ν = 0) must beat the
   best default setting by more than ``MARGIN_SE`` standard errors of the paired difference,
   measured over ``GROUPS`` seeded groups of validation users; otherwise the best
   default setting is kept. Without a user sample, the refit on all the data starts
   from the best path's factors (a warm start: fewer epochs than from scratch).
5. **Carry.** The chosen λ is used unchanged on all the data. λ is the strength of a
   per-row Gaussian prior on the factors (the MAP view of ridge: σ²/τ²); it does
   not depend on how many rows or interactions there are, so neither the holdout
   nor the user sample rescales it. Measured (``benchmarks/tuning_cost.py --carry``,
   generated 60k users × 20k items, 1.5M plays, k = 64): λ chosen on the 24,743-user
   sample is 19.6 (test NDCG@10 0.2153), on all 60,000 users 74.8 (0.2191), so the
   rule costs 1.7 % there; scaling the sample's λ by n_users / sample_users (47.6)
   gave 0.2152, no better. The rule stands until a better one is measured.

The levers Rendle et al. (2021) found decisive for weighted implicit models are
here as: the weight of unobserved entries relative to observed ones, which is
``1 : (1 + α·r')`` in this objective, so ``alpha="auto"`` searches it; the penalty
(the λ path); and frequency-scaled regularisation λ·(m_u / m̄)^ν, m_u the row's
total entry weight (``frequency_scale="auto"`` searches ν).

References
----------
Rendle, Krichene, Zhang, Koren. Revisiting the Performance of iALS on Item
Recommendation Benchmarks. RecSys 2022 (arXiv 2110.14037).
Friedman, Hastie, Tibshirani. Regularization Paths for Generalized Linear Models
via Coordinate Descent. J. Stat. Softw. 2010 (warm-started paths).
"""

from __future__ import annotations

import copy
import itertools
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral.exceptions import ConvergenceWarning, ValidationError
from timbral.metrics import ndcg_by_user, popularity_top_k, ranking_scores, rating_metrics
from timbral.nmf import NMFModel
from timbral.nmf.objective import DEFAULT_ALPHA, DEFAULT_CONFIDENCE, DEFAULT_FREQUENCY_SCALE, auto_regularization
from timbral.split import random_split

__all__ = [
    "ALPHA_GRID",
    "CONFIDENCE_GRID",
    "FREQUENCY_SCALE_GRID",
    "N_COMPONENTS_GRID",
    "SearchResult",
    "sample_rows",
    "search",
    "searched_parameters",
]

#: Candidates of ``confidence="auto"``.
CONFIDENCE_GRID = ("log", "linear", "bm25")
#: Candidates of ``alpha="auto"``: observed entries weigh 1 + α·r' against 1 for unobserved ones.
ALPHA_GRID = (0.25, 1.0, 4.0)
#: Candidates of ``frequency_scale="auto"`` (ν of the frequency-scaled ridge; 0 first: the default).
#: Rendle et al. (2021) found ν = 1 decisive for iALS; ν = 0.5 was never chosen on a set measured here
#: (Last.fm's test-split grid: 0.2331 against 0.2337 at ν = 0), so the search spends no fit on it.
FREQUENCY_SCALE_GRID = (0.0, 1.0)
#: The values the noise-aware rule protects: a setting that departs from them must beat the
#: best row at them by ``MARGIN_SE`` standard errors.
DEFAULTS = {"confidence": DEFAULT_CONFIDENCE, "alpha": DEFAULT_ALPHA, "frequency_scale": DEFAULT_FREQUENCY_SCALE}
#: Seeded groups of validation users whose paired differences give that standard error.
GROUPS = 10
#: Standard errors a departure must win by. With one, MovieLens-small's search chose bm25
#: (+0.0061 ± 0.0039 NDCG@10 over log on validation) and lost 1.8 % on the test split.
MARGIN_SE = 2.0
#: ``confidence="auto"``: each scaling other than the default is first screened by one fit of
#: ``SCREEN_MAX_ITER`` warm-started epochs, at this many path steps from the default scaling's best
#: λ / centre (positive: weaker), the side where its own best sat on the sets measured (steps from
#: log's best: linear +1 on Last.fm's validation table, 0 on the test-split grids of MovieLens-small
#: and the hours stand-in in benchmarks/README.md; bm25 −1, −0.5 and 0). Only a scaling whose screen beats the
#: default under the noise rule gets a whole path: a search that keeps ``log`` pays two short fits.
SCREEN_STEPS = {"linear": 1, "bm25": -1, "log": 0}
SCREEN_MAX_ITER = 5
#: ``frequency_scale="auto"``: path steps from the best λ at ν = 0 to each other ν's screen point
#: (weaker: on Last.fm's validation split, the one measured where ν = 1 won, its best λ was half of
#: ν = 0's, and at ν = 0's own λ it lost 8 %; on MovieLens-small half and the same λ tied, and on the
#: generated sets, where it does not win, its best was ν = 0's λ).
FREQUENCY_SCREEN_STEPS = {1.0: 1}
#: Candidates of ``n_components="auto"``.
N_COMPONENTS_GRID = (32, 64, 128)
#: λ / centre along the path, strong to weak (factor 2 per step).
PATH = tuple(2.0**j for j in range(2, -7, -1))
#: Path points without improvement before the path stops. One: on Last.fm, MovieLens-small and
#: the generated sets the validation curve falls on both sides of its peak, and the second point
#: past the peak cost 13 of the default search's 77 epochs without ever being chosen.
PATIENCE = 1
#: ... counted once a point beats the most-popular-items ranking by this factor: before, a too
#: strong λ has collapsed the models to about that ranking (measured 1.09-1.13× it on a test set
#: whose path then stopped on the plateau) and the curve is flat, not past its peak.
STARTED = 1.2
#: Share of each user's training interactions held out for validation.
VALIDATION_FRACTION = 0.2
#: Users scored on the validation part (a seeded subset beyond this).
VALIDATION_MAX_USERS = 2_000
#: Above this many interactions the search runs on a seeded sample of users.
SAMPLE_MAX_INTERACTIONS = 500_000
#: Epochs of a path's first (cold) point and of each warm-started point after it.
COLD_MAX_ITER, WARM_MAX_ITER = 50, 15
#: Ranking cut-off of the implicit validation metric.
K = 10

_SEARCHED = ("regularization", "confidence", "alpha", "frequency_scale", "n_components")


@dataclass
class SearchResult:
    """What :func:`search` chose and how.

    Attributes
    ----------
    params : dict
        The chosen values of the searched parameters (numbers and names, no "auto").
    table : list of dict
        One row per setting tried, in order: ``n_components``, ``confidence``,
        ``alpha``, ``regularization``, ``frequency_scale``, the metric (``ndcg@10``
        or ``rmse``), ``n_iter``, ``seconds``, ``screen`` (a short fit that only decides
        whether its confidence scaling or ν gets a whole path; never chosen) and ``chosen``.
    metric : str
        ``"ndcg@10"`` (higher is better) or ``"rmse"`` (lower is better).
    sample_users, n_users : int
        Users the search fitted on, of all users.
    seconds : float
    factors : (user factors, item factors) or None
        The best path's last factors when the search saw every user (same shapes as
        the data): the refit starts from them instead of from scratch.
    """

    params: dict[str, Any]
    table: list[dict[str, Any]] = field(default_factory=list)
    metric: str = "ndcg@10"
    sample_users: int = 0
    n_users: int = 0
    seconds: float = 0.0
    factors: tuple[NDArray[np.floating], NDArray[np.floating]] | None = None


def searched_parameters(params: Mapping[str, Any]) -> list[str]:
    """Names of the parameters ``fit`` must choose by validation (their value is "auto").

    ``confidence`` and ``alpha`` only matter for implicit feedback; frobenius has no
    validation metric, so its "auto" λ stays a fixed light ridge (ν = 0) and its
    ``n_components`` must be a number. ν is searched with λ only: its best λ is about half
    the plain ridge's, so a λ the caller fixed is one for the plain ridge, and "auto" ν keeps it.
    """
    feedback = params["feedback"]
    if feedback == "frobenius":
        if params["n_components"] == "auto":
            raise ValidationError(
                "`n_components`='auto' needs feedback 'implicit' or 'explicit' (a validation metric to "
                "choose by); got feedback='frobenius'. Pass an integer n_components."
            )
        return []
    names = [name for name in _SEARCHED if params[name] == "auto"]
    if params["regularization"] != "auto":
        names = [name for name in names if name != "frequency_scale"]
    if feedback != "implicit":
        names = [name for name in names if name not in ("confidence", "alpha")]
    return names


def search(
    user_items: sp.csr_matrix,
    params: Mapping[str, Any],
    *,
    show_progress: bool = False,
    confidences: tuple[str, ...] = CONFIDENCE_GRID,
) -> SearchResult:
    """Choose every "auto" parameter of ``params`` by validation on ``user_items``.

    Parameters
    ----------
    user_items : csr_matrix of shape (n_users, n_items)
        The training matrix (canonical CSR, as ``NMFModel.fit`` checks it); the
        search splits it and never sees anything else.
    params : mapping
        ``NMFModel.get_params()``; parameters that are not "auto" stay fixed.
    show_progress : bool, default=False
        A progress bar over the settings tried.
    confidences : tuple of str, default=CONFIDENCE_GRID
        The candidates of ``confidence="auto"``, the default scaling first (the Dask fit
        leaves out ``bm25``, whose corpus statistics its workers do not share).

    Returns
    -------
    SearchResult
        When no user has enough interactions to hold some out, nothing can be
        validated: ``params`` are then the defaults (λ by the fixed rule Σc /
        (n_users + n_items), ``log`` confidence, α = 1, ν = 0, 64 components) and
        the table is empty.
    """
    started = time.perf_counter()
    distinct = set(confidences)
    if not confidences or len(distinct) < len(confidences) or not distinct <= set(CONFIDENCE_GRID):
        raise ValidationError(
            f"`confidences` must be distinct scalings among {', '.join(map(repr, CONFIDENCE_GRID))}, at least "
            f"one; got {confidences!r}. Pass e.g. ('log', 'linear')."
        )
    names = searched_parameters(params)
    explicit = params["feedback"] == "explicit"
    metric = "rmse" if explicit else f"ndcg@{K}"
    seed = _seed(params["random_state"])
    rng = np.random.default_rng(seed)
    sample = _sample_users(user_items, rng)
    train, valid = random_split(sample, test_fraction=VALIDATION_FRACTION, seed=rng, min_interactions=5)
    valid = _limit_users(valid, rng)
    groups = _user_groups(valid, rng)
    grids = {
        "confidence": confidences if "confidence" in names else (_named(params["confidence"]),),
        "alpha": ALPHA_GRID if "alpha" in names else (params["alpha"],),
        "n_components": N_COMPONENTS_GRID if "n_components" in names else (params["n_components"],),
    }
    combos = list(itertools.product(grids["confidence"], grids["alpha"], grids["n_components"]))
    result = SearchResult(params={}, metric=metric, sample_users=sample.shape[0], n_users=user_items.shape[0])
    if valid.nnz == 0:
        result.params = _fallback(user_items, params, names)
        result.seconds = time.perf_counter() - started
        return result
    floor = 0.0 if explicit else STARTED * _popularity_ndcg(train, valid, groups)
    lambdas = (None,) if "regularization" not in names else PATH
    scales = FREQUENCY_SCALE_GRID[1:] if "frequency_scale" in names else ()
    nu = DEFAULT_FREQUENCY_SCALE if params["frequency_scale"] == "auto" else float(params["frequency_scale"])
    total = len(combos) * len(lambdas) + (lambdas != (None,)) + len(scales)
    progress = _progress_bar(total) if show_progress else None
    by_group: list[NDArray[np.float64]] = []  # the metric of each table row on each user group
    # The factors of the best row and of the best row at the defaults (the rule chooses one of
    # them): the refit starts from the chosen one's. Kept only when the search sees every user.
    starts: dict[int, tuple[NDArray[np.floating], NDArray[np.floating]]] = {}
    keep_starts = sample.shape == user_items.shape

    def loss(row: dict[str, Any]) -> float:
        return row[metric] if explicit else -row[metric]

    def point(model: NMFModel, penalty: float, cap: int, screen: bool = False) -> dict[str, Any]:
        """Fit ``model`` at λ = ``penalty`` (at most ``cap`` epochs), score it, add a table row."""
        model.set_params(regularization=float(penalty), max_iter=min(int(params["max_iter"]), cap))
        tick = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # path points are truncated on purpose
            model.fit(train)
        confidence, alpha = model.get_params()["confidence"], model.get_params()["alpha"]
        overall, grouped = _score(model, valid, groups, explicit)
        row = {
            "n_components": int(model.n_components_),
            "confidence": None if explicit else confidence,
            "alpha": None if explicit else alpha,
            "regularization": float(penalty),
            "frequency_scale": float(model.frequency_scale_),
            metric: overall,
            "n_iter": model.n_iter_,
            "seconds": round(time.perf_counter() - tick, 4),
            "screen": screen,
            "chosen": False,
        }
        result.table.append(row)
        by_group.append(grouped)
        if keep_starts:
            at = len(result.table) - 1
            leaders = {min(range(len(result.table)), key=lambda i: loss(result.table[i]))}
            plain = [i for i, other in enumerate(result.table) if _at_defaults(other, names)]
            if plain:
                leaders.add(min(plain, key=lambda i: loss(result.table[i])))
            if at in leaders:
                starts[at] = (model.user_factors_.copy(), model.item_factors_.copy())
            for stale in set(starts) - leaders:
                del starts[stale]
        if progress is not None:
            progress.update(1)
            progress.set_postfix({metric: f"{row[metric]:.4f}", "λ": f"{penalty:.3g}"})
        return row

    def walk(model: NMFModel, centre: float, first: int, warm: bool) -> list[dict[str, Any]]:
        """A path from step ``first`` towards weaker λ until ``PATIENCE`` points bring no improvement."""
        if progress is not None:
            progress.update(first)
        path: list[dict[str, Any]] = []
        for step in range(first, len(lambdas)):
            penalty = params["regularization"] if lambdas[step] is None else centre * lambdas[step]
            path.append(point(model, penalty, WARM_MAX_ITER if warm or step > first else COLD_MAX_ITER))
            stale = len(path) - 1 - min(range(len(path)), key=lambda i: loss(path[i]))
            if stale >= PATIENCE and (explicit or max(row[metric] for row in path) > floor):
                if progress is not None:
                    progress.update(len(lambdas) - step - 1)
                break
        return path

    def screen(model: NMFModel, centre: float, offset: int) -> list[dict[str, Any]]:
        """A screen's one row: ``SCREEN_MAX_ITER`` epochs, ``offset`` path steps weaker than the
        best λ so far (on ``centre``'s grid)."""
        step = min(max(best_step + offset, 0), len(lambdas) - 1)
        return [point(model, centre * lambdas[step], SCREEN_MAX_ITER, screen=True)]

    def eligible() -> list[int]:
        """The table rows the final choice may take: every row but the screens'."""
        return [i for i, row in enumerate(result.table) if not row["screen"]]

    last: dict[int, NMFModel] = {}  # the last model fitted with each n_components
    # Per setting: its fixed parameters, its model (each keeps its own path's last factors), the
    # centre of its λ grid, its path's rows and whether they are only a screen.
    paths: list[tuple[dict[str, Any], NMFModel, float, list[dict[str, Any]], bool]] = []
    best_step = None  # the path step of the best row so far (later paths start one step stronger) ...
    best_path: Any = None  # ... and its entry in ``paths``
    try:
        for confidence, alpha, n_components in combos:
            alpha = _alpha(alpha)
            fixed = {"confidence": confidence, "alpha": alpha, "n_components": n_components, "frequency_scale": nu}
            centre = auto_regularization(train, params["feedback"], alpha, confidence)
            warm = n_components in last
            if warm:  # a copy of the last fit with this k, so that path keeps its own factors
                model = copy.deepcopy(last[n_components]).set_params(**fixed)
            else:
                model = NMFModel(**{**params, **fixed, "random_state": seed, "warm_start": True})
            last[n_components] = model
            first = 0 if not warm or best_step is None else max(0, best_step - 1)
            screened = (best_step is not None and lambdas != (None,) and "confidence" in names
                        and confidence != DEFAULTS["confidence"])
            if screened:
                path = screen(model, centre, SCREEN_STEPS[confidence])
                if progress is not None:
                    progress.update(len(lambdas) - 1)
            else:
                path = walk(model, centre, first, warm)
            paths.append((fixed, model, centre, path, screened))
            if not screened and min(map(loss, path)) <= min(loss(row) for *_, rows, _ in paths for row in rows):
                best_step = first + min(range(len(path)), key=lambda i: loss(path[i]))
                best_path = paths[-1]
        if scales:  # each ν ≠ 0 screened from the best path's model, on its centre (λ is searched too)
            fixed, model, centre, *_ = best_path
            for scale in scales:
                scaled = copy.deepcopy(model).set_params(frequency_scale=scale)
                rows = screen(scaled, centre, FREQUENCY_SCREEN_STEPS[scale])
                paths.append(({**fixed, "frequency_scale": scale}, scaled, centre, rows, True))
        pick = result.table[_select(result.table, by_group, loss, names, not explicit)]
        at = next(i for i, (*_, rows, _) in enumerate(paths) if any(row is pick for row in rows))
        fixed, model, centre, path, screened = paths[at]
        if screened:  # a scaling or ν passed its screen: its whole path, from one step above its screen point
            if progress is not None:
                progress.total += len(lambdas)
            lambda_step = {centre * lambdas[step]: step for step in range(len(lambdas))}
            path = walk(model, centre, max(0, lambda_step[pick["regularization"]] - 1), True)
            paths[at] = (fixed, model, centre, path, False)
        # Refine the setting the rule picks among whole paths: its best λ, then ν there.
        pick = result.table[_select(result.table, by_group, loss, names, not explicit, eligible())]
        model, path = next((m, rows) for _, m, _, rows, screen in paths if not screen and any(r is pick for r in rows))
        if lambdas != (None,):
            # One step of refinement: the geometric midpoint between the best λ and its better neighbour.
            at = min(range(len(path)), key=lambda i: loss(path[i]))
            neighbours = [i for i in (at - 1, at + 1) if 0 <= i < len(path)]
            if neighbours:
                other = min(neighbours, key=lambda i: loss(path[i]))
                path.append(point(model, np.sqrt(path[at]["regularization"] * path[other]["regularization"]),
                                  WARM_MAX_ITER))
            elif progress is not None:
                progress.update(1)
    finally:
        if progress is not None:
            progress.close()
    at = _select(result.table, by_group, loss, names, not explicit, eligible())
    chosen = result.table[at]
    chosen["chosen"] = True
    result.params = {name: chosen[name] for name in names}
    result.factors = starts.get(at)
    result.seconds = time.perf_counter() - started
    return result


def _select(
    table: list[dict[str, Any]],
    by_group: list[NDArray[np.float64]],
    loss: Callable[[dict[str, Any]], float],
    names: list[str],
    higher_is_better: bool,
    candidates: list[int] | None = None,
) -> int:
    """The row to choose among ``candidates`` (default: every row): the best one, unless it departs
    from ``DEFAULTS`` and beats the best row at the defaults by no more than ``MARGIN_SE`` standard
    errors of their paired group differences.

    The first best row wins a tie: along a path, the stronger penalty.
    """
    rows = range(len(table)) if candidates is None else candidates
    best = min(rows, key=lambda i: loss(table[i]))
    plain = [i for i in rows if _at_defaults(table[i], names)]
    if not plain or best in plain:
        return best
    reference = min(plain, key=lambda i: loss(table[i]))
    return best if _gain(by_group[best], by_group[reference], higher_is_better) > 0 else reference


def _at_defaults(row: Mapping[str, Any], names: list[str]) -> bool:
    """Whether ``row`` has the ``DEFAULTS`` value of every searched parameter that has one."""
    return all(row[name] == DEFAULTS[name] for name in DEFAULTS if name in names)


def _gain(candidate: NDArray[np.float64], reference: NDArray[np.float64], higher_is_better: bool) -> float:
    """Mean paired improvement of ``candidate`` over ``reference`` across groups, less ``MARGIN_SE``
    standard errors."""
    diff = (candidate - reference) if higher_is_better else (reference - candidate)
    if diff.size < 2:
        return float(diff.mean()) if diff.size else 0.0
    return float(diff.mean() - MARGIN_SE * diff.std(ddof=1) / np.sqrt(diff.size))


def _popularity_ndcg(train: sp.csr_matrix, valid: sp.csr_matrix, groups: list[NDArray[np.int64]]) -> float:
    """NDCG@K on ``valid`` of the popularity baseline: what a model whose factors collapsed
    under a too strong λ still reaches."""
    users = np.concatenate(groups)
    return float(ranking_scores(popularity_top_k(train, users, K), valid, users)["ndcg"])


def _score(
    model: NMFModel, valid: sp.csr_matrix, groups: list[NDArray[np.int64]], explicit: bool
) -> tuple[float, NDArray[np.float64]]:
    """The validation metric over all validation users, and on each group of them (the model's
    training items are excluded from its recommendations)."""
    if explicit:
        overall = float(rating_metrics(model, valid)["rmse"])
        return overall, np.array([rating_metrics(model, _rows_of(valid, g))["rmse"] for g in groups])
    # One top-K and one NDCG per validation user (every one has validation items); each
    # figure is a mean of those values, as ranking_scores' over the same users would be.
    users = np.concatenate(groups)  # never empty: search returns before scoring an empty split
    ids = np.full((users.size, K), -1, dtype=np.int64)  # padded as ranking_metrics pads a small catalogue
    found = np.asarray(model.recommend_batch(users, K, exclude_seen=True)[0])
    ids[:, : found.shape[1]] = found
    ndcg = ndcg_by_user(ids, valid, users)
    cuts = np.cumsum([len(g) for g in groups])[:-1]
    return float(np.mean(ndcg)), np.array([np.mean(part) for part in np.split(ndcg, cuts)])


def _user_groups(valid: sp.csr_matrix, rng: np.random.Generator) -> list[NDArray[np.int64]]:
    """The validation users in ``GROUPS`` seeded groups of about equal size (fewer with fewer users)."""
    users = rng.permutation(np.flatnonzero(np.diff(valid.indptr)))
    return [g for g in np.array_split(users, max(1, min(GROUPS, users.size))) if g.size]


def _rows_of(matrix: sp.csr_matrix, users: NDArray[np.int64]) -> sp.csr_matrix:
    """``matrix`` keeping only the rows of ``users`` (the others emptied; same shape)."""
    keep_user = np.zeros(matrix.shape[0], dtype=bool)
    keep_user[users] = True
    keep = np.repeat(keep_user, np.diff(matrix.indptr))
    indptr = np.concatenate([[0], np.cumsum(np.where(keep_user, np.diff(matrix.indptr), 0))])
    return sp.csr_matrix((matrix.data[keep], matrix.indices[keep], indptr), shape=matrix.shape)


def _alpha(alpha: float | str) -> float:
    """α as a number; "auto" that is not searched (explicit feedback ignores α) is 1."""
    return 1.0 if alpha == "auto" else float(alpha)


def _named(confidence: str) -> str:
    """A confidence scaling; "auto" that is not searched (explicit feedback ignores it) is "log"."""
    return "log" if confidence == "auto" else confidence


def _seed(random_state: int | np.random.Generator | None) -> int:
    """An int seed for the split and the search's fits, from the model's ``random_state``."""
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**31))
    if random_state is None:
        return int(np.random.default_rng().integers(2**31))
    return int(random_state)


def _sample_users(user_items: sp.csr_matrix, rng: np.random.Generator) -> sp.csr_matrix:
    """The rows of a seeded random set of users holding at most ``SAMPLE_MAX_INTERACTIONS``
    interactions (all users when the matrix is that small); every item is kept."""
    if user_items.nnz <= SAMPLE_MAX_INTERACTIONS:
        return user_items
    return user_items[sample_rows(np.diff(user_items.indptr), rng)]


def sample_rows(row_lengths: NDArray[np.integer], rng: np.random.Generator) -> NDArray[np.int64]:
    """Sorted indices of the users the search samples: a random order of all users, kept while
    their interactions (``row_lengths``) add up to at most ``SAMPLE_MAX_INTERACTIONS``.

    Public so a caller holding only the row lengths (the Dask fit, whose rows stay on the
    workers) draws the same users as :func:`search` from the same generator state.
    """
    order = rng.permutation(row_lengths.shape[0])
    return np.sort(order[np.cumsum(row_lengths[order]) <= SAMPLE_MAX_INTERACTIONS])


def _limit_users(valid: sp.csr_matrix, rng: np.random.Generator) -> sp.csr_matrix:
    """``valid`` keeping the rows of at most ``VALIDATION_MAX_USERS`` users (a seeded
    subset); the other rows are emptied, so the shape stays that of the training part."""
    users = np.flatnonzero(np.diff(valid.indptr))
    if users.size <= VALIDATION_MAX_USERS:
        return valid
    return _rows_of(valid, rng.choice(users, VALIDATION_MAX_USERS, replace=False))


def _fallback(user_items: sp.csr_matrix, params: Mapping[str, Any], names: list[str]) -> dict[str, Any]:
    """Defaults when nothing can be validated (every user has too few interactions)."""
    values = {**DEFAULTS, "n_components": 64}
    fixed = {**params, **{name: values[name] for name in names if name in values}}
    if "regularization" in names:
        fixed["regularization"] = auto_regularization(
            user_items, params["feedback"], _alpha(fixed["alpha"]), _named(fixed["confidence"])
        )
    return {name: fixed[name] for name in names}


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="search", unit="fit", leave=False)
