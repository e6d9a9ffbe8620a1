"""The ``timbral`` command: generate data, train, evaluate, recommend, serve.

Exit status: 0 on success, 2 for bad usage or bad input (one line on stderr,
``timbral: error: ...``, saying what to do; never a traceback), 130 on Ctrl-C.
Progress bars appear only when stderr is a terminal. Logs go to stderr: short text
lines on a terminal, JSON lines otherwise (``--log-format`` or ``LOG_FORMAT``
overrides); level INFO when stderr is not a terminal, else WARNING (``--log-level``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import logging
import os
import socket
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson

from timbral._validation import DEFAULT_SEED
from timbral._version import __version__
from timbral.exceptions import ConvergenceWarning, TimbralError
from timbral.logs import LOG_FORMATS, configure_logging
from timbral.nmf.objective import CONFIDENCE_SCALINGS, DEFAULT_CONFIDENCE, DEFAULT_FEEDBACK, FEEDBACK_KINDS
from timbral.registry import cli as registry_cli

__all__ = ["main"]

QUICKSTART_SIZE = {"users": 2_000, "items": 1_000, "interactions": 100_000}


class _UsageError(Exception):
    """A command-line mistake found after parsing (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error that points at ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"timbral: error: {message} (see `{self.prog} --help`)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _number_or_auto(text: str) -> float | str:
    return "auto" if text == "auto" else _non_negative_float(text)


def _components(text: str) -> int | str:
    return "auto" if text == "auto" else _positive_int(text)


def _env_int(name: str, parse: Callable[[str], int]) -> int | None:
    """A training default from the service's environment (NMF_N_COMPONENTS, NMF_RANDOM_STATE)."""
    raw = os.environ.get(name, "")
    if not raw:
        return None
    try:
        return parse(raw)
    except argparse.ArgumentTypeError as exc:
        raise _UsageError(f"environment variable {name}: {exc}; fix or unset it") from None


def _training_defaults_from_env(args: argparse.Namespace) -> None:
    """Fill --components and --seed from the service's NMF_* variables when not given."""
    if getattr(args, "components", 0) is None:
        args.components = _env_int("NMF_N_COMPONENTS", _positive_int)
    if getattr(args, "seed", 0) is None:
        seed = _env_int("NMF_RANDOM_STATE", _non_negative_int)
        args.seed = DEFAULT_SEED if seed is None else seed


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0, got {text!r}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 0..65535, got {text!r}")
    return value


def _model_options(parser: argparse.ArgumentParser) -> None:
    """The options every training command shares: model parameters and how to read the data."""
    model = parser.add_argument_group("model (unset options keep the library defaults)")
    model.add_argument("--components", type=_components, metavar="K",
                       help="latent factors, or 'auto' to choose by validation "
                            "(default: $NMF_N_COMPONENTS, else the model's 50)")
    model.add_argument("--feedback", choices=FEEDBACK_KINDS, default=DEFAULT_FEEDBACK,
                       help="implicit (play counts, default), explicit (ratings) or frobenius")
    model.add_argument("--alpha", type=_number_or_auto,
                       help="confidence slope of implicit feedback, or 'auto' to choose by validation")
    model.add_argument("--confidence", choices=(*CONFIDENCE_SCALINGS, "auto"),
                       help="scaling of play counts before the confidence, or 'auto' (default: auto, "
                            f"{DEFAULT_CONFIDENCE} unless another scaling wins clearly on validation)")
    model.add_argument("--regularization", type=_number_or_auto, metavar="LAMBDA",
                       help="penalty weight, or 'auto' to choose by validation on the training data "
                            "(default: auto)")
    model.add_argument("--frequency-scale", type=_number_or_auto, metavar="NU",
                       help="exponent ν of the frequency-scaled penalty (0 = plain ridge, at most 2), or "
                            "'auto' to choose by validation")
    model.add_argument("--iterations", type=_positive_int, metavar="N", help="maximum epochs")
    model.add_argument("--seed", type=_non_negative_int,
                       help=f"seed of the split and the model (default: $NMF_RANDOM_STATE, else {DEFAULT_SEED})")
    model.add_argument("--threads", type=_non_negative_int, default=0, metavar="N",
                       help="kernel threads, 0 = all available cores (default)")
    data = parser.add_argument_group("data (columns are matched by common names unless given)")
    data.add_argument("--user-col", metavar="NAME")
    data.add_argument("--item-col", metavar="NAME")
    data.add_argument("--rating-col", metavar="NAME", help="play count or rating column")
    data.add_argument("--timestamp-col", metavar="NAME")
    data.add_argument("--sep", metavar="SEP", help=r"field separator of a text file (sniffed by default; '\t' for tab)")
    data.add_argument("--min-user-interactions", type=_non_negative_int, metavar="N",
                      help="drop users with fewer interactions (default 5)")


def _dask_options(parser: argparse.ArgumentParser, what: str, *, required: bool = False) -> None:
    parser.add_argument("--dask", metavar="SCHEDULER", required=required,
                        help=f"{what}: a scheduler address (tcp://host:8786) or local:N for a LocalCluster "
                             "of N worker processes")
    parser.add_argument("--worker-memory", default="auto", metavar="SIZE",
                        help="with --dask local:N: memory limit of each worker, e.g. 4GiB (default: auto)")


@contextlib.contextmanager
def _dask_client(spec: str, worker_memory: str) -> Iterator[Any]:
    """A ``distributed.Client`` for ``--dask``: a scheduler address, or ``local:N`` worker processes."""
    try:
        import distributed
    except ImportError:
        raise _UsageError("--dask needs the distributed package: pip install 'timbral[distributed]'") from None
    if spec.startswith("local:"):
        try:
            n_workers = _positive_int(spec[len("local:"):])
        except argparse.ArgumentTypeError:
            raise _UsageError(
                f"--dask {spec!r}: after 'local:' give a positive number of workers, e.g. local:4"
            ) from None
        with distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                      memory_limit=worker_memory, dashboard_address=":0") as cluster, \
                distributed.Client(cluster) as client:
            yield client
        return
    if "://" not in spec:
        raise _UsageError(f"--dask {spec!r} is neither a scheduler address (tcp://host:8786) nor local:N")
    try:
        client = distributed.Client(spec, timeout="10s")
    except OSError as exc:
        raise _UsageError(
            f"--dask: cannot reach the scheduler at {spec} ({exc}); is `dask scheduler` running?"
        ) from None
    with client:
        yield client


