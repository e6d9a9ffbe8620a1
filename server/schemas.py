"""Request validation: turn untrusted JSON and query strings into typed requests.

Every failure is an :class:`ApiError` naming the field, what was received and what is
expected, so a client can fix its call from the message alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from timbral.exceptions import ValidationError
from timbral.ids import INT64_MAX, INT64_MIN, check_id_text

from .errors import ApiError

MIN_K, MAX_K = 1, 1000
DEFAULT_K = 10
MAX_ID_LIST = 10_000  # exclude_items / items entries in one request

ExternalId = str | int

_DECIMAL = re.compile(r"-?[0-9]{1,20}")
# Exactly the spellings the OpenAPI document lists (Python's requests sends "True").
_TRUE = frozenset({"true", "True", "1"})
_FALSE = frozenset({"false", "False", "0"})


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    user_id: ExternalId
    k: int = DEFAULT_K
    exclude_seen: bool = True
    exclude_items: tuple[ExternalId, ...] | None = None
    recent_items: tuple[ExternalId, ...] | None = None

    @property
    def cacheable(self) -> bool:
        """Only the plain question is worth caching; ad-hoc filters are one-offs."""
        return self.exclude_items is None and self.recent_items is None


@dataclass(frozen=True, slots=True)
class BatchRequest:
    user_ids: tuple[ExternalId, ...]
    k: int = DEFAULT_K


def invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


def describe(value: Any) -> str:
    """``repr`` of a received value, cut to 40 characters for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_json(raw: bytes) -> Any:
    """Decode a request body; an empty body is ``None``."""
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON: {exc}") from None


def check_k(value: Any, source: str = "k") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{source} must be an integer in {MIN_K}..{MAX_K}, got {describe(value)}")
    if not MIN_K <= value <= MAX_K:
        raise invalid(f"{source} must be in {MIN_K}..{MAX_K}, got {value}")
    return value


def check_id(value: Any, field: str, max_length: int) -> ExternalId:
    """A user or item id: an int64, or a string of at most ``max_length`` bytes of UTF-8.

    The length rule is :func:`timbral.ids.check_id_text`'s, the loader's: an id the
    service accepts can be trained on.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise invalid(f"{field} must be a string or an integer, got {describe(value)}")
    if isinstance(value, str):
        return check_path_id(value, field, max_length)
    if not INT64_MIN <= value <= INT64_MAX:
        raise invalid(f"{field} must fit in 64 bits, got {describe(value)}")
    return value


def _check_id_list(value: Any, field: str, max_length: int, max_count: int) -> tuple[ExternalId, ...]:
    if not isinstance(value, list):
        raise invalid(f"{field} must be a list of ids, got {describe(value)}")
    if len(value) > max_count:
        raise invalid(f"{field} has {len(value)} entries; at most {max_count} are accepted")
    return tuple(check_id(item, f"{field}[{i}]", max_length) for i, item in enumerate(value))


def _check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(f"{field} must be true or false, got {describe(value)}")
    return value


_SINGLE_FIELDS = {"user_id", "k", "exclude_seen", "exclude_items", "items"}
_BATCH_FIELDS = {"user_ids", "k"}


def parse_recommendation_body(body: Any, *, max_batch: int, max_batch_items: int,
                              max_id_length: int) -> RecommendRequest | BatchRequest:
    """Validate ``POST /api/v1/recommendations``: one user, or ``user_ids`` for a batch.

    A batch asks for ``len(user_ids) × k`` items at most ``max_batch_items``: a 4 KB
    request could otherwise ask for a 50 MB answer.
    """
    if not isinstance(body, dict):
        raise invalid('the body must be a JSON object like {"user_id": "u1", "k": 10} '
                      f'or {{"user_ids": ["u1", "u2"], "k": 10}}, got {describe(body)}')
    if "user_ids" in body:
        if "user_id" in body:
            raise invalid("send either user_id (one user) or user_ids (a batch), not both")
        _reject_unknown(body, _BATCH_FIELDS)
        user_ids = body["user_ids"]
        if not isinstance(user_ids, list) or not user_ids:
            raise invalid(f"user_ids must be a non-empty list of ids, got {describe(user_ids)}")
        if len(user_ids) > max_batch:
            raise invalid(f"user_ids has {len(user_ids)} entries; a batch holds at most {max_batch}")
        batch = BatchRequest(
            user_ids=_check_id_list(user_ids, "user_ids", max_id_length, max_batch),
            k=check_k(body.get("k", DEFAULT_K)),
        )
        n_items = len(batch.user_ids) * batch.k
        if n_items > max_batch_items:
            raise ApiError(422, "batch_too_large",
                           f"{len(batch.user_ids)} user_ids × k={batch.k} asks for {n_items} items; "
                           f"a batch answers at most {max_batch_items} (TIMBRAL_MAX_BATCH_ITEMS): "
                           "send fewer users per request or a smaller k")
        return batch
    if "user_id" not in body:
        raise invalid("missing field user_id (or user_ids for a batch)")
    _reject_unknown(body, _SINGLE_FIELDS)
    exclude_items = body.get("exclude_items")
    recent = body.get("items")
    return RecommendRequest(
        user_id=check_id(body["user_id"], "user_id", max_id_length),
        k=check_k(body.get("k", DEFAULT_K)),
        exclude_seen=_check_bool(body.get("exclude_seen", True), "exclude_seen"),
        exclude_items=None if exclude_items is None else _check_id_list(
            exclude_items, "exclude_items", max_id_length, MAX_ID_LIST),
        recent_items=None if recent is None else _check_id_list(
            recent, "items", max_id_length, MAX_ID_LIST),
    )


def _reject_unknown(body: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid(f"unknown field(s) {', '.join(map(repr, unknown))}; "
                      f"expected some of {', '.join(sorted(allowed))}")


def query_k(query: Mapping[str, str]) -> int:
    raw = query.get("k")
    if raw is None:
        return DEFAULT_K
    # ASCII digits only: int() would also take " 5", "+5", "1_0" and "٥"
    if not _DECIMAL.fullmatch(raw):
        raise invalid(f"query parameter k must be an integer in {MIN_K}..{MAX_K}, "
                      f"got {describe(raw)}")
    return check_k(int(raw), "query parameter k")


def query_bool(query: Mapping[str, str], name: str, default: bool) -> bool:
    raw = query.get(name)
    if raw is None:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise invalid(f"query parameter {name} must be true or false (or 1 or 0), got {describe(raw)}")


def check_path_id(raw: str, field: str, max_length: int) -> str:
    """A string id (a URL path segment or a JSON string): non-empty, at most ``max_length`` bytes of UTF-8."""
    try:
        return check_id_text(raw, name=field, max_bytes=max_length)
    except ValidationError as exc:
        raise invalid(str(exc)) from None


def parse_reload_body(raw: bytes) -> str | None:
    """``{"path": "..."}`` or an empty body (reload the configured directory).

    A JSON ``null`` body is not an empty one: it is refused, as the document says.
    """
    if not raw.strip():
        return None
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise invalid(f'the body must be a JSON object like {{"path": "/models/v2"}}, got {describe(body)}')
    _reject_unknown(body, {"path"})
    path = body.get("path")
    if path is not None and (not isinstance(path, str) or not 0 < len(path) <= 4096
                             or "\x00" in path):
        raise invalid(f"path must be a non-empty string of at most 4096 characters without "
                      f"NUL, got {describe(path)}")
    return path
