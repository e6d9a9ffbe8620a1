"""Versioned SQL migrations, shipped as package data and applied in order.

Each file ``migrations/NNNN_name.sql`` is one migration. :func:`upgrade` applies the
ones not yet recorded in ``timbral_schema_migrations``, each in its own transaction
together with its record, under an advisory lock so that replicas starting at the
same time (``TIMBRAL_DB_MIGRATE=true``) apply each migration once. A migration
already applied whose file has since changed is an error, never silently skipped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from timbral.exceptions import RegistryError

__all__ = ["Migration", "applied", "available", "pending", "upgrade"]

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# pg_advisory_xact_lock key: the first 8 bytes of sha256("timbral migrations").
_LOCK_KEY = int.from_bytes(hashlib.sha256(b"timbral migrations").digest()[:8], "big", signed=True)

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS timbral_schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    sha256     text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """Every migration shipped with this timbral, in version order."""
    found = []
    for entry in resources.files("timbral.registry").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def applied(conn: psycopg.Connection) -> dict[int, str]:
    """Version → sha256 of the migrations recorded in this database (empty if none)."""
    exists = conn.execute("SELECT to_regclass('timbral_schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return {}
    return dict(conn.execute("SELECT version, sha256 FROM timbral_schema_migrations").fetchall())


def upgrade(conn: psycopg.Connection) -> list[Migration]:
    """Apply the pending migrations in order; returns those applied (empty when current).

    Raises
    ------
    RegistryError
        If the database records a migration this timbral does not ship (it is newer),
        or one whose file changed after it was applied.
    """
    ours = available()
    done: list[Migration] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        conn.execute(_CREATE_TABLE)
        recorded = applied(conn)
    _check_history(ours, recorded)
    for migration in ours:
        if migration.version in recorded:
            continue
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            if conn.execute("SELECT 1 FROM timbral_schema_migrations WHERE version = %s",
                            (migration.version,)).fetchone():
                continue  # another process applied it while we waited for the lock
            conn.execute(migration.sql.encode())  # bytes: several statements, no parameters
            conn.execute("INSERT INTO timbral_schema_migrations (version, name, sha256) "
                         "VALUES (%s, %s, %s)", (migration.version, migration.name, migration.sha256))
        done.append(migration)
    return done


def _check_history(ours: list[Migration], recorded: dict[int, str]) -> None:
    known = {m.version: m for m in ours}
    newer = sorted(set(recorded) - set(known))
    if newer:
        raise RegistryError(
            f"the database has schema migrations {newer} that this timbral does not ship (it knows "
            f"up to {max(known, default=0)}); upgrade timbral (pip install -U timbral) before using it")
    changed = [v for v, digest in recorded.items() if known[v].sha256 != digest]
    if changed:
        raise RegistryError(
            f"schema migrations {sorted(changed)} were applied from different SQL than this timbral "
            "ships; restore the released migration files instead of editing applied ones")


def pending(conn: psycopg.Connection) -> list[Migration]:
    """The migrations :func:`upgrade` would apply."""
    recorded = applied(conn)
    return [m for m in available() if m.version not in recorded]