def _evaluation_options(parser: argparse.ArgumentParser, default_fraction: float | None) -> None:
    parser.add_argument("--test-fraction", type=_fraction, default=default_fraction, metavar="F",
                        help=f"share of each user's interactions held out (default {default_fraction})")
    parser.add_argument("-k", type=_positive_int, default=10, help="cut-off of the ranking metrics (10)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``timbral`` command."""
    parser = _Parser(prog="timbral", description="Music recommendations from non-negative matrix factorization.")
    parser.add_argument("--version", action="version", version=f"timbral {__version__}")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help="log level on stderr (INFO when not a terminal, else WARNING)")
    parser.add_argument("--log-format", choices=LOG_FORMATS, type=str.lower,
                        help="log lines on stderr: text or json (default: $LOG_FORMAT, else text "
                             "on a terminal and json otherwise)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    train = commands.add_parser("train", help="train a model and save it to a directory",
                                description="Load, validate, evaluate on a holdout, refit on all data, save.")
    train.add_argument("data", metavar="DATA", nargs="?",
                       help="interactions: CSV/TSV/.dat, Parquet or JSON lines (or --source)")
    train.add_argument("--output", "-o", metavar="DIR", help="model directory to write (needed unless --register)")
    _evaluation_options(train, 0.2)
    train.add_argument("--no-eval", action="store_true", help="skip the holdout evaluation (fit once, on all data)")
    train.add_argument("--json", action="store_true", help="print the summary as JSON")
    train.add_argument("--params", metavar="FILE",
                       help="model parameters written by `timbral tune` (options given here win)")
    _model_options(train)
    _dask_options(train, "fit on a Dask cluster, where the workers read DATA (a Parquet file, "
                  "directory, glob or fsspec URL) and hold the factors; fits once on all the data")
    train.add_argument("--checkpoint", metavar="URL",
                       help="with --dask: directory or fsspec URL every worker can write, for per-epoch "
                            "factor checkpoints (a lost worker then costs at most one epoch)")
    registry_cli.add_train_options(train)

    evaluate = commands.add_parser("evaluate", help="measure a model on a held-out split",
                                   description="Split, fit on the training part, print held-out metrics.")
    evaluate.add_argument("data", metavar="DATA")
    _evaluation_options(evaluate, 0.2)
    evaluate.add_argument("--json", action="store_true", help="print metrics as JSON")
    evaluate.add_argument("--report", metavar="DIR",
                          help="also write an HTML report with figures to DIR (needs matplotlib)")
    _model_options(evaluate)

    tune = commands.add_parser(
        "tune", help="choose model parameters by validation and write them to a file",
        description="Hold out part of each user's interactions, search λ (a warm-started path), the "
                    "confidence scaling and the number of components, print the validation table and "
                    "write the best setting for `timbral train --params`. Options given fix a parameter.")
    tune.add_argument("data", metavar="DATA")
    tune.add_argument("--output", "-o", default="timbral-params.json", metavar="FILE",
                      help="parameter file to write (default: %(default)s)")
    tune.add_argument("--json", action="store_true", help="print the search as JSON")
    _model_options(tune)

    recommend = commands.add_parser("recommend", help="recommend items to a user from a model directory")
    recommend.add_argument("model", metavar="DIR", help="model directory written by `timbral train`")
    recommend.add_argument("user_id", metavar="USER_ID")
    recommend.add_argument("-k", type=_positive_int, default=10, help="number of items (10)")
    recommend.add_argument("--include-seen", action="store_true", help="allow items the user already played")
    recommend.add_argument("--json", action="store_true")

    recommend_all = commands.add_parser(
        "recommend-all", help="write every user's top-k as partitioned Parquet, scored on a Dask cluster")
    recommend_all.add_argument("model", metavar="DIR", help="model directory every worker can read")
    recommend_all.add_argument("--output", "-o", required=True, metavar="OUT",
                               help="directory or fsspec URL to create (user_id, rank, item_id, score)")
    recommend_all.add_argument("-k", type=_positive_int, default=10, help="items per user (10)")
    recommend_all.add_argument("--partitions", type=_positive_int, metavar="N",
                               help="output files (default: four per worker thread)")
    recommend_all.add_argument("--prewarm-redis", action="store_true",
                               help="also store every answer in the service's Redis under its cache keys: "
                                    "REDIS_URL and CACHE_TTL_SECONDS from the environment, as the service "
                                    "reads them (no password on the command line)")
    _dask_options(recommend_all, "the cluster that scores", required=True)

    generate = commands.add_parser("generate", help="write synthetic music-like interactions",
                                   description="Heavy-tailed popularity and activity, taste clusters, play counts.")
    generate.add_argument("output", metavar="OUT", help="file to write: .parquet, .csv or .tsv "
                          "(with --partitions: a directory to create)")
    generate.add_argument("--users", type=_positive_int, default=10_000)
    generate.add_argument("--items", type=_positive_int, default=5_000)
    generate.add_argument("--interactions", type=_positive_int, default=500_000)
    generate.add_argument("--seed", type=_non_negative_int, default=0)
    generate.add_argument("--partitions", type=_positive_int, metavar="N",
                          help="write a directory of N Parquet files (any size, in bounded memory)")

    serve = commands.add_parser("serve", help="serve a model over HTTP")
    serve.add_argument("--model", metavar="DIR", help="model directory (default: $TIMBRAL_MODEL_DIR)")
    serve.add_argument("--host", help="bind address (default: $API_HOST or 0.0.0.0)")
    serve.add_argument("--port", type=_port, help="port (default: $API_PORT or 8001)")

    quick = commands.add_parser("quickstart", help="generate sample data, train it and serve it (no Redis)")
    quick.add_argument("--dir", metavar="DIR", help="working directory (default: a timbral cache directory)")
    quick.add_argument("--users", type=_positive_int, default=QUICKSTART_SIZE["users"])
    quick.add_argument("--items", type=_positive_int, default=QUICKSTART_SIZE["items"])
    quick.add_argument("--interactions", type=_positive_int, default=QUICKSTART_SIZE["interactions"])
    quick.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1)")
    quick.add_argument("--port", type=_port, default=8001, help="port (8001; 0 picks a free one)")
    quick.add_argument("--no-serve", action="store_true", help="stop after training")
    _model_options(quick)
    registry_cli.add_commands(commands)
    return parser


