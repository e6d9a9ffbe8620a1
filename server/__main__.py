"""``python -m server``: read the environment, build the app, serve it on uvloop.

SIGTERM/SIGINT stop accepting connections, let in-flight requests finish (up to
``TIMBRAL_SHUTDOWN_TIMEOUT_SECONDS``), then close reloads, Redis and the executor.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import uvloop
from aiohttp import web

from server.app import create_app
from server.config import Config, ConfigError
from timbral.logs import configure_logging

log = logging.getLogger("server")

GIL_SWITCH_INTERVAL_SECONDS = 0.001


def run(config: Config) -> None:
    """Serve ``config`` until SIGTERM/SIGINT (blocking). ``timbral serve`` calls this."""
    configure_logging(config.log_level, log_format=config.log_format)
    # A scoring thread running Python between kernel calls holds the GIL for at most
    # this long before the event loop gets it back (the default is 5 ms).
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_SECONDS)
    log.info("starting", extra={"host": config.api_host, "port": config.api_port,
                                "model_dir": config.model_dir, "redis": config.redis_url is not None})
    loop = uvloop.new_event_loop()
    # DEBUG=true: asyncio's debug mode, which logs callbacks that block the loop > 100 ms
    loop.set_debug(config.debug)
    web.run_app(
        create_app(config),
        host=config.api_host,
        port=config.api_port,
        shutdown_timeout=config.shutdown_timeout_seconds,
        access_log=None,  # the observe middleware writes one JSON line per request
        print=None,
        loop=loop,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m server``; configuration comes from the environment only."""
    if argv if argv is not None else sys.argv[1:]:
        print("usage: python -m server  (configure with API_PORT, TIMBRAL_MODEL_DIR, REDIS_URL, "
              "... see DESIGN.md §3)", file=sys.stderr)
        return 2
    try:
        config = Config.from_env()
    except ConfigError as exc:
        print(f"timbral server: {exc}", file=sys.stderr)
        return 2
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
