"""The production loop on PostgreSQL: schema migrations and the model registry.

``DATABASE_URL`` names the database; without it nothing here is used and models stay
plain directories. ``timbral db upgrade`` creates and migrates the schema;
``timbral train DATA --register`` and ``timbral models ...`` drive the registry from
the command line, :class:`Registry` from Python, and a serving replica follows the
production model (``server.registry_follower``).
"""

from timbral.registry.registry import CHANNEL, ModelVersion, Registry, connect, redact

__all__ = ["CHANNEL", "ModelVersion", "Registry", "connect", "redact"]
