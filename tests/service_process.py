"""The service as a real process, as operators run it, for tests that need one.

The module that serves is one constant, so moving the service to another module
name changes one line here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from redis_server import free_port

SERVER_MODULE = "server"
ROOT = Path(__file__).resolve().parents[1]


class ServiceProcess:
    """``python -m SERVER_MODULE`` on a fixed loopback port: start, stop, start again.

    ``env`` is added to this process's environment; the service's log (stderr)
    goes to ``log_path``, so a test can read everything it wrote.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(self.port), **env}
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it without waiting for it to answer (see :meth:`wait_until_up`)."""
        # Run from the checkout when testing sources; the installed package otherwise.
        cwd = None if os.environ.get("TIMBRAL_TEST_INSTALLED") else ROOT
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen([sys.executable, "-m", SERVER_MODULE], env=self.env,
                                             cwd=cwd, stdout=subprocess.DEVNULL, stderr=log)

    def wait_until_up(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"the service exited with {self._process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not answer /ping within {within} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM and wait: in-flight requests finish, the port is free afterwards."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
