"""A real cluster: `dask scheduler` and two `dask worker` processes over TCP, driven by the CLI."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

distributed = pytest.importorskip("distributed")

from timbral import Recommender  # noqa: E402
from timbral.cli import main  # noqa: E402
from timbral.generate import write_partitioned  # noqa: E402

DASK = str(Path(sys.executable).with_name("dask"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """The address of a scheduler with two single-threaded workers, each its own process tree."""
    if not os.path.exists(DASK):
        pytest.skip("the `dask` command is not installed beside this Python")
    logs = tmp_path_factory.mktemp("dask-logs")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    commands = [[DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"]]
    commands += [[DASK, "worker", address, "--nthreads", "1", "--memory-limit", "1GiB",
                  "--dashboard-address", ":0", "--local-directory", str(logs)]] * 2
    processes, log_files = [], []
    try:
        for i, command in enumerate(commands):
            log_files.append(open(logs / f"{i}.log", "wb"))
            processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log_files[-1]))
            if i == 0:
                _wait_for_port(port, processes[0])
        with distributed.Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=90)
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in log_files:
            log.close()


def _wait_for_port(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`dask scheduler` exited with status {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"`dask scheduler` did not listen on port {port} within 60 s")


@pytest.mark.slow  # ~60 s on a loaded 2-core machine: three dask processes start and stop
def test_train_and_recommend_all_through_a_tcp_cluster(scheduler, tmp_path, capsys, redis_url, monkeypatch):
    write_partitioned(tmp_path / "plays", 200, 80, 3_000, seed=4, n_partitions=3)
    assert main(["train", str(tmp_path / "plays"), "--dask", scheduler, "--rating-col", "plays",
                 "--components", "4", "--iterations", "3", "-o", str(tmp_path / "model"),
                 "--checkpoint", str(tmp_path / "ck"), "--json"]) == 0
    assert '"n_iter": 3' in capsys.readouterr().out
    rec = Recommender.load(tmp_path / "model")
    assert rec.n_users == 200 and rec.model.n_iter_ == 3
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["recommend-all", str(tmp_path / "model"), "--dask", scheduler, "-k", "3",
                 "-o", str(tmp_path / "top"), "--partitions", "2", "--prewarm-redis"]) == 0
    assert "Wrote the top 3 of 200 users (600 rows" in capsys.readouterr().out
    import redis

    store = redis.Redis.from_url(redis_url)
    try:  # the worker processes stored one answer per user under the service's keys
        assert len(store.keys(f"timbral:{rec.model_version}:rec:*:3:True")) == 200
    finally:
        store.close()
    table = pq.read_table(tmp_path / "top").to_pandas()
    user = rec.user_ids[17]
    assert list(table[table.user_id == user].sort_values("rank").item_id) == [
        item for item, _ in rec.recommend(user, 3).items
    ]
    assert table.groupby("user_id").score.is_monotonic_decreasing.all()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("local:0", r"--dask 'local:0': after 'local:' give a positive number of workers"),
        ("local:x; rm -rf /", r"after 'local:' give a positive number of workers"),
        ("cluster-7", r"--dask 'cluster-7' is neither a scheduler address \(tcp://host:8786\) nor local:N"),
    ],
)
def test_bad_dask_addresses(tmp_path, capsys, spec, message):
    import re

    write_partitioned(tmp_path / "p", 20, 10, 100, n_partitions=1)
    assert main(["train", str(tmp_path / "p"), "--dask", spec, "-o", str(tmp_path / "m")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "m").exists()


def test_unreachable_scheduler(tmp_path, capsys):
    assert main(["recommend-all", str(tmp_path), "--dask", f"tcp://127.0.0.1:{free_port()}",
                 "-o", str(tmp_path / "top")]) == 2
    assert "cannot reach the scheduler at tcp://127.0.0.1:" in capsys.readouterr().err


def test_train_dask_needs_an_output_directory(tmp_path, capsys):
    """The workers write the model: without --output there is nowhere to write it (and no cluster starts)."""
    assert main(["train", str(tmp_path), "--dask", "local:1"]) == 2
    assert "train --dask needs --output DIR: the model directory the workers write" in capsys.readouterr().err


def test_prewarm_needs_the_services_redis_url(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert main(["recommend-all", str(tmp_path), "--dask", "local:1", "-o", str(tmp_path / "top"),
                 "--prewarm-redis"]) == 2
    assert "--prewarm-redis reads the service's REDIS_URL from the environment; it is not set" in (
        capsys.readouterr().err)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("CACHE_TTL_SECONDS", "soon")
    assert main(["recommend-all", str(tmp_path), "--dask", "local:1", "-o", str(tmp_path / "top"),
                 "--prewarm-redis"]) == 2
    assert "CACHE_TTL_SECONDS='soon' is not a number of seconds" in capsys.readouterr().err
