"""Service configuration, read once from the environment and validated at start.

The names are the ones operators already use. Every problem is collected and
reported together, each naming the variable, the value received (secrets redacted:
see :func:`redact`) and what is expected, so a bad deployment fails at start with one
clear message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from timbral._validation import DEFAULT_SEED
from timbral.ids import MAX_ID_BYTES
from timbral.logs import REDACTED, redact_url

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "text")
CERT_REQS = ("required", "optional", "none")  # REDIS_SSL_CERT_REQS, as redis-py spells them
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

T = TypeVar("T")


class ConfigError(ValueError):
    """One or more environment variables have values the service cannot run with."""


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the service reads from its environment.

    Build it with :meth:`from_env` in production; tests construct it directly.
    """

    api_host: str = "0.0.0.0"
    api_port: int = 8001
    debug: bool = False  # asyncio debug mode: slow callbacks are logged
    redis_url: str | None = None
    redis_db: int = 0
    # TLS for a rediss:// REDIS_URL (managed Redis): the server certificate is verified
    # against the system trust store or REDIS_SSL_CA_CERTS, and its host name is checked.
    redis_ssl_ca_certs: Path | None = None
    redis_ssl_certfile: Path | None = None  # client certificate, for servers that ask for one
    redis_ssl_keyfile: Path | None = None
    redis_ssl_cert_reqs: str = "required"
    # Training defaults of `timbral train`/`quickstart` (read there); validated here too so
    # a deployment with a bad value fails at start, with the rest of its configuration.
    nmf_n_components: int = 50
    nmf_random_state: int = DEFAULT_SEED
    model_dir: Path | None = None
    cache_ttl_seconds: float = 300.0
    admin_token: str | None = None
    log_level: str = "INFO"
    log_format: str = "json"  # under an orchestrator; `timbral serve` on a terminal picks text
    # Limits and tuning (TIMBRAL_* names).
    max_batch_users: int = 1000
    max_batch_items: int = 100_000  # users × k in one batch request: bounds the answer's size
    max_body_bytes: int = 1 << 20
    # Longest string id, in bytes of UTF-8 (as the loader counts): at most MAX_ID_BYTES,
    # since ingested ids are trained on with the loader's limit.
    max_id_length: int = MAX_ID_BYTES
    executor_threads: int = 0  # 0 = one per available core (micro-batcher: one fewer, for the event loop)
    # Single-user requests a scorer thread answers per batch: larger batches read the item
    # factors fewer times, smaller ones hand the loop fewer answers to write at once.
    scorer_max_batch: int = 64
    # How long a thread running Python keeps the GIL when another wants it (Python's
    # default is 5 ms): a scorer thread between kernel calls delays the event loop this long.
    gil_switch_interval_seconds: float = 0.001
    tier1_max_bytes: int = 128 << 20
    redis_timeout_seconds: float = 0.05
    redis_connect_timeout_seconds: float = 0.1
    redis_max_connections: int = 64
    breaker_failures: int = 3
    breaker_cooldown_seconds: float = 2.0
    shutdown_timeout_seconds: float = 10.0
    # After SIGTERM, readiness answers 503 for this long while requests are still served,
    # so load balancers stop sending traffic before the listener closes.
    shutdown_delay_seconds: float = 0.0
    # The production loop on PostgreSQL (unset DATABASE_URL = models from TIMBRAL_MODEL_DIR only).
    database_url: str | None = None  # redacted when printed, like every URL field
    db_migrate: bool = False  # apply schema migrations at start
    registry_poll_seconds: float = 10.0  # fallback check when a NOTIFY is missed
    database_timeout_seconds: float = 5.0
    model_cache_dir: Path | None = None  # where registry models are downloaded (default: a temp dir)
    ingest_token: str | None = None  # bearer token of POST /api/v1/interactions
    ingest_max_events: int = 1000  # per request
    ingest_queue_events: int = 50_000  # waiting for their COPY; beyond: 429
    ingest_batch_events: int = 5000  # per COPY
    ingest_flush_seconds: float = 0.05  # a flush waits this long for concurrent requests to join

    def __post_init__(self) -> None:
        problems = _check(self)
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={redact(f.name, getattr(self, f.name))!r}" for f in fields(self))
        return f"Config({shown})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Read the configuration from ``environ`` (default ``os.environ``).

        Raises
        ------
        ConfigError
            Listing every variable that could not be parsed or is out of range.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for field in fields(cls):
            name = ENV_NAMES[field.name]
            raw = env.get(name)
            if raw is None or (raw == "" and field.name in _EMPTY_IS_UNSET):
                continue
            try:
                values[field.name] = _PARSERS[field.name](raw)
            except ValueError as exc:
                problems.append(f"{name}={redact(field.name, raw)!r}: {exc}")
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        return cls(**values)


