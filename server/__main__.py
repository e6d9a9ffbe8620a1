"""``python -m timbral.server`` (or ``timbral serve``): read the environment, build
the app, serve it on uvloop.

SIGTERM first turns readiness to 503 and keeps serving for
``TIMBRAL_SHUTDOWN_DELAY_SECONDS`` (load balancers stop routing here meanwhile); then,
as SIGINT does at once, it stops accepting connections, lets in-flight requests finish
(up to ``TIMBRAL_SHUTDOWN_TIMEOUT_SECONDS``), and closes reloads, Redis and the executor.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

import uvloop
from aiohttp import web

from timbral.logs import configure_logging

from .app import create_app
from .config import Config, ConfigError
from .keys import LIFECYCLE

log = logging.getLogger("timbral.server")


def run(config: Config) -> None:
    """Serve ``config`` until SIGTERM/SIGINT (blocking). ``timbral serve`` calls this."""
    configure_logging(config.log_level, log_format=config.log_format)
    # A scoring thread running Python between kernel calls holds the GIL for at most
    # this long before the event loop gets it back (Python's default is 5 ms).
    sys.setswitchinterval(config.gil_switch_interval_seconds)
    log.info("starting", extra={"host": config.api_host, "port": config.api_port,
                                "model_dir": config.model_dir, "redis": config.redis_url is not None})
    app = create_app(config)
    app.on_startup.append(_drain_on_sigterm(config.shutdown_delay_seconds))
    app.on_startup.append(_freeze_startup_objects)
    loop = uvloop.new_event_loop()
    # DEBUG=true: asyncio's debug mode, which logs callbacks that block the loop > 100 ms
    loop.set_debug(config.debug)
    web.run_app(
        app,
        host=config.api_host,
        port=config.api_port,
        shutdown_timeout=config.shutdown_timeout_seconds,
        access_log=None,  # observe (server/observe.py) writes one JSON line per request
        print=None,
        loop=loop,
    )


def _drain_on_sigterm(delay_seconds: float) -> Callable[[web.Application], Awaitable[None]]:
    """A startup hook replacing aiohttp's SIGTERM handler: readiness 503, then shut down.

    aiohttp installs its handler before the startup hooks run, so this one wins; SIGINT
    keeps aiohttp's immediate graceful shutdown.
    """
    async def install(app: web.Application) -> None:
        loop = asyncio.get_running_loop()

        def on_sigterm() -> None:
            if app[LIFECYCLE].draining:
                return
            app[LIFECYCLE].draining = True
            log.info("SIGTERM: readiness answers 503; closing the listener after the delay",
                     extra={"delay_seconds": delay_seconds})
            loop.call_later(delay_seconds, _graceful_exit)

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)

    return install


async def _freeze_startup_objects(app: web.Application) -> None:
    """Move every object alive after start-up (modules, the model, aiohttp's tables) out of
    the collector's reach.

    A full collection walks every tracked object while holding the GIL: with ~80K of
    them from start-up, one that a large answer's allocations set off stalled the event
    loop for tens of milliseconds (/ping's p99). They live as long as the process, so
    they need never be walked again.
    """
    gc.collect()
    gc.freeze()


def _graceful_exit() -> None:
    raise web.GracefulExit()  # how aiohttp's own signal handler ends run_app


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m timbral.server``; configuration comes from the environment only."""
    if argv if argv is not None else sys.argv[1:]:
        print("usage: python -m timbral.server  (configure with API_PORT, TIMBRAL_MODEL_DIR, "
              "REDIS_URL, ...: see the README's \"HTTP service\" section)", file=sys.stderr)
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