# -- helpers ------------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")


def _load_options(args: argparse.Namespace) -> dict[str, Any]:
    sep = args.sep.encode().decode("unicode_escape") if args.sep else None  # "\t" typed as two characters
    options = {
        "user_col": args.user_col,
        "item_col": args.item_col,
        "rating_col": args.rating_col,
        "timestamp_col": args.timestamp_col,
        "sep": sep,
        "min_user_interactions": args.min_user_interactions,
    }
    return {key: value for key, value in options.items() if value is not None}


def _estimator(args: argparse.Namespace, *, n_threads: int, defaults: dict[str, Any] | None = None) -> Any:
    """The NMFModel the model options describe: options given win, then ``defaults``, then the model's own."""
    from timbral.nmf import NMFModel

    given = {"n_components": args.components, "alpha": args.alpha, "confidence": args.confidence,
             "regularization": args.regularization, "frequency_scale": args.frequency_scale,
             "max_iter": args.iterations, "random_state": args.seed}
    params = dict(defaults or {}) | {name: value for name, value in given.items() if value is not None}
    return NMFModel(feedback=args.feedback, n_threads=n_threads, **params)


def _train(args: argparse.Namespace, data: str | Path, output: str | Path | None, *,
           test_fraction: float | None, k: int, refit: bool, progress: bool) -> Any:
    from timbral.train import train

    return train(
        data,
        output,
        model=_estimator(args, n_threads=args.threads),
        seed=args.seed,
        test_fraction=test_fraction,
        k=k,
        refit=refit,
        load_options=_load_options(args),
        progress=progress,
    )


