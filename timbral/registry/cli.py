"""The registry's part of the ``timbral`` command: ``db``, ``models`` and ``train --register``.

Kept apart from :mod:`timbral.cli`, which only calls :func:`add_commands`,
:func:`add_train_options`, :func:`run` and :func:`register_trained`. Every command
takes ``--database-url`` (default ``$DATABASE_URL``) and ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from timbral.exceptions import RegistryError

if TYPE_CHECKING:
    from timbral.registry.registry import ModelVersion, Registry

__all__ = ["add_commands", "add_train_options", "register_trained", "run", "training_data"]


def _version(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a model version number (1, 2, ...), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a model version number (1, 2, ...), got {text!r}")
    return value


def _database_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", metavar="URL",
                        help="PostgreSQL URL of the registry (default: $DATABASE_URL)")


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 time such as 2024-05-01T00:00:00Z, "
                                         f"got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def add_train_options(train: argparse.ArgumentParser) -> None:
    """``--source`` (train from PostgreSQL) and ``--register`` on ``timbral train``."""
    source = train.add_argument_group("training data from PostgreSQL (instead of DATA)")
    source.add_argument("--source", metavar="URL", help="postgresql:// URL to read interactions from")
    source.add_argument("--table", help="table with user_id, item_id, value, occurred_at "
                                        "(default: timbral_interactions)")
    source.add_argument("--query", help="a SELECT giving those columns, instead of --table")
    source.add_argument("--since", type=_moment, metavar="TIME", help="only interactions at or after TIME")
    source.add_argument("--until", type=_moment, metavar="TIME", help="only interactions before TIME")
    group = train.add_argument_group("model registry (PostgreSQL)")
    group.add_argument("--register", action="store_true",
                       help="upload the trained model to the registry as a staged version")
    group.add_argument("--database-url", metavar="URL", help="registry database (default: $DATABASE_URL)")
    group.add_argument("--model-store", metavar="URL",
                       help="keep the files in object storage, e.g. file:///srv/models or s3://bucket/models "
                            "(default: $TIMBRAL_MODEL_STORE, else inside the database)")


def add_commands(commands: Any) -> None:
    """The ``db`` and ``models`` command groups."""
    db = commands.add_parser("db", help="create or migrate the PostgreSQL schema",
                             description="Apply the schema migrations this timbral ships, in order.")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", parser_class=type(db))
    db_commands.required = True
    for name, text in (("upgrade", "apply pending migrations"), ("status", "list applied and pending migrations")):
        action = db_commands.add_parser(name, help=text)
        _database_option(action)
        action.add_argument("--json", action="store_true")

    models = commands.add_parser("models", help="list, show, promote, roll back or delete registered models")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", parser_class=type(models))
    actions.required = True
    listing = actions.add_parser("list", help="every version, newest first")
    show = actions.add_parser("show", help="one version: parameters, metrics, data, lineage, files")
    show.add_argument("version", type=_version, metavar="VERSION")
    promote = actions.add_parser("promote", help="make VERSION the production model (one transaction)")
    promote.add_argument("version", type=_version, metavar="VERSION")
    rollback = actions.add_parser("rollback", help="put back the previous production model")
    delete = actions.add_parser("delete", help="remove a version that is not in production")
    delete.add_argument("version", type=_version, metavar="VERSION")
    for action in (listing, show, promote, rollback, delete):
        _database_option(action)
        action.add_argument("--json", action="store_true", help="print JSON")


def _open(args: argparse.Namespace, model_store: str | None = None) -> Registry:
    from timbral.registry import Registry

    url = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise RegistryError("no registry database: set DATABASE_URL or pass --database-url "
                            "postgresql://user:password@host:5432/dbname")
    return Registry(url, model_store=model_store)


def _print_json(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY).decode())


def _headline(v: ModelVersion) -> str:
    metrics = ", ".join(f"{name} {value:.4f}" for name, value in list(v.metrics.items())[:2]
                        if isinstance(value, int | float))
    return (f"{v.version:>5}  {v.status:<10}  {v.created_at:%Y-%m-%d %H:%M:%S}  {v.model_version}"
            + (f"  {metrics}" if metrics else ""))


def _show(v: ModelVersion) -> str:
    lines = [f"Model version {v.version} ({v.status}), {v.model_version}",
             f"  created   {v.created_at.isoformat(timespec='seconds')}",
             f"  promoted  {v.promoted_at.isoformat(timespec='seconds') if v.promoted_at else '-'}",
             f"  store     {v.store}"]
    for title, values in (("metrics", v.metrics), ("params", v.params), ("lineage", v.lineage)):
        lines.append(f"  {title}")
        lines.extend(f"    {name:<22} {value}" for name, value in values.items())
    lines.append("  files")
    lines.extend(f"    {name:<22} {f['size']:>12,} B  sha256 {f['sha256']}" for name, f in v.files.items())
    return "\n".join(lines)


def _db(args: argparse.Namespace) -> int:
    from timbral.registry import migrations

    with _open(args) as registry:
        if args.db_command == "upgrade":
            applied = registry.upgrade()
            if args.json:
                _print_json({"applied": [f"{m.version:04d}_{m.name}" for m in applied]})
            else:
                print("\n".join(f"applied {m.version:04d}_{m.name}" for m in applied)
                      or "schema is up to date")
            return 0
        pending = {m.version for m in registry.pending_migrations()}
        rows = [{"migration": f"{m.version:04d}_{m.name}", "applied": m.version not in pending}
                for m in migrations.available()]
        if args.json:
            _print_json(rows)
        else:
            print("\n".join(f"{'applied' if r['applied'] else 'pending':<8} {r['migration']}" for r in rows))
        return 0


def _models(args: argparse.Namespace) -> int:
    with _open(args) as registry:
        action = args.models_command
        if action == "list":
            versions = registry.list()
            if args.json:
                _print_json([v.to_dict() for v in versions])
            else:
                print("\n".join(map(_headline, versions)) or "no models registered yet "
                      "(timbral train DATA --register)")
            return 0
        operations: dict[str, Callable[[], ModelVersion]] = {
            "show": lambda: registry.get(args.version),
            "promote": lambda: registry.promote(args.version),
            "rollback": registry.rollback,
            "delete": lambda: registry.delete(args.version),
        }
        version = operations[action]()
        if args.json:
            _print_json({"action": action, **version.to_dict()})
        elif action == "show":
            print(_show(version))
        else:
            done = {"promote": "is now in production", "rollback": "is back in production",
                    "delete": "was deleted"}[action]
            print(f"Model version {version.version} ({version.model_version}) {done}.")
        return 0


def run(args: argparse.Namespace) -> int:
    """Run a ``db`` or ``models`` command (the exit status)."""
    return _db(args) if args.command == "db" else _models(args)


def training_data(args: argparse.Namespace, scratch: Path) -> str:
    """DATA, or with ``--source`` the interactions exported from PostgreSQL to a Parquet file."""
    if (args.data is None) == (args.source is None):
        raise RegistryError("train needs DATA or --source postgresql://..., exactly one of them")
    if args.source is None:
        if args.table or args.query or args.since or args.until:
            raise RegistryError("--table, --query, --since and --until only apply with --source")
        return args.data
    from timbral.registry.source import export_interactions

    path = scratch / "interactions.parquet"
    export_interactions(args.source, path, table=args.table, query=args.query, since=args.since,
                        until=args.until)
    return str(path)


def _lineage(args: argparse.Namespace) -> dict[str, Any]:
    if args.source is None:
        return {"source": str(args.data)}
    from timbral.registry import redact

    window = [None if t is None else t.isoformat() for t in (args.since, args.until)]
    return {"source": redact(args.source), "table": None if args.query else args.table or "timbral_interactions",
            "query": args.query, "time_range": window}


def register_trained(args: argparse.Namespace, directory: Path) -> ModelVersion:
    """Upload the directory ``timbral train`` just wrote, with its lineage."""
    store = args.model_store or os.environ.get("TIMBRAL_MODEL_STORE") or None
    with _open(args, store) as registry:
        return registry.register(directory, lineage=_lineage(args))
