"""Distributed fit at scale: seconds per epoch, peak RSS of every worker and of the client,
factor bytes moved per epoch, against the single-machine fit of the same data.

Makes the partitioned Parquet dataset with ``timbral generate --partitions`` when the
directory does not exist yet. The distributed fit runs on a LocalCluster of worker
processes with a memory limit each and the workers write the model directory
(``DIR.model``: the client never holds the factors); the single-machine fit (``--single``) runs in a
fresh process afterwards, so each peak RSS is that run's own. Speed is reported as
the ratio of per-interaction epoch costs measured in the same run (the machine is
shared: absolute seconds are noise). Issue 11's target run is 100M interactions
(1M users × 200K items), k = 64, 2–4 workers:

    python benchmarks/scale.py /data/plays-100m --users 1000000 --items 200000 \\
        --interactions 100000000 --partitions 100 --workers 2 --memory-limit 8GiB

Extrapolation (printed with the measured constants): an epoch costs
``t = c_row · nnz · k / (workers · threads) + t_fixed`` where ``c_row`` is the
measured per-(interaction × factor) cost and ``t_fixed`` the per-epoch scheduling
overhead (tasks ∝ blocks²); a worker holds its share of R and Rᵀ (12 bytes per
interaction each) plus its factor blocks and the rows routed to it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's timbral

SINGLE = """
import json, sys, time
import pyarrow as pa, pyarrow.parquet as pq
sys.path.insert(0, {root!r})
from timbral import NMFModel
from timbral.data import load_interactions
path = {path!r}
whole = {whole!r}
parts = sorted(__import__("glob").glob(path + "/*.parquet"))[:{n_parts}]
pq.write_table(pa.concat_tables([pq.read_table(f) for f in parts]), whole)
data = load_interactions(whole, rating_col="plays", max_value=None, max_user_interactions=None)
ticks = [time.perf_counter()]
NMFModel(n_components={k}, max_iter={epochs}, tol=0, random_state=0, n_threads={threads},
         regularization={regularization!r}).fit(
    data.user_items, callback=lambda i, loss: ticks.append(time.perf_counter()))
