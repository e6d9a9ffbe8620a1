"""The Timbral HTTP service (aiohttp). Build it with :func:`server.app.create_app`."""

from server.app import create_app
from server.config import Config, ConfigError

__all__ = ["Config", "ConfigError", "create_app", "run"]


def run(config: Config) -> None:
    """Serve ``config`` on uvloop until SIGTERM (see :mod:`server.__main__`)."""
    from server.__main__ import run as _run  # uvloop is imported only when serving

    _run(config)
