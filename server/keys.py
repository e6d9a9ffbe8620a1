"""Typed keys for every piece of application state (``app[CONFIG]`` is a Config)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiohttp import web

from .batching import RecommendBatcher
from .cache import TieredCache
from .config import Config
from .ingest import IngestQueue
from .metrics import Metrics
from .registry_follower import RegistryFollower
from .state import Lifecycle, ModelSlot, Reloader

if TYPE_CHECKING:
    from .observe import Observe

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
MODEL = web.AppKey("model", ModelSlot)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
SCORING_THREADS = web.AppKey("scoring_threads", int)  # the executor's size
BATCHER = web.AppKey("batcher", RecommendBatcher)
CACHE = web.AppKey("cache", TieredCache)
RELOADER = web.AppKey("reloader", Reloader)
OPENAPI = web.AppKey("openapi", bytes)
FOLLOWER = web.AppKey("registry_follower", RegistryFollower | None)  # None without DATABASE_URL
INGEST = web.AppKey("ingest", IngestQueue | None)  # None without TIMBRAL_INGEST_TOKEN
OBSERVE: web.AppKey[Observe] = web.AppKey("observe")  # wraps every route's handler (app.add_routes)

REQUEST_ID = web.RequestKey("request_id", str)
