"""The production loop on PostgreSQL: schema migrations and the model registry.

``DATABASE_URL`` names the database; without it nothing here is used and models stay
plain directories. ``timbral db upgrade`` creates and migrates the schema;
``timbral train DATA --register`` and ``timbral models ...`` drive the registry from
the command line, :class:`Registry` from Python, and a serving replica follows the
production model (``server.registry_follower``).

The names below are imported on first use, so ``timbral`` works without the
``postgres`` extra until a registry feature is asked for.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from timbral.exceptions import RegistryError

if TYPE_CHECKING:
    from timbral.registry.registry import CHANNEL, ModelVersion, Registry, connect, redact

__all__ = ["CHANNEL", "ModelVersion", "Registry", "connect", "redact"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'timbral.registry' has no attribute {name!r}")
    try:
        module = import_module("timbral.registry.registry")
    except ImportError as exc:
        raise RegistryError(f"the model registry needs the PostgreSQL driver ({exc}); "
                            "pip install 'timbral[postgres]'") from None
    return getattr(module, name)