def _metrics_table(metrics: dict[str, float]) -> str:
    width = max((len(name) for name in metrics), default=0)
    return "\n".join(f"  {name:<{width}}  {value:.4f}" for name, value in metrics.items())


def _summary(result: Any) -> dict[str, Any]:
    rec = result.recommender
    return {
        "model_version": rec.model_version,
        "path": None if result.path is None else str(result.path),
        "n_users": rec.n_users,
        "n_items": rec.n_items,
        "nnz": int(rec.user_items.nnz),
        "n_components": int(rec.model.item_factors_.shape[1]),
        "n_iter": int(rec.model.n_iter_),
        "metrics": result.metrics,
        "evaluation": rec.metadata.get("evaluation"),
        "timings": result.timings,
    }


def _describe_training(result: Any) -> str:
    s = _summary(result)
    lines = [
        f"Trained on {s['n_users']:,} users × {s['n_items']:,} items ({s['nnz']:,} interactions): "
        f"{s['n_components']} components, {s['n_iter']} iterations, {s['timings']['total']:.1f} s.",
    ]
    if s["metrics"]:
        ev = s["evaluation"]
        lines.append(f"Held-out metrics ({ev['test_fraction']:.0%} of each user's interactions, "
                     f"seed {ev['seed']}; final model {ev['final_model']}):")
        lines.append(_metrics_table(s["metrics"]))
    if s["path"]:
        lines.append(f"Model {s['model_version']} saved to {s['path']}")
    return "\n".join(lines)


#: What a parameter file of `timbral tune` may set, by the option that sets it too.
PARAMS_FILE_KEYS = {"n_components": "components", "confidence": "confidence", "alpha": "alpha",
                    "regularization": "regularization", "frequency_scale": "frequency_scale"}
#: A parameter file is a few hundred bytes; refuse anything that cannot be one.
PARAMS_FILE_MAX_BYTES = 1 << 20


