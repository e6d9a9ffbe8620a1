"""Typed keys for every piece of application state (``app[CONFIG]`` is a Config)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from server.access_log import AccessLog
from server.batching import RecommendBatcher
from server.cache import TieredCache
from server.config import Config
from server.ingest import IngestQueue
from server.metrics import Metrics
from server.registry_follower import RegistryFollower
from server.state import ModelSlot, Reloader

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
MODEL = web.AppKey("model", ModelSlot)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
SCORING_THREADS = web.AppKey("scoring_threads", int)  # the executor's size
BATCHER = web.AppKey("batcher", RecommendBatcher)
CACHE = web.AppKey("cache", TieredCache)
RELOADER = web.AppKey("reloader", Reloader)
OPENAPI = web.AppKey("openapi", bytes)
ACCESS_LOG = web.AppKey("access_log", AccessLog | None)  # None below LOG_LEVEL=INFO
FOLLOWER = web.AppKey("registry_follower", RegistryFollower | None)  # None without DATABASE_URL
INGEST = web.AppKey("ingest", IngestQueue | None)  # None without TIMBRAL_INGEST_TOKEN

REQUEST_ID = web.RequestKey("request_id", str)