epochs = [b - a for a, b in zip(ticks[:-1], ticks[1:])]
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"nnz": data.nnz, "epoch_seconds": epochs, "peak_rss_mb": hwm / 1024}}))
"""


def _peak_rss_mb() -> float:
    """This process's peak RSS (Linux VmHWM: unlike ru_maxrss it does not inherit a parent's peak)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def _outgoing_bytes(dask_worker) -> int:  # runs on each worker
    return int(getattr(dask_worker, "transfer_outgoing_bytes_total", 0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="Parquet directory (made with timbral generate if missing)")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--interactions", type=int, default=100_000_000)
    parser.add_argument("--partitions", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="8GiB")
    parser.add_argument("--blocks", type=int, help="blocks per side (default: one per worker thread)")
    parser.add_argument("-k", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--regularization", default="auto",
                        help="λ, or 'auto' (searched on a sample the workers draw); the single-machine "
                             "fit uses the λ the distributed fit ended with")
    parser.add_argument("--single", action="store_true", help="also run the single-machine fit (if it fits)")
    parser.add_argument("--single-partitions", type=int,
                        help="fit the single machine on the first N files only (whole users) when all of "
                             "them do not fit in memory; the ratio is per interaction")
    parser.add_argument("--score", type=int, metavar="K",
                        help="only batch scoring: recommend_all top-K of every user of the model in DIR.model "
                             "(written by a previous run), peak RSS per worker, spot-checked against recommend")
    args = parser.parse_args(argv)
    regularization = args.regularization if args.regularization == "auto" else float(args.regularization)

    import distributed

    if args.score is not None:
        return _score(args, distributed)

    from timbral import NMFModel
    from timbral.dask import CleaningRules, fit
    from timbral.generate import write_partitioned

    if not args.path.exists():
        summary = write_partitioned(args.path, args.users, args.items, args.interactions,
                                    n_partitions=args.partitions)
        print(f"generated {summary.n_rows:,} rows in {summary.seconds:.0f} s", file=sys.stderr)

    with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                  memory_limit=args.memory_limit, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        client_rss_before = _peak_rss_mb()
        started = time.perf_counter()
        moved_before = sum(client.run(_outgoing_bytes).values())
        moved_at_epoch: list[int] = []  # worker-to-worker bytes sent, read after every epoch

        def after_epoch(iteration: int, loss: float) -> None:
            moved_at_epoch.append(sum(client.run(_outgoing_bytes).values()))
        model_dir = Path(str(args.path) + ".model")
        result = fit(NMFModel(n_components=args.k, max_iter=args.epochs, tol=0, random_state=0,
                              regularization=regularization),
                     str(args.path), client, rating_col="plays", n_blocks=args.blocks,
                     rules=CleaningRules(min_user_interactions=5), output=model_dir, callback=after_epoch)
        total = time.perf_counter() - started
        moved = sum(client.run(_outgoing_bytes).values()) - moved_before
        worker_rss = client.run(_peak_rss_mb)
        limits = {w: info["memory_limit"] / 2**20 for w, info in client.scheduler_info()["workers"].items()}
    nnz = result.report.nnz
    dist = {
        "nnz": nnz, "n_users": result.report.n_users, "n_items": result.report.n_items, "k": args.k,
        "workers": args.workers, "epoch_seconds": result.epoch_seconds, "total_seconds": total,
        "model_dir": str(model_dir), "model_version": result.model_version,
        "routed_factor_bytes_per_epoch": result.bytes_per_epoch, "broadcast_pairs": result.broadcast_blocks,
        "transferred_bytes_total": moved,
        "transferred_bytes_per_epoch": [b - a for a, b in zip(moved_at_epoch[:-1], moved_at_epoch[1:], strict=True)],
        "worker_peak_rss_mb": sorted(worker_rss.values()), "worker_limit_mb": sorted(limits.values()),
        "client_peak_rss_mb": _peak_rss_mb(), "client_rss_before_fit_mb": client_rss_before,
    }
    out = {"distributed": dist}
    print(json.dumps(out), file=sys.stderr, flush=True)  # kept even if the single-machine fit dies
    best = min(result.epoch_seconds)
    if args.single:
        lam = json.loads((model_dir / "metadata.json").read_text())["fit"]["regularization"]  # no second search
        code = SINGLE.format(root=str(ROOT), path=str(args.path), whole=str(args.path) + ".single.parquet",
                             k=args.k, epochs=args.epochs, threads=args.workers, regularization=lam,
                             n_parts=args.single_partitions)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        Path(str(args.path) + ".single.parquet").unlink(missing_ok=True)
        if run.returncode != 0:  # e.g. killed for memory: say so, keep the distributed numbers
            out["single_error"] = f"exit {run.returncode}: {run.stderr.strip()[-2000:]}"
        else:
            single = json.loads(run.stdout.strip().splitlines()[-1])
            out["single"] = single
            out["per_interaction_cost_ratio"] = (best / nnz) / (min(single["epoch_seconds"]) / single["nnz"])
    out["c_row_seconds"] = best * args.workers / (nnz * args.k)  # per interaction × factor, per thread
    print(json.dumps(out, indent=2))
    return 0


def _score(args: argparse.Namespace, distributed) -> int:
    """recommend_all over the model a previous run wrote, then three users checked against recommend."""
    import shutil

    import pyarrow.dataset as ds

    from timbral import Recommender
    from timbral.dask import recommend_all

    model_dir, output = Path(str(args.path) + ".model"), Path(str(args.path) + ".top")
    shutil.rmtree(output, ignore_errors=True)
    with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                  memory_limit=args.memory_limit, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        started = time.perf_counter()
        summary = recommend_all(model_dir, client, k=args.score, output=output)
        seconds = time.perf_counter() - started
        worker_rss = sorted(client.run(_peak_rss_mb).values())
    client_rss = _peak_rss_mb()
    rec = Recommender.load(model_dir)  # after the measurement: the check needs the whole model here
    table = ds.dataset(output).to_table(filter=ds.field("user_id").isin(rec.user_ids[[0, 4321, -1]].tolist()))
    rows = table.to_pandas()
    checked = 0
    for user in rec.user_ids[[0, 4321, -1]].tolist():
        mine = rows[rows.user_id == user].sort_values("rank")
        expected = rec.recommend(user, args.score)
        if list(mine.item_id) != [item for item, _ in expected.items]:
            raise SystemExit(f"user {user}: recommend_all wrote {list(mine.item_id)}, recommend says {expected.items}")
        checked += 1
    print(json.dumps({"users": summary.n_users, "rows": summary.n_rows, "files": len(summary.files),
                      "k": args.score, "seconds": seconds, "users_per_second": summary.n_users / seconds,
                      "worker_peak_rss_mb": worker_rss, "client_peak_rss_mb": client_rss,
                      "spot_checked_users": checked}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