def _apply_params_file(args: argparse.Namespace) -> None:
    """Fill the model options not given on the command line from ``--params FILE``."""
    path = getattr(args, "params", None)
    if path is None:
        return
    how = "write one with `timbral tune DATA --output FILE`"
    try:
        if os.path.getsize(path) > PARAMS_FILE_MAX_BYTES:
            raise _UsageError(f"--params {path!r} is larger than {PARAMS_FILE_MAX_BYTES} bytes; it is not a "
                              f"parameter file ({how})")
        with open(path, "rb") as handle:
            document = orjson.loads(handle.read())
    except orjson.JSONDecodeError as exc:
        raise _UsageError(f"--params {path!r} is not JSON ({exc}); {how}") from None
    except OSError as exc:
        raise _UsageError(f"cannot read --params {path!r} ({exc.strerror or exc}); {how}") from None
    params = document.get("params") if isinstance(document, dict) else None
    if not isinstance(params, dict):
        raise _UsageError(f"--params {path!r} has no \"params\" object; {how}")
    unknown = sorted(set(params) - set(PARAMS_FILE_KEYS) - {"feedback"})
    if unknown:
        raise _UsageError(f"--params {path!r} sets unknown parameter(s) {', '.join(map(repr, unknown))}; "
                          f"expected some of {', '.join(PARAMS_FILE_KEYS)} ({how})")
    from timbral.nmf import NMFModel

    try:
        NMFModel(**params).check_params()
    except TimbralError as exc:
        raise _UsageError(f"--params {path!r}: {exc} Fix the file or tune again") from None
    feedback = params.get("feedback", args.feedback)
    if feedback != args.feedback:
        raise _UsageError(f"--params {path!r} was tuned for --feedback {feedback!r}, but this run uses "
                          f"{args.feedback!r}; pass --feedback {feedback} or tune again")
    for name, option in PARAMS_FILE_KEYS.items():
        if name in params and getattr(args, option) is None:
            setattr(args, option, params[name])


def _search_table(table: list[dict[str, Any]], metric: str) -> str:
    """The validation table: one line per setting, the chosen one marked ``*`` and the
    screens (short fits that only decide whether a scaling or ν gets a path) ``s``."""
    head = (f"    {'k':>4}  {'confidence':<10}  {'alpha':>6}  {'lambda':>10}  {'nu':>4}  {metric:>8}  {'epochs':>6}  "
            f"{'seconds':>7}")
    lines = [head]
    for row in table:
        confidence = row["confidence"] or "-"
        alpha = "-" if row["alpha"] is None else f"{row['alpha']:g}"
        mark = "*" if row["chosen"] else "s" if row.get("screen") else " "
        lines.append(f"{mark:>3} {row['n_components']:>4}  {confidence:<10}  {alpha:>6}  "
                     f"{row['regularization']:>10.4g}  {row['frequency_scale']:>4g}  {row[metric]:>8.4f}  "
                     f"{row['n_iter']:>6}  "
                     f"{row['seconds']:>7.2f}")
    return "\n".join(lines)


# -- commands -----------------------------------------------------------------------------


def _cmd_train_dask(args: argparse.Namespace) -> int:
    from timbral.dask import CleaningRules, fit

    if args.output is None:
        raise _UsageError("train --dask needs --output DIR: the model directory the workers write "
                          "(on storage every worker can reach)")
    model = _estimator(args, n_threads=1)
    rules = CleaningRules(feedback=args.feedback, min_user_interactions=(
        5 if args.min_user_interactions is None else args.min_user_interactions))
    with _dask_client(args.dask, args.worker_memory) as client:
        result = fit(model, args.data, client, user_col=args.user_col or "user_id",
                     item_col=args.item_col or "item_id", rating_col=args.rating_col, rules=rules,
                     checkpoint=args.checkpoint, output=args.output)  # the workers write the model
    path = args.output
    summary = {"path": str(path), "n_users": result.report.n_users, "n_items": result.report.n_items,
               "nnz": result.report.nnz, "n_iter": result.n_iter, "model_version": result.model_version,
               "seconds_per_epoch": sum(result.epoch_seconds) / len(result.epoch_seconds),
               "bytes_per_epoch": result.bytes_per_epoch}
    if args.json:
        _print_json(summary)
    else:
        print(f"Trained on Dask: {summary['n_users']:,} users × {summary['n_items']:,} items "
              f"({summary['nnz']:,} interactions), {summary['n_iter']} iterations, "
              f"{summary['seconds_per_epoch']:.2f} s per epoch. Model saved to {path}")
    return 0


