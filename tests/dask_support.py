"""The in-process Dask cluster the Dask tests share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import distributed


@contextmanager
def local_client() -> Iterator[distributed.Client]:
    """Two single-threaded workers in this process (no pickling of the test's closures)."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
    ) as cluster, distributed.Client(cluster) as client:
        yield client