_SECRET_FIELDS = {"admin_token", "ingest_token"}
_URL_FIELDS = {"redis_url", "database_url"}
def redact(field: str, value: Any) -> Any:
    """``value`` as it may be printed or logged: tokens hidden, URL credentials removed."""
    if value is None:
        return None
    if field in _SECRET_FIELDS:
        return f"{REDACTED} ({len(str(value))} characters)"
    if field in _URL_FIELDS:
        return redact_url(str(value))
    return value


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected a boolean (1/0, true/false, yes/no, on/off)")


def _parse_number(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(raw: str) -> T:
        try:
            return kind(raw.strip())
        except ValueError:
            raise ValueError(f"expected {'an integer' if kind is int else 'a number'}") from None

    return parse


def _check(config: Config) -> list[str]:
    """Range checks on a built Config, phrased with the environment names."""
    problems = []

    def need(ok: bool, field: str, expected: str) -> None:
        if not ok:
            problems.append(f"{ENV_NAMES[field]}={redact(field, getattr(config, field))!r}: "
                            f"expected {expected}")

    need(0 <= config.api_port <= 65535, "api_port", "a port number in 0..65535")
    need(config.redis_db >= 0, "redis_db", "a database index >= 0")
    need(
        config.redis_url is None or config.redis_url.startswith(("redis://", "rediss://", "unix://")),
        "redis_url",
        "a URL starting with redis://, rediss:// or unix:// (or unset for the in-process cache only)",
    )
    problems.extend(_check_redis_tls(config))
    need(config.nmf_n_components >= 1, "nmf_n_components", "an integer >= 1")
    need(config.nmf_random_state >= 0, "nmf_random_state", "a seed >= 0, as `timbral train --seed` takes")
    need(config.cache_ttl_seconds > 0, "cache_ttl_seconds", "a number of seconds > 0")
    need(config.log_level in LOG_LEVELS, "log_level", f"one of {', '.join(LOG_LEVELS)}")
    need(config.log_format in LOG_FORMATS, "log_format", f"one of {', '.join(LOG_FORMATS)}")
    need(config.admin_token is None or len(config.admin_token) >= 16, "admin_token",
         "at least 16 characters (or unset to disable model reload)")
    need(config.max_batch_users >= 1, "max_batch_users", "an integer >= 1")
    need(config.max_batch_items >= 1, "max_batch_items", "an integer >= 1 (users × k per batch)")
    need(config.max_body_bytes >= 1024, "max_body_bytes", "at least 1024 bytes")
    need(1 <= config.max_id_length <= MAX_ID_BYTES, "max_id_length",
         f"a number of bytes (UTF-8) in 1..{MAX_ID_BYTES}, the longest id the model files and the "
         "loader accept")
    need(config.executor_threads >= 0, "executor_threads", "an integer >= 0 (0 = one per core)")
    need(1 <= config.scorer_max_batch <= 4096, "scorer_max_batch",
         "an integer in 1..4096 (single-user requests scored together)")
    need(1e-6 <= config.gil_switch_interval_seconds <= 0.1, "gil_switch_interval_seconds",
         "a number of seconds in 0.000001..0.1 (Python's default is 0.005)")
    need(config.tier1_max_bytes >= 0, "tier1_max_bytes", "a number of bytes >= 0 (0 = no tier 1)")
    need(config.redis_timeout_seconds > 0, "redis_timeout_seconds", "a number of seconds > 0")
    need(config.redis_connect_timeout_seconds > 0, "redis_connect_timeout_seconds",
         "a number of seconds > 0")
    need(config.redis_max_connections >= 1, "redis_max_connections", "an integer >= 1")
    need(config.breaker_failures >= 1, "breaker_failures", "an integer >= 1")
    need(config.breaker_cooldown_seconds > 0, "breaker_cooldown_seconds", "a number of seconds > 0")
    need(config.shutdown_timeout_seconds >= 0, "shutdown_timeout_seconds", "a number of seconds >= 0")
    need(config.shutdown_delay_seconds >= 0, "shutdown_delay_seconds", "a number of seconds >= 0")
    need(config.database_url is None or config.database_url.startswith(("postgresql://", "postgres://")),
         "database_url", "a URL starting with postgresql:// (or unset to serve TIMBRAL_MODEL_DIR only)")
    need(config.registry_poll_seconds > 0, "registry_poll_seconds", "a number of seconds > 0")
    need(config.database_timeout_seconds > 0, "database_timeout_seconds", "a number of seconds > 0")
    need(config.ingest_token is None or len(config.ingest_token) >= 16, "ingest_token",
         "at least 16 characters (or unset to disable ingestion)")
    if config.ingest_token is not None and config.database_url is None:
        problems.append("TIMBRAL_INGEST_TOKEN is set but DATABASE_URL is not: ingestion writes to PostgreSQL; "
                        "set DATABASE_URL or unset TIMBRAL_INGEST_TOKEN")
    need(config.ingest_max_events >= 1, "ingest_max_events", "an integer >= 1")
    need(config.ingest_batch_events >= 1, "ingest_batch_events", "an integer >= 1")
    need(config.ingest_queue_events >= config.ingest_max_events, "ingest_queue_events",
         "an integer >= TIMBRAL_INGEST_MAX_EVENTS (a full request must fit)")
    need(config.ingest_flush_seconds >= 0, "ingest_flush_seconds", "a number of seconds >= 0")
    return problems


def _check_redis_tls(config: Config) -> list[str]:
    """REDIS_SSL_* need a rediss:// URL, readable files and a known verification mode."""
    problems = []
    files = {name: getattr(config, name) for name in
             ("redis_ssl_ca_certs", "redis_ssl_certfile", "redis_ssl_keyfile")}
    given = [ENV_NAMES[name] for name, path in files.items() if path is not None]
    if config.redis_ssl_cert_reqs != "required":
        given.append(ENV_NAMES["redis_ssl_cert_reqs"])
    if given and not (config.redis_url or "").startswith("rediss://"):
        problems.append(f"{', '.join(given)} set, but REDIS_URL is not a rediss:// URL: "
                        "use rediss:// (TLS) or unset the REDIS_SSL_* variables")
    for name, path in files.items():
        if path is not None and not path.is_file():
            problems.append(f"{ENV_NAMES[name]}={str(path)!r}: no such file; expected a PEM file")
    if (config.redis_ssl_certfile is None) != (config.redis_ssl_keyfile is None):
        problems.append("REDIS_SSL_CERTFILE and REDIS_SSL_KEYFILE go together (a client "
                        "certificate and its key): set both or neither")
    if config.redis_ssl_cert_reqs not in CERT_REQS:
        problems.append(f"REDIS_SSL_CERT_REQS={config.redis_ssl_cert_reqs!r}: expected one of "
                        f"{', '.join(CERT_REQS)} (required verifies the server's certificate)")
    return problems


ENV_NAMES: dict[str, str] = {
    "api_host": "API_HOST",
    "api_port": "API_PORT",
    "debug": "DEBUG",
    "redis_url": "REDIS_URL",
    "redis_db": "REDIS_DB",
    "redis_ssl_ca_certs": "REDIS_SSL_CA_CERTS",
    "redis_ssl_certfile": "REDIS_SSL_CERTFILE",
    "redis_ssl_keyfile": "REDIS_SSL_KEYFILE",
    "redis_ssl_cert_reqs": "REDIS_SSL_CERT_REQS",
    "nmf_n_components": "NMF_N_COMPONENTS",
    "nmf_random_state": "NMF_RANDOM_STATE",
    "model_dir": "TIMBRAL_MODEL_DIR",
    "cache_ttl_seconds": "CACHE_TTL_SECONDS",
    "admin_token": "TIMBRAL_ADMIN_TOKEN",
    "log_level": "LOG_LEVEL",
    "log_format": "LOG_FORMAT",
    "max_batch_users": "TIMBRAL_MAX_BATCH_USERS",
    "max_batch_items": "TIMBRAL_MAX_BATCH_ITEMS",
    "max_body_bytes": "TIMBRAL_MAX_BODY_BYTES",
    "max_id_length": "TIMBRAL_MAX_ID_LENGTH",
    "executor_threads": "TIMBRAL_EXECUTOR_THREADS",
    "scorer_max_batch": "TIMBRAL_SCORER_MAX_BATCH",
    "gil_switch_interval_seconds": "TIMBRAL_GIL_SWITCH_INTERVAL_SECONDS",
    "tier1_max_bytes": "TIMBRAL_CACHE_MAX_BYTES",
    "redis_timeout_seconds": "TIMBRAL_REDIS_TIMEOUT_SECONDS",
    "redis_connect_timeout_seconds": "TIMBRAL_REDIS_CONNECT_TIMEOUT_SECONDS",
    "redis_max_connections": "TIMBRAL_REDIS_MAX_CONNECTIONS",
    "breaker_failures": "TIMBRAL_REDIS_BREAKER_FAILURES",
    "breaker_cooldown_seconds": "TIMBRAL_REDIS_BREAKER_COOLDOWN_SECONDS",
    "shutdown_timeout_seconds": "TIMBRAL_SHUTDOWN_TIMEOUT_SECONDS",
    "shutdown_delay_seconds": "TIMBRAL_SHUTDOWN_DELAY_SECONDS",
    "database_url": "DATABASE_URL",
    "db_migrate": "TIMBRAL_DB_MIGRATE",
    "registry_poll_seconds": "TIMBRAL_REGISTRY_POLL_SECONDS",
    "database_timeout_seconds": "TIMBRAL_DATABASE_TIMEOUT_SECONDS",
    "model_cache_dir": "TIMBRAL_MODEL_CACHE_DIR",
    "ingest_token": "TIMBRAL_INGEST_TOKEN",
    "ingest_max_events": "TIMBRAL_INGEST_MAX_EVENTS",
    "ingest_queue_events": "TIMBRAL_INGEST_QUEUE_EVENTS",
    "ingest_batch_events": "TIMBRAL_INGEST_BATCH_EVENTS",
    "ingest_flush_seconds": "TIMBRAL_INGEST_FLUSH_SECONDS",
}

# Unset-able variables for which an empty value means "not set" (common in compose files).
_EMPTY_IS_UNSET = {"redis_url", "model_dir", "admin_token", "redis_ssl_ca_certs",
                   "redis_ssl_certfile", "redis_ssl_keyfile", "database_url", "model_cache_dir",
                   "ingest_token"}

_PARSERS: dict[str, Callable[[str], Any]] = {
    "api_host": str.strip,
    "api_port": _parse_number(int),
    "debug": _parse_bool,
    "redis_url": str.strip,
    "redis_db": _parse_number(int),
    "redis_ssl_ca_certs": Path,
    "redis_ssl_certfile": Path,
    "redis_ssl_keyfile": Path,
    "redis_ssl_cert_reqs": lambda raw: raw.strip().lower(),
    "nmf_n_components": _parse_number(int),
    "nmf_random_state": _parse_number(int),
    "model_dir": Path,
    "cache_ttl_seconds": _parse_number(float),
    "admin_token": str.strip,  # a secret file's trailing newline is not part of the token
    "log_level": lambda raw: raw.strip().upper(),
    "log_format": lambda raw: raw.strip().lower(),
    "max_batch_users": _parse_number(int),
    "max_batch_items": _parse_number(int),
    "max_body_bytes": _parse_number(int),
    "max_id_length": _parse_number(int),
    "executor_threads": _parse_number(int),
    "scorer_max_batch": _parse_number(int),
    "gil_switch_interval_seconds": _parse_number(float),
    "tier1_max_bytes": _parse_number(int),
    "redis_timeout_seconds": _parse_number(float),
    "redis_connect_timeout_seconds": _parse_number(float),
    "redis_max_connections": _parse_number(int),
    "breaker_failures": _parse_number(int),
    "breaker_cooldown_seconds": _parse_number(float),
    "shutdown_timeout_seconds": _parse_number(float),
    "shutdown_delay_seconds": _parse_number(float),
    "database_url": str.strip,
    "db_migrate": _parse_bool,
    "registry_poll_seconds": _parse_number(float),
    "database_timeout_seconds": _parse_number(float),
    "model_cache_dir": Path,
    "ingest_token": str.strip,
    "ingest_max_events": _parse_number(int),
    "ingest_queue_events": _parse_number(int),
    "ingest_batch_events": _parse_number(int),
    "ingest_flush_seconds": _parse_number(float),
}