def _cmd_recommend_all(args: argparse.Namespace) -> int:
    from timbral.dask import recommend_all

    redis_url, ttl = None, None
    if args.prewarm_redis:
        redis_url = os.environ.get("REDIS_URL")
        if not redis_url:
            raise _UsageError("--prewarm-redis reads the service's REDIS_URL from the environment; it is not set")
        ttl = _float_env("CACHE_TTL_SECONDS")
    with _dask_client(args.dask, args.worker_memory) as client:
        summary = recommend_all(args.model, client, args.k, args.output, n_partitions=args.partitions,
                                redis_url=redis_url, redis_ttl_seconds=ttl)
    print(f"Wrote the top {summary.k} of {summary.n_users:,} users ({summary.n_rows:,} rows, model "
          f"{summary.model_version}) to {summary.output} in {len(summary.files)} files.")
    return 0


def _float_env(name: str) -> float | None:
    """A number from the environment (None when unset), refused with the variable's name."""
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise _UsageError(f"{name}={value!r} is not a number of seconds; set it like the service's, e.g. 300") from None


def _cmd_tune(args: argparse.Namespace, progress: bool) -> int:
    from timbral._validation import check_user_items
    from timbral.data import load_interactions
    from timbral.tuning import search

    # Unlike a plain fit, tuning searches the confidence, ν and the number of components unless given.
    model = _estimator(args, n_threads=args.threads,
                       defaults={"n_components": "auto", "confidence": "auto", "regularization": "auto",
                                 "frequency_scale": "auto"})
    model.check_params()
    params = model.get_params()
    interactions = load_interactions(args.data, feedback=args.feedback, progress=progress, **_load_options(args))
    found = search(check_user_items(interactions.user_items), params, show_progress=progress)
    chosen = {name: params[name] for name in PARAMS_FILE_KEYS} | found.params
    if args.feedback != "implicit":
        chosen = {name: value for name, value in chosen.items() if name not in ("confidence", "alpha")}
    document = {
        "params": {"feedback": args.feedback, **chosen},
        "search": {"metric": found.metric, "sample_users": found.sample_users, "n_users": found.n_users,
                   "seconds": round(found.seconds, 3), "table": found.table},
        "data": str(args.data),
    }
    Path(args.output).write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n")
    if args.json:
        _print_json(document | {"output": str(args.output)})
        return 0
    sampled = "" if found.sample_users == found.n_users else f" (a sample of {found.sample_users:,} users)"
    print(f"Validation on {found.n_users:,} users{sampled}, {found.seconds:.1f} s; * = chosen, "
          "s = a screen (a short fit deciding whether that scaling or ν gets a whole path):")
    print(_search_table(found.table, found.metric) if found.table else
          "  no user has enough interactions to hold some out: defaults kept")
    print(f"Chosen: {', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in chosen.items())}")
    print(f"Written to {args.output}; use it with: timbral train DATA --params {args.output} --output DIR")
    return 0


def _cmd_train(args: argparse.Namespace, progress: bool) -> int:
    if args.dask is not None:
        return _cmd_train_dask(args)
    if args.output is None and not args.register:
        raise _UsageError("train needs --output DIR, --register, or both (see `timbral train --help`)")
    with tempfile.TemporaryDirectory(prefix="timbral-train-") as scratch:
        data = registry_cli.training_data(args, Path(scratch))
        output = args.output or Path(scratch) / "model"  # --register alone: upload, then forget
        result = _train(args, data, output, test_fraction=None if args.no_eval else args.test_fraction,
                        k=args.k, refit=True, progress=progress)
        registered = registry_cli.register_trained(args, result.path) if args.register else None
        if args.output is None:
            result.path = None
    if args.json:
        _print_json({**_summary(result), "registry_version": registered.version if registered else None})
    else:
        print(_describe_training(result))
        if registered is not None:
            print(f"Registered as model version {registered.version} (staged); "
                  f"promote it with `timbral models promote {registered.version}`")
    return 0


def _report_numbers(args: argparse.Namespace, data: Any, model: Any) -> dict[str, Any]:
    """The report's numbers for ``model``, on the split ``train`` evaluated it on, and its HTML page."""
    from timbral.report import evaluation_numbers, write_report
    from timbral.split import random_split

    # The same function, fraction and seed as timbral.train's evaluation split.
    train_part, test_part = random_split(data, test_fraction=args.test_fraction, seed=args.seed)
    numbers = evaluation_numbers(model, train_part, test_part)
    numbers["path"] = str(write_report(numbers, args.report, title=f"Timbral evaluation of {args.data}"))
    return numbers


