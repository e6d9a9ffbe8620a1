"""Logging shared by the library, the command line and the server, in two formats.

``json`` (for machines: the server's default, and the CLI's when stderr is not a
terminal) writes every record as one line of JSON::

    {"timestamp": "2024-05-01T12:00:00.123456Z", "level": "INFO",
     "service": "timbral-ml", "logger": "timbral.train", "message": "fitted model",
     "n_iter": 15, "seconds": 1.2}

``text`` (for people at a terminal) writes the same record as one short line::

    12:00:00 INFO  fitted model n_iter=15 seconds=1.2

Fields passed with ``extra=`` are added as they are; values orjson cannot encode
(paths, NumPy scalars, ...) are written as their ``str``. A URL that may carry a
password (``REDIS_URL``, ``DATABASE_URL``, ``--source``) goes through
:func:`redact_url` before it is printed or logged, wherever that happens.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from timbral.exceptions import ValidationError

__all__ = ["LOG_FORMATS", "REDACTED", "SERVICE", "JsonFormatter", "TextFormatter", "configure_logging", "redact_url"]

SERVICE = "timbral-ml"
LOG_FORMATS = ("json", "text")
REDACTED = "<redacted>"
_URL_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_URL_PASSWORD_PARAM = re.compile(r"(?P<name>[?&]password=)[^&#]*", re.IGNORECASE)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def redact_url(url: str) -> str:
    """``url`` with its user info and any ``password=`` query value replaced by a marker.

    Works on malformed values too (they are the ones printed in errors): everything up
    to the last ``@`` after the scheme goes, since an unencoded password may hold an ``@``.
    """
    head, at, tail = url.rpartition("@")
    if at:
        scheme = _URL_SCHEME.match(head)
        url = f"{scheme.group(0) if scheme else ''}{REDACTED}@{tail}"
    return _URL_PASSWORD_PARAM.sub(rf"\g<name>{REDACTED}", url)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """What the caller passed with ``extra=``."""
    return {key: value for key, value in vars(record).items() if key not in _RESERVED}


def _default(value: Any) -> Any:
    """orjson fallback: NumPy scalars become Python numbers, the rest ``str``."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object (see the module docstring for the fields)."""

    def __init__(self, service: str = SERVICE) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        entry: dict[str, Any] = {
            "timestamp": stamp.isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(
            entry, default=_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        ).decode()


class TextFormatter(logging.Formatter):
    """Format a record as one short line for a person: time, level, message, key=value."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        parts = [stamp, f"{record.levelname:<5}", record.getMessage()]
        for key, value in _fields(record).items():
            text = str(_default(value))
            parts.append(f"{key}={text!r}" if not text or " " in text else f"{key}={text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(
    level: int | str = "INFO",
    stream: IO[str] | None = None,
    *,
    service: str = SERVICE,
    log_format: str = "json",
) -> logging.Handler:
    """Send the root logger's records to ``stream`` as JSON lines or as text lines.

    Replaces a handler installed by an earlier call (so calling it twice does not
    double every line) and leaves other handlers alone.

    Parameters
    ----------
    level : int or str, default="INFO"
        Root logger level (``"DEBUG"``, ``"INFO"``, ``"WARNING"``, ...).
    stream : text stream, optional
        Where lines go; default ``sys.stderr`` (resolved at call time).
    service : str, default="timbral-ml"
        Value of the ``service`` field.
    log_format : {"json", "text"}, default="json"
        JSON lines for log collectors, or short lines for a person at a terminal.

    Returns
    -------
    logging.Handler
        The installed handler.
    """
    if isinstance(level, str):
        resolved = logging.getLevelName(level.upper())
        if not isinstance(resolved, int):
            raise ValidationError(
                f"level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL; got {level!r}"
            )
        level = resolved
    if log_format not in LOG_FORMATS:
        raise ValidationError(f"log_format must be one of {', '.join(LOG_FORMATS)}; got {log_format!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_timbral_json", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(service) if log_format == "json" else TextFormatter())
    handler._timbral_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    return handler
