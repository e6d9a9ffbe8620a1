"""The Timbral HTTP service (aiohttp), installed as ``timbral.server``.

Build it with :func:`timbral.server.app.create_app`; serve it with ``timbral serve`` or
``python -m timbral.server``.
"""

from .app import create_app
from .config import Config, ConfigError

__all__ = ["Config", "ConfigError", "create_app", "run"]


def run(config: Config) -> None:
    """Serve ``config`` on uvloop until SIGTERM (see :mod:`timbral.server.__main__`)."""
    from .__main__ import run as _run  # uvloop is imported only when serving

    _run(config)