def _cmd_evaluate(args: argparse.Namespace, progress: bool) -> int:
    data: Any = args.data
    if args.report is not None:
        if importlib.util.find_spec("matplotlib") is None:
            raise _UsageError("--report draws its figures with matplotlib, which is not installed; "
                              "pip install 'timbral[report]'")
        from timbral.data import load_interactions

        data = load_interactions(args.data, feedback=args.feedback, progress=progress, **_load_options(args))
    result = _train(args, data, None, test_fraction=args.test_fraction, k=args.k, refit=False,
                    progress=progress)
    report = None if args.report is None else _report_numbers(args, data, result.recommender.model)
    if args.json:
        summary = _summary(result)
        summary.pop("path")
        summary["params"] = result.recommender.model.get_params()
        summary["data"] = result.report.to_dict()
        if report is not None:
            summary["report"] = report
        _print_json(summary)
    else:
        rec = result.recommender
        print(f"{rec.n_users:,} users × {rec.n_items:,} items, {rec.user_items.nnz:,} interactions; "
              f"{args.test_fraction:.0%} of each user's interactions held out (seed {args.seed}):")
        print(_metrics_table(result.metrics))
        if report is not None:
            print(f"Report: {report['path']}")
    return 0


def _cmd_recommend(args: argparse.Namespace) -> int:
    from timbral.recommender import Recommender

    rec = Recommender.load(args.model)
    out = rec.recommend(args.user_id, args.k, exclude_seen=not args.include_seen)
    if args.json:
        _print_json({**out.to_dict(), "model_version": rec.model_version})
        return 0
    note = {"nmf": "", "popularity": " (unknown user: most popular items)", "fold_in": ""}[out.strategy]
    print(f"Top {len(out.items)} for user {out.user_id}{note}, model {rec.model_version}:")
    width = max((len(str(item)) for item, _ in out.items), default=7)
    for rank, (item, score) in enumerate(out.items, 1):
        print(f"  {rank:>3}  {item!s:<{width}}  {score:.4f}")
    return 0


def _cmd_generate(args: argparse.Namespace, progress: bool) -> int:
    from timbral.generate import write_interactions, write_partitioned

    if args.partitions is not None:
        summary = write_partitioned(args.output, args.users, args.items, args.interactions, args.seed,
                                    n_partitions=args.partitions, progress=progress)
    else:
        summary = write_interactions(args.output, args.users, args.items, args.interactions, args.seed,
                                     progress=progress)
    print(f"Wrote {summary.n_rows:,} interactions ({summary.n_users:,} users × {summary.n_items:,} items, "
          f"seed {args.seed}) to {summary.path} ({summary.format}) in {summary.seconds:.1f} s.")
    return 0


def _server() -> tuple[Any, Any]:
    """``timbral.server.config.Config`` and ``timbral.server.__main__.run``, imported on first use."""
    try:
        from timbral.server.__main__ import run
        from timbral.server.config import Config
    except ImportError as exc:
        raise _UsageError(
            f"the HTTP server is not available ({exc}); install timbral with its service "
            "dependencies (pip install timbral) from a full source tree"
        ) from None
    return Config, run


def _free_port(host: str) -> int:
    """A port the OS reports free on ``host`` now (for ``--port 0``)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _server_config(overrides: dict[str, Any], *, no_redis: bool = False) -> Any:
    """Config from the environment, then the command line's overrides."""
    config_type, _ = _server()
    env = dict(os.environ)
    if no_redis:
        env.pop("REDIS_URL", None)
    try:
        config = config_type.from_env(env)
        return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:  # timbral.server.config.ConfigError
        raise _UsageError(" ".join(str(exc).split())) from None


def _cmd_serve(args: argparse.Namespace) -> int:
    model = None
    if args.model is not None:
        model = Path(args.model)
        if not model.is_dir():
            raise _UsageError(f"--model {args.model!r} is not a directory; pass the --output of `timbral train`")
    config = _server_config({"model_dir": model, "api_host": args.host, "api_port": args.port,
                             "log_format": args.log_format})
    _, run = _server()
    run(config)
    return 0


