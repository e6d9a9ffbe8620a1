"""The training pipeline: load → validate → split → fit → evaluate → refit → save.

From Python, in three lines::

    from timbral.train import train
    result = train("plays.csv", "model/", model=NMFModel(n_components=64))
    print(result.metrics)

Protocol. With ``test_fraction`` set, a per-user random holdout is taken, a model
is fitted on the rest and ranking metrics (and rating metrics for explicit
feedback) are measured on the held-out part. The model that is returned and saved
is then refitted on *all* the data with the same parameters (``refit=True``), so
serving loses nothing to the evaluation; the metadata records that the metrics
come from the holdout model. ``refit=False`` returns (and saves) the holdout model;
all of the data still counts as seen, so held-out items are never recommended back.
The validation search of "auto" parameters runs once, on the training part: the
holdout model and the refit both use its choices (λ is carried unchanged, as the
search carries it from its user sample; ``timbral.tuning``).

Every step logs one JSON event (logger ``timbral.train``) with its counts and timings.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timbral._validation import DEFAULT_SEED, check_k, check_user_items
from timbral.cleaning import ValidationReport
from timbral.exceptions import ValidationError
from timbral.interactions import Interactions, load_interactions
from timbral.nmf import NMFModel
from timbral.recommender import Recommender
from timbral.tuning import SearchResult, search, searched_parameters

__all__ = ["TrainResult", "train"]

log = logging.getLogger("timbral.train")


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes
    ----------
    recommender : Recommender
        The fitted model with its id maps (fitted on all data unless ``refit=False``).
    metrics : dict of str to float
        Held-out metrics (``precision@10``, ``ndcg@10``, ...); empty without a split.
    report : ValidationReport
        What loading read, merged and dropped.
    timings : dict of str to float
        Seconds per step (``load``, ``split``, ``search``, ``fit``, ``evaluate``,
        ``refit``, ``save``, ``total``).
    path : pathlib.Path or None
        The saved model directory, if ``output`` was given.
    """

    recommender: Recommender
    metrics: dict[str, float]
    report: ValidationReport
    timings: dict[str, float] = field(default_factory=dict)
    path: Path | None = None


def _fit(
    params: Mapping[str, Any], user_items: Any, progress: bool, phase: str, search: SearchResult | None = None
) -> NMFModel:
    """A fresh model with ``params`` fitted on ``user_items`` (its "auto" values from ``search``
    when given), logged as one event."""
    start = time.perf_counter()
    model = NMFModel(**params).fit(user_items, show_progress=progress, search=search)
    log.info(
        "fitted model",
        extra={
            "event": "fit",
            "phase": phase,
            "n_users": int(user_items.shape[0]),
            "n_items": int(user_items.shape[1]),
            "nnz": int(user_items.nnz),
            "n_iter": model.n_iter_,
            "loss": model.loss_history_[-1] if model.loss_history_ else None,
            "seconds": round(time.perf_counter() - start, 4),
        },
    )
    return model


