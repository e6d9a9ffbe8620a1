"""Ingestion throughput: ``POST /api/v1/interactions`` against a bare COPY, same run.

Reference: the same events written by one psycopg connection with COPY into the same
table, in batches of the same size (no HTTP, no validation, no idempotency check).
Ours: the service in this process on a loopback port, ``--concurrency`` clients each
posting batches of ``--batch`` events, every answer a durable acknowledgement. The
clients share the service's event loop, so their JSON encoding is charged to it too. Both
run in a fresh schema of ``--database-url`` that is dropped afterwards; the figure
that matters is the ratio, since absolute rates depend on the machine.

    python benchmarks/ingest.py --database-url postgresql://... [--events 100000] [--batch 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import psycopg
from aiohttp import web

from server.app import create_app
from server.config import Config
from timbral.registry import Registry

TOKEN = "benchmark-ingest-token-0123456789"


def events(n: int, prefix: str) -> list[dict[str, object]]:
    now = datetime.now(UTC).isoformat()
    return [{"event_id": f"{prefix}{i}", "user_id": f"u{i % 5000}", "item_id": i % 2000, "value": 1 + i % 7,
             "timestamp": now} for i in range(n)]


def reference(url: str, batches: list[list[dict[str, object]]]) -> float:
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        for batch in batches:
            with conn.cursor().copy("COPY timbral_interactions (event_id, user_id, item_id, value, "
                                    "occurred_at) FROM STDIN") as copy:
                for e in batch:
                    copy.write_row((e["event_id"], e["user_id"], str(e["item_id"]), e["value"], e["timestamp"]))
            conn.commit()
    return time.perf_counter() - started


async def service(url: str, batches: list[list[dict[str, object]]], concurrency: int) -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(Config(api_host="127.0.0.1", api_port=port, database_url=url, ingest_token=TOKEN,
                            log_level="WARNING", ingest_max_events=max(len(b) for b in batches)))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    queue = list(reversed(batches))
    try:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            async def client() -> None:
                while queue:
                    batch = queue.pop()
                    async with session.post(f"http://127.0.0.1:{port}/api/v1/interactions",
                                            json={"events": batch}) as response:
                        if response.status != 200:
                            raise RuntimeError(f"{response.status}: {await response.text()}")

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return time.perf_counter() - started
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    if not args.database_url:
        parser.error("pass --database-url or set DATABASE_URL")
    schema = f"timbral_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    parts = urlsplit(args.database_url)
    url = urlunsplit(parts._replace(query="&".join(filter(None, [parts.query,
                                                                   f"options=-csearch_path%3D{schema}"]))))
    try:
        with Registry(url) as registry:
            registry.upgrade()
        sizes = range(0, args.events, args.batch)
        ref = reference(url, [events(args.events, "r")[i:i + args.batch] for i in sizes])
        ours = asyncio.run(service(url, [events(args.events, "s")[i:i + args.batch] for i in sizes],
                                   args.concurrency))
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT count(*) FROM timbral_interactions").fetchone()[0]
        assert stored == 2 * args.events, stored
        print(f"{args.events:,} events in batches of {args.batch}, {args.concurrency} clients:")
        print(f"  reference  bare COPY, one connection   {args.events / ref:>10,.0f} events/s")
        print(f"  timbral    POST /api/v1/interactions    {args.events / ours:>10,.0f} events/s  "
              f"({ref / ours:.2f}x the reference's rate)")
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main()
