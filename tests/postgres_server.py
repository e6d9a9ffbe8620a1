"""Start and stop a real, throwaway PostgreSQL server for the tests.

The binaries are looked up in this order: ``initdb`` and ``postgres`` on PATH, then
the newest ``/usr/lib/postgresql/<major>/bin`` (Debian's ``postgresql`` package, which
``scripts/test`` installs when it runs as root). ``initdb`` refuses to run as root, so
as root the cluster is created and run as the ``postgres`` user (else ``nobody``):
the processes are exec'ed under that uid directly (no ``runuser`` in between), so a
signal sent to the server reaches the postmaster itself. The cluster lives in a temporary directory, listens on a free
loopback port, trusts local connections, and skips fsync: it exists for one session.
Tests never fake PostgreSQL and never stand SQLite in for it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from redis_server import free_port

INSTALL_HINT = ("install PostgreSQL's server binaries (apt-get install postgresql, which provides "
                "/usr/lib/postgresql/<major>/bin/initdb) or set DATABASE_URL to a server where the "
                "tests may create databases")


def postgres_bindir() -> Path | None:
    """The directory holding ``initdb``, ``postgres`` and ``pg_ctl``, or None."""
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return candidates[-1].parent if candidates else None


def _run_as() -> str | None:
    """The unprivileged user to run the server as when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists; "
                       "initdb refuses to run as root")


class PostgresProcess:
    """One PostgreSQL cluster: initdb once, then start/stop (and kill) on a fixed port."""

    def __init__(self, bindir: Path, port: int | None = None) -> None:
        self.bindir = bindir
        self.port = port or free_port()
        self.user = _run_as()
        self._tmp = tempfile.TemporaryDirectory(prefix="timbral-postgres-")
        self.root = Path(self._tmp.name)
        self.data = self.root / "data"
        self._process: subprocess.Popen[bytes] | None = None
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._command(["initdb", "-D", str(self.data), "-U", "timbral", "--auth=trust",
                       "-E", "UTF8", "--no-sync"], check=True)

    @property
    def url(self) -> str:
        return f"postgresql://timbral@127.0.0.1:{self.port}/postgres"

    def _argv(self, argv: list[str]) -> list[str]:
        return [str(self.bindir / argv[0]), *argv[1:]]

    def _identity(self) -> dict[str, object]:
        """``subprocess`` arguments that run a command as the unprivileged user, if any."""
        if self.user is None:
            return {}
        entry = pwd.getpwnam(self.user)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _command(self, argv: list[str], check: bool) -> None:
        done = subprocess.run(self._argv(argv), capture_output=True, cwd=self.root, **self._identity())
        if check and done.returncode:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).decode(errors='replace')}")

    def start(self, timeout: float = 30.0) -> None:
        self._process = subprocess.Popen(
            self._argv(["postgres", "-D", str(self.data), "-p", str(self.port),
                        "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                        "-c", "fsync=off", "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off", "-c", "max_connections=200"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.root, **self._identity())
        deadline = time.monotonic() + timeout
        while not self._accepts():
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._process.returncode}: "
                                   f"{self._process.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"postgres did not accept connections on port {self.port} "
                                   f"within {timeout} s")
            time.sleep(0.05)

    def _accepts(self) -> bool:
        import psycopg

        try:
            psycopg.connect(self.url, connect_timeout=1).close()
            return True
        except psycopg.OperationalError:
            return False

    def kill(self) -> None:
        """SIGKILL the postmaster (a start that hung); unflushed commits may be lost."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)
        self._close_pipes()

    def stop(self) -> None:
        """Fast shutdown (SIGINT): every connection is cut. SIGTERM would wait for clients."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._close_pipes()

    def cleanup(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def _close_pipes(self) -> None:
        if self._process is not None and self._process.stderr is not None:
            self._process.stderr.close()


@contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """An empty schema of its own on ``server_url``'s database; yields a URL that uses it.

    A schema (through ``search_path`` in the URL) costs milliseconds where a new database
    costs a second or more on a busy machine, and isolates the tables just as well.
    """
    import psycopg

    name = f"timbral_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
    parts = urlsplit(server_url)
    query = "&".join(filter(None, [parts.query, f"options=-csearch_path%3D{name}"]))
    try:
        yield urlunsplit(parts._replace(query=query))
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{name}" CASCADE')