def train(
    data: str | os.PathLike[str] | Interactions,
    output: str | os.PathLike[str] | None = None,
    *,
    model: NMFModel | None = None,
    test_fraction: float | None = 0.2,
    k: int = 10,
    seed: int | None = DEFAULT_SEED,
    refit: bool = True,
    load_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    overwrite: bool = True,
) -> TrainResult:
    """Train, evaluate and (optionally) save a recommender.

    Parameters
    ----------
    data : path-like or Interactions
        An interaction file (anything :func:`timbral.load_interactions` reads)
        or already loaded interactions.
    output : path-like, optional
        Model directory to write (atomically). Nothing is written when omitted.
    model : NMFModel, optional
        The estimator whose parameters are used (default ``NMFModel()``); it is
        not modified: every fit starts from a fresh copy of its parameters. Its
        ``feedback`` also says how the loader merges duplicate rows.
    test_fraction : float in (0, 1) or None, default=0.2
        Share of each user's interactions held out for evaluation; ``None`` skips
        the split and the metrics.
    k : int, default=10
        Cut-off of the ranking metrics.
    seed : int or None, default=42
        Seeds the split (the model's ``random_state`` seeds its initial factors).
    refit : bool, default=True
        After evaluating, refit on all the data and return/save that model.
    load_options : mapping, optional
        More keyword arguments of ``load_interactions`` (``user_col``, ``sep``,
        ``min_user_interactions``, ...). Ignored when ``data`` is ``Interactions``.
    progress : bool, default=False
        Progress bars for loading and fitting.
    overwrite : bool, default=True
        Replace an existing model directory at ``output``.

    Returns
    -------
    TrainResult

    Raises
    ------
    DataError
        The data cannot be read or nothing is left after cleaning.
    ValidationError
        A parameter is out of range.
    ArtifactError
        ``output`` cannot be written.
    """
    if model is None:
        model = NMFModel()
    if not isinstance(model, NMFModel):
        raise ValidationError(f"`model` must be an NMFModel; got {type(model).__name__}. Pass model=NMFModel(...).")
    model.check_params()  # before any I/O
    params = model.get_params()
    feedback = model.feedback
    if test_fraction is not None and not (
        isinstance(test_fraction, (int, float)) and not isinstance(test_fraction, bool) and 0 < test_fraction < 1
    ):
        raise ValidationError(f"`test_fraction` must be a number in (0, 1) or None; got {test_fraction!r}")
    k = check_k(k)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 4)
        return now

    t = time.perf_counter()
    if isinstance(data, Interactions):
        interactions = data
    else:
        interactions = load_interactions(data, feedback=feedback, progress=progress, **dict(load_options or {}))
    t = lap("load", t)
    report = interactions.report
    log.info(
        "loaded interactions",
        extra={
            "event": "load",
            "source": report.source,
            "rows_read": report.rows_read,
            "n_users": interactions.n_users,
            "n_items": interactions.n_items,
            "nnz": interactions.nnz,
            "seconds": timings["load"],
        },
    )

    metrics: dict[str, float] = {}
    evaluation: dict[str, Any] | None = None
    if test_fraction is None:
        fitted = _fit(params, interactions.user_items, progress, "final")
        lap("fit", t)
    else:
        from timbral.metrics import ranking_metrics, rating_metrics
        from timbral.split import random_split

        train_part, test_part = random_split(interactions, test_fraction=test_fraction, seed=seed)
        t = lap("split", t)
        log.info(
            "split interactions",
            extra={"event": "split", "train_nnz": int(train_part.nnz), "test_nnz": int(test_part.nnz),
                   "test_fraction": test_fraction, "seconds": timings["split"]},
        )
        found = None
        if searched_parameters(params):
            found = search(check_user_items(train_part), params, show_progress=progress)
            t = lap("search", t)
            log.info("searched parameters", extra={"event": "search", **found.params, "settings": len(found.table),
                                                    "seconds": timings["search"]})
        fitted = _fit(params, train_part, progress, "evaluation", found)
        t = lap("fit", t)
        raw = dict(ranking_metrics(fitted, train_part, test_part, k=k))
        evaluated_users = int(raw.pop("n_users"))
        raw.pop("k")
        if feedback == "explicit":
            raw |= rating_metrics(fitted, test_part)
        rated_pairs = raw.pop("n_ratings", None)  # a count of held-out ratings, not a metric
        metrics = {
            (name if name in ("rmse", "mae") or "@" in name else f"{name}@{k}"): float(value)
            for name, value in raw.items()
        }
        t = lap("evaluate", t)
        log.info("evaluated model", extra={"event": "evaluate", "k": k, **metrics, "seconds": timings["evaluate"]})
        evaluation = {
            "protocol": "per-user random holdout",
            "test_fraction": test_fraction,
            "seed": seed,
            "k": k,
            "evaluated_users": evaluated_users,
            "train_nnz": int(train_part.nnz),
            "test_nnz": int(test_part.nnz),
            "rated_pairs": rated_pairs,
            "final_model": "refitted on all data" if refit else "fitted on the training part",
        }
        if refit:
            fitted = _fit(params, interactions.user_items, progress, "final", found)
            t = lap("refit", t)

    metadata = {
        "data": report.to_dict(),
        "metrics": metrics,
        "evaluation": evaluation,
        "timings": dict(timings),
    }
    # All interactions count as seen, also when the model saw only the training part.
    recommender = Recommender(
        fitted, interactions.users, interactions.items, interactions.user_items, metadata
    )
    path = None
    if output is not None:
        t = time.perf_counter()
        path = recommender.save(output, overwrite=overwrite)
        lap("save", t)
        log.info(
            "saved model",
            extra={"event": "save", "path": str(path), "model_version": recommender.model_version,
                   "seconds": timings["save"]},
        )
    timings["total"] = round(time.perf_counter() - started, 4)
    log.info("training done", extra={"event": "done", "model_version": recommender.model_version, **timings})
    return TrainResult(recommender, metrics, report, timings, path)