def _default_quickstart_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "timbral" / "quickstart"


def _cmd_quickstart(args: argparse.Namespace, progress: bool) -> int:
    from timbral.generate import write_interactions

    workdir = Path(args.dir) if args.dir else _default_quickstart_dir()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError:
        workdir = Path(tempfile.mkdtemp(prefix="timbral-quickstart-"))
    data, model_dir = workdir / "plays.parquet", workdir / "model"
    summary = write_interactions(data, args.users, args.items, args.interactions, args.seed, progress=progress)
    print(f"1. Generated {summary.n_rows:,} plays by {args.users:,} listeners of {args.items:,} artists "
          f"(heavy-tailed popularity, taste clusters) -> {data}")
    result = _train(args, data, model_dir, test_fraction=0.2, k=10, refit=True, progress=progress)
    print("2. " + _describe_training(result).replace("\n", "\n   "))
    rec = result.recommender
    user, item = rec.user_map.external(0), rec.item_map.external(int(rec.item_popularity.argmax()))
    port = args.port or _free_port(args.host)
    base = f"http://{'localhost' if args.host in ('0.0.0.0', '127.0.0.1') else args.host}:{port}"
    print(
        "3. Try it (in another terminal) once the server below is up:\n"
        f"   curl '{base}/api/v1/recommendations/{user}?k=5'\n"
        f"   curl -X POST {base}/api/v1/recommendations -H 'Content-Type: application/json' "
        f"-d '{{\"user_id\": \"new-listener\", \"items\": [{item}], \"k\": 5}}'\n"
        f"   curl '{base}/api/v1/similar/{item}?k=5'\n"
        f"   curl '{base}/api/v1/explain/{user}/{item}'\n"
        f"   curl {base}/api/v1/health      curl {base}/metrics\n"
        f"   Or from Python: timbral.Recommender.load({str(model_dir)!r}).recommend({user!r})"
    )
    if args.no_serve:
        print(f"   Serve it later with: timbral serve --model {model_dir}")
        return 0
    config = _server_config({"model_dir": model_dir, "api_host": args.host, "api_port": port,
                             "log_format": args.log_format}, no_redis=True)
    print(f"4. Serving on {base} with the in-process cache (no Redis); Ctrl-C stops.", flush=True)
    _, run = _server()
    run(config)
    return 0


# -- entry point ------------------------------------------------------------------------


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    """Warnings as one plain line on a terminal, else as a JSON log event."""
    if sys.stderr.isatty():
        print(f"timbral: warning: {message}", file=sys.stderr)
    else:
        logging.getLogger("timbral").warning(str(message), extra={"category": category.__name__})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``timbral`` command; returns the exit status (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return int(exc.code or 0)
    interactive = sys.stderr.isatty()
    args.log_format = args.log_format or os.environ.get("LOG_FORMAT", "").strip().lower() or (
        "text" if interactive else "json")
    try:
        handler = configure_logging(args.log_level or ("WARNING" if interactive else "INFO"),
                                    log_format=args.log_format)
    except TimbralError as exc:  # LOG_FORMAT names no format
        print(f"timbral: error: environment variable LOG_FORMAT: {exc}; fix or unset it", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():
            # A model that hit max_iter is still a model: report it, don't fail the command.
            warnings.simplefilter("always", ConvergenceWarning)
            warnings.showwarning = _show_warning
            _apply_params_file(args)
            _training_defaults_from_env(args)
            if args.command == "train":
                return _cmd_train(args, interactive)
            if args.command == "evaluate":
                return _cmd_evaluate(args, interactive)
            if args.command == "recommend":
                return _cmd_recommend(args)
            if args.command == "recommend-all":
                return _cmd_recommend_all(args)
            if args.command == "generate":
                return _cmd_generate(args, interactive)
            if args.command == "tune":
                return _cmd_tune(args, interactive)
            if args.command == "serve":
                return _cmd_serve(args)
            if args.command == "quickstart":
                return _cmd_quickstart(args, interactive)
            return registry_cli.run(args)
    except (TimbralError, OSError, _UsageError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"timbral: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("timbral: interrupted", file=sys.stderr)
        return 130
    finally:
        logging.getLogger().removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
