"""Loading speed and memory: ``load_interactions`` on a large CSV, rows/s and peak RSS.

Makes the file with ``timbral generate`` when it does not exist yet (10M rows by
default), then loads and validates it in a fresh process, so the peak RSS is the
loader's own. Targets (issue 3): at least 2M rows/s on 2 cores, under 1.5 GB.

    python benchmarks/loading.py /tmp/plays-10m.csv [--rows 10000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's timbral

MEASURE = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from timbral.data import load_interactions
start = time.perf_counter()
data = load_interactions({path!r})
seconds = time.perf_counter() - start
print(json.dumps({{"rows": data.report.rows_read, "seconds": seconds, "nnz": data.nnz,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="CSV to load (made with timbral generate if missing)")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if not args.path.exists():
        from timbral.generate import write_interactions

        users, items = max(1, args.rows // 100), max(1, args.rows // 500)
        summary = write_interactions(args.path, users, items, args.rows, 0)
        print(f"generated {summary.n_rows:,} rows in {summary.seconds:.1f} s -> {args.path}")
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", MEASURE.format(root=str(ROOT), path=str(args.path))],
                             check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    print(f"rows read {best['rows']:,}, kept {best['nnz']:,}")
    for run in runs:
        print(f"  {run['rows'] / run['seconds'] / 1e6:.2f}M rows/s in {run['seconds']:.2f} s, "
              f"peak RSS {run['peak_rss_mb']:.0f} MB")
    print(f"best: {best['rows'] / best['seconds'] / 1e6:.2f}M rows/s (target ≥ 2M), "
          f"peak RSS {max(r['peak_rss_mb'] for r in runs):.0f} MB (target < 1536 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
