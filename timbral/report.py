"""An evaluation report to look at: one HTML page with PNG figures, and the same numbers as a dict.

:func:`evaluation_numbers` measures a model fitted on ``train`` against the held-out
``test`` (training items excluded, as everywhere in :mod:`timbral.metrics`):

- precision, recall and NDCG at k = 1 … ``max_k``, for the model and for the
  popularity baseline (the most played items the user has not played);
- the validation curve of the hyperparameter search (``search_results_``);
- the training loss per epoch (``loss_history_``);
- NDCG@10 by user activity: light, medium and heavy users are the thirds of the
  evaluated users ranked by number of training interactions;
- popularity bias at 10: the share of recommendations taken from the 1 % most
  played items, and catalogue coverage.

:func:`write_report` draws them with matplotlib (Agg backend, no display needed):
``pip install 'timbral[report]'``.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from timbral.metrics import popularity_top_k, ranking_scores

__all__ = ["evaluation_numbers", "write_report"]

#: Cut-off of the single-number summaries (by activity, popularity bias).
K = 10
#: Share of the catalogue that counts as "most played" for the popularity bias.
HEAD_SHARE = 0.01
_BATCH = 1024
_CURVES = ("precision", "recall", "ndcg")


def evaluation_numbers(model: Any, train: sp.csr_matrix, test: sp.csr_matrix, *, max_k: int = 50) -> dict[str, Any]:
    """Every number of the report, JSON-ready.

    Parameters
    ----------
    model : NMFModel
        Fitted on ``train`` (its ``recommend_batch`` excludes the training items).
    train, test : csr_matrix of shape (n_users, n_items)
        The split the model was fitted and is evaluated on.
    max_k : int, default=50
        Longest list of the metric@k curves.

    Returns
    -------
    dict
        ``k``, ``curves`` ({"model"|"popularity": {metric: [value at each k]}}),
        ``validation`` (the search table or None), ``loss`` (per epoch),
        ``activity`` (per bucket: label, users, range of training interactions,
        NDCG@10 of both), ``popularity_bias`` (head share and coverage of both),
        ``n_users`` evaluated.
    """
    train, test = sp.csr_matrix(train), sp.csr_matrix(test)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    plays = np.bincount(train.indices, minlength=train.shape[1])
    lists = {
        "model": _model_top_k(model, users, max_k),
        "popularity": popularity_top_k(train, users, max_k),
    }
    ks = list(range(1, max_k + 1))
    curves = {
        name: {metric: [ranking_scores(rec[:, :k], test, users)[metric] for k in ks] for metric in _CURVES}
        for name, rec in lists.items()
    }
    activity = np.diff(train.indptr)[users]
    rank = np.empty(users.size, dtype=np.int64)
    rank[np.argsort(activity, kind="stable")] = np.arange(users.size)
    bucket = rank * 3 // max(users.size, 1)  # equal thirds by activity rank (ties split by user index)
    buckets = []
    for index, label in enumerate(("light", "medium", "heavy")):
        members = bucket == index
        row: dict[str, Any] = {"bucket": label, "users": int(members.sum())}
        if members.any():
            row["interactions"] = [int(activity[members].min()), int(activity[members].max())]
        for name, rec in lists.items():
            row[name] = ranking_scores(rec[members, :K], test, users[members])["ndcg"] if members.any() else None
        buckets.append(row)
    head = np.argsort(-plays, kind="stable")[: max(1, math.ceil(HEAD_SHARE * train.shape[1]))]
    bias = {}
    for name, rec in lists.items():
        shown = rec[:, :K][rec[:, :K] >= 0]
        bias[name] = {
            "head_share": float(np.isin(shown, head).mean()) if shown.size else 0.0,
            "coverage": float(np.unique(shown).size / train.shape[1]),
        }
    return {
        "k": ks,
        "n_users": int(users.size),
        "curves": curves,
        "validation": getattr(model, "search_results_", None),
        "loss": [float(x) for x in getattr(model, "loss_history_", [])],
        "activity": buckets,
        "popularity_bias": {"head_items": int(head.size), "k": K, **bias},
    }


def write_report(numbers: dict[str, Any], directory: str | Path, *, title: str = "Timbral evaluation") -> Path:
    """Write ``index.html`` and its PNG figures for ``evaluation_numbers``'s output; return the page's path."""
    plt = _pyplot()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sections = []

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric in zip(axes, _CURVES, strict=True):
        for name, style in (("model", "-"), ("popularity", "--")):
            ax.plot(numbers["k"], numbers["curves"][name][metric], style, label=name)
        ax.set(title=f"{metric}@k", xlabel="k")
        ax.grid(alpha=0.3)
    axes[0].legend()
    sections.append(_figure(plt, fig, directory, "metrics_at_k.png", "Metrics at k against the popularity baseline",
                            _curve_table(numbers)))

    table = numbers["validation"]
    if table:
        metric = next(key for key in ("ndcg@10", "rmse") if key in table[0])
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
        for row in table:
            groups.setdefault((row["n_components"], row["confidence"], row["alpha"]), []).append(row)
        for (k, confidence, alpha), rows in groups.items():
            rows = sorted(rows, key=lambda r: r["regularization"])  # the refining point joins its path
            label = f"k={k}" + ("" if confidence is None else f", {confidence}, α={alpha:g}")
            ax.plot([r["regularization"] for r in rows], [r[metric] for r in rows], "o-", label=label)
        chosen = next(row for row in table if row["chosen"])
        ax.plot([chosen["regularization"]], [chosen[metric]], "k*", markersize=14, label="chosen")
        ax.set(xscale="log", xlabel="λ (regularization)", ylabel=f"validation {metric}",
               title="Validation curve of the search")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        sections.append(_figure(plt, fig, directory, "validation.png", "Hyperparameter search",
                                f"<p>{len(table)} settings tried on a split of the training data; chosen: "
                                f"{html.escape(_setting(chosen))}.</p>"))
    else:
        sections.append("<h2>Hyperparameter search</h2><p>No search ran: every parameter was given.</p>")

    if numbers["loss"]:
        fig, ax = plt.subplots(figsize=(6.5, 3.4))
        ax.plot(range(1, len(numbers["loss"]) + 1), numbers["loss"], ".-")
        ax.set(xlabel="epoch", ylabel="objective", title="Training loss per epoch")
        ax.grid(alpha=0.3)
        sections.append(_figure(plt, fig, directory, "loss.png", "Training loss", ""))

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    labels = [f"{b['bucket']}\n({b['users']} users)" for b in numbers["activity"]]
    x = np.arange(len(labels))
    for offset, name in ((-0.2, "model"), (0.2, "popularity")):
        left.bar(x + offset, [b[name] or 0.0 for b in numbers["activity"]], 0.4, label=name)
    left.set(xticks=x, xticklabels=labels, ylabel=f"NDCG@{K}", title="By user activity")
    left.legend()
    bias = numbers["popularity_bias"]
    x = np.arange(2)
    for offset, name in ((-0.2, "model"), (0.2, "popularity")):
        right.bar(x + offset, [bias[name]["head_share"], bias[name]["coverage"]], 0.4, label=name)
    right.set(xticks=x, xticklabels=[f"from top {HEAD_SHARE:.0%} items", "catalogue coverage"],
              title=f"Popularity bias at {K}")
    sections.append(_figure(plt, fig, directory, "users_and_popularity.png", "Who is served, and with what",
                            _bucket_table(numbers)))

    page = directory / "index.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{numbers['n_users']} users evaluated on held-out interactions "
        "(their training items excluded).</p>" + "".join(sections) + "</body></html>\n",
        encoding="utf-8",
    )
    return page


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the evaluation report draws with matplotlib: pip install 'timbral[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(plt: Any, fig: Any, directory: Path, name: str, heading: str, body: str) -> str:
    fig.tight_layout()
    fig.savefig(directory / name, dpi=110)
    plt.close(fig)
    return f"<h2>{html.escape(heading)}</h2><img src='{name}' alt='{html.escape(heading)}'>{body}"


def _setting(row: dict[str, Any]) -> str:
    parts = [f"k={row['n_components']}", f"λ={row['regularization']:.4g}"]
    if row.get("confidence") is not None:
        parts += [f"confidence={row['confidence']}", f"α={row['alpha']:g}"]
    return ", ".join(parts)


def _curve_table(numbers: dict[str, Any]) -> str:
    rows = []
    for k in (1, 5, 10, 20, 50):
        if k > len(numbers["k"]):
            continue
        cells = "".join(f"<td>{numbers['curves'][name][m][k - 1]:.4f}</td>"
                        for name in ("model", "popularity") for m in _CURVES)
        rows.append(f"<tr><th>{k}</th>{cells}</tr>")
    head = "".join(f"<th>{name} {m}</th>" for name in ("model", "popularity") for m in _CURVES)
    return f"<table><tr><th>k</th>{head}</tr>{''.join(rows)}</table>"


def _bucket_table(numbers: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{b['bucket']}</th><td>{b['users']}</td><td>{'–'.join(map(str, b.get('interactions', [])))}</td>"
        f"<td>{_fmt(b['model'])}</td><td>{_fmt(b['popularity'])}</td></tr>"
        for b in numbers["activity"]
    )
    bias = numbers["popularity_bias"]
    return (
        f"<table><tr><th>users</th><th>count</th><th>training interactions</th><th>model NDCG@{K}</th>"
        f"<th>popularity NDCG@{K}</th></tr>{rows}</table><p>Top {bias['head_items']} items: "
        f"{bias['model']['head_share']:.1%} of the model's recommendations "
        f"({bias['popularity']['head_share']:.1%} for popularity); catalogue coverage "
        f"{bias['model']['coverage']:.1%} ({bias['popularity']['coverage']:.1%}).</p>"
    )


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _model_top_k(model: Any, users: NDArray[np.int64], k: int) -> NDArray[np.int64]:
    out = np.full((users.size, k), -1, dtype=np.int64)
    for start in range(0, users.size, _BATCH):
        ids, _ = model.recommend_batch(users[start : start + _BATCH], k, exclude_seen=True)
        out[start : start + ids.shape[0], : ids.shape[1]] = ids
    return out
