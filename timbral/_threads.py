"""Resolve how many threads the kernels use, and keep BLAS from oversubscribing.

``n_threads=0`` means "all the cores this process may use": the CPU affinity mask,
capped by a cgroup CPU quota (containers) and by ``OMP_NUM_THREADS`` when set, as
scikit-learn's ``_openmp_effective_n_threads`` does.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from threadpoolctl import ThreadpoolController

from timbral._core import _openmp_enabled


def _cgroup_cpu_quota() -> int | None:
    """CPUs granted by a cgroup v2 (or v1) quota, or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0:
            return max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return None


@functools.lru_cache(maxsize=1)
def available_cpus() -> int:
    """The cores this process may run on, after affinity and cgroup quotas."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return min(count, quota) if quota else count


def effective_n_threads(n_threads: int = 0) -> int:
    """Threads for a kernel call: ``n_threads`` if positive, else every available core.

    ``OMP_NUM_THREADS`` caps the automatic choice; without OpenMP it is always 1.
    """
    if not _openmp_enabled():
        return 1
    if n_threads > 0:
        return n_threads
    count = available_cpus()
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        count = min(count, int(omp))
    return max(1, count)


_blas_lock = threading.Lock()
_blas_state: dict[str, Any] = {"controller": None, "limiter": None, "users": 0, "pinned": False}


def pin_blas_to_one_thread() -> None:
    """Keep BLAS single-threaded for the rest of the process.

    For a server, whose parallelism is its scoring pool: every kernel call then
    skips setting and restoring the limit (about 15 µs a call).
    """
    with _blas_lock:
        if not _blas_state["pinned"]:
            if _blas_state["controller"] is None:
                _blas_state["controller"] = ThreadpoolController()
            _blas_state["controller"].limit(limits=1, user_api="blas")
            _blas_state["pinned"] = True


_ALREADY_SINGLE = contextlib.nullcontext()  # reusable: enters and exits as often as asked


def single_threaded_blas() -> contextlib.AbstractContextManager[None]:
    """Keep BLAS on one thread while our OpenMP kernels use the cores (implicit #440).

    The kernels call BLAS from each of their own threads; a multi-threaded OpenBLAS
    underneath oversubscribes the cores (a 1000-user top-K batch ran 13× slower).
    The limit is process-wide, so concurrent callers share it, reference counted:
    the first sets it, the last restores it. The threadpool controller is built
    once (it scans the loaded libraries, which takes milliseconds). Once the process
    has pinned BLAS (``pin_blas_to_one_thread``) this is a no-op context, without
    the generator machinery of a limited one (a few µs on every scoring call).
    """
    return _ALREADY_SINGLE if _blas_state["pinned"] else _limited_blas()


@contextlib.contextmanager
def _limited_blas() -> Iterator[None]:
    """``single_threaded_blas`` while BLAS is not pinned: set the limit, reference counted."""
    with _blas_lock:
        if _blas_state["users"] == 0:
            if _blas_state["controller"] is None:
                _blas_state["controller"] = ThreadpoolController()
            _blas_state["limiter"] = _blas_state["controller"].limit(limits=1, user_api="blas")
        _blas_state["users"] += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0:
                _blas_state["limiter"].restore_original_limits()
