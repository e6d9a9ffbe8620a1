"""Models, configurations and a real server process for the server tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import scipy.sparse as sp
from redis_server import free_port

from timbral import NMFModel
from timbral.recommender import Recommender
from timbral.server.config import ENV_NAMES, Config

ROOT = Path(__file__).resolve().parents[1]
ADMIN_TOKEN = "test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # headers of an operator's request
N_USERS, N_ITEMS = 120, 60


def build_model_dir(directory: Path, seed: int) -> Path:
    """A fitted model with string user ids ``u0..`` and integer item ids ``1000..``."""
    rng = np.random.default_rng(seed)
    user_items = sp.random(N_USERS, N_ITEMS, density=0.1, random_state=rng, format="csr",
                           dtype=np.float32)
    user_items.data = np.ceil(user_items.data * 10)
    model = NMFModel(n_components=6, max_iter=5, tol=0, random_state=seed).fit(user_items)
    recommender = Recommender(model, [f"u{i}" for i in range(N_USERS)],
                              np.arange(1000, 1000 + N_ITEMS), user_items)
    return recommender.save(directory)


def config(model_dir: Path | None, **overrides: object) -> Config:
    """A test configuration: loopback, tier 1 only unless ``redis_url`` is given."""
    values: dict[str, object] = {"api_host": "127.0.0.1", "model_dir": model_dir,
                                 "admin_token": ADMIN_TOKEN, "executor_threads": 2,
                                 "log_level": "WARNING"}
    values.update(overrides)
    return Config(**values)  # type: ignore[arg-type]


class ServerProcess:
    """``python -m timbral.server`` in a process of its own, as operators run it.

    It is configured by ``env`` alone: the service's variables in the test runner's own
    environment (a ``REDIS_URL``, say) are not passed on. Its stdout and stderr go to one
    file (``output()``), so tests can read everything the service printed or logged.
    """

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = directory / f"server-{self.port}.log"
        inherited = {name: value for name, value in os.environ.items()
                     if name not in ENV_NAMES.values()}
        self._env = {**inherited, "API_HOST": "127.0.0.1", "API_PORT": str(self.port),
                     "LOG_LEVEL": "WARNING", **env}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, within: float = 60.0) -> ServerProcess:
        """Start it and wait until ``/ping`` answers."""
        # Run from the checkout when testing sources; the installed package otherwise.
        cwd = None if os.environ.get("TIMBRAL_TEST_INSTALLED") else ROOT
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "timbral.server"], env=self._env,
                                            cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + within
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer /ping within {within} s:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        assert self.process is not None
        return psutil.Process(self.process.pid).memory_info().rss

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
